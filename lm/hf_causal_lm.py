"""The Hugging Face causal-LM workload family: a Transformers model on a byte corpus.

`HFCausalLMWorkload` builds a causal language model from a local config (GPT-2 or
Llama; no weights are downloaded) with a 256-entry vocabulary, and trains it on the
same byte corpora, splits, batches and evaluations as `byte_gpt`:

- the model's weights and the training batches are drawn from the seed (the same
  `SeedSequence` scheme; Transformers initialises from the global RNG, so the model is
  built inside `torch.random.fork_rng()` and the global RNG is left untouched);
- the loss is `next_byte_loss` on the model's logits over the same (inputs, targets)
  windows, not Transformers' own shifted-label loss, so it means what byte_gpt's does;
- the validation and test losses use byte_gpt's windows: `val_windows` fixed windows
  spread over the validation split, and non-overlapping windows spread over the test
  split, at least `test_tokens` predicted bytes when the split holds them.

Transformers is an optional extra (`pip install 'lrpilot[hf]'`): this module imports
without it, and `make_run` says what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.byte_gpt import ByteGPTRun, ByteGPTWorkload
from lrpilot.lm.corpus import VOCAB_SIZE, load_corpus
from lrpilot.lm.run import StepRun

ARCHITECTURES = ("gpt2", "llama")
MISSING_EXTRA = "the hf_causal_lm workload needs the extra: pip install 'lrpilot[hf]'"


def import_transformers():
    """The `transformers` module, or a one-line `ConfigError` naming the extra."""
    try:
        import transformers
    except ImportError:  # also when sys.modules["transformers"] is None
        raise ConfigError(MISSING_EXTRA) from None
    return transformers


@dataclass(frozen=True)
class HFCausalLMWorkload(ByteGPTWorkload):
    """A Transformers causal LM trained with AdamW on a byte corpus: the byte GPT
    workload's settings (corpus, sizes, batch, AdamW, budget, evaluations) with another
    model; every field is a TOML key."""

    family: ClassVar[str] = "hf_causal_lm"

    name: str = "hf-gpt2"
    n_layer: int = 2
    n_head: int = 2
    block_size: int = 32  # context length in bytes
    batch_size: int = 32  # sequences of block_size bytes per step
    architecture: str = "gpt2"  # gpt2 or llama

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"unknown hf_causal_lm architecture {self.architecture!r}; "
                f"choose from {', '.join(ARCHITECTURES)}"
            )
        super().__post_init__()

    def num_params(self) -> int:
        """The model's parameter count, from its sizes (nothing is built): GPT-2 ties
        its head to the byte embedding and adds position embeddings; Llama has rotary
        positions, RMSNorm gains, an MLP of three 4C-wide matrices and its own head."""
        self.model_config()  # checks the sizes
        C, V = self.n_embd, VOCAB_SIZE
        if self.architecture == "gpt2":
            return V * C + self.block_size * C + self.n_layer * (12 * C * C + 13 * C) + 2 * C
        return V * C + self.n_layer * (16 * C * C + 2 * C) + C + C * V

    def build_model(self, init_seed: int) -> torch.nn.Module:
        """The Transformers model, its weights drawn from `init_seed` (on the CPU)."""
        transformers = import_transformers()
        if self.architecture == "gpt2":
            config = transformers.GPT2Config(
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_embd=self.n_embd,
                n_positions=self.block_size,
                vocab_size=VOCAB_SIZE,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=None,
                eos_token_id=None,
                use_cache=False,
            )
            model_class = transformers.GPT2LMHeadModel
        else:
            config = transformers.LlamaConfig(
                num_hidden_layers=self.n_layer,
                num_attention_heads=self.n_head,
                num_key_value_heads=self.n_head,
                hidden_size=self.n_embd,
                intermediate_size=4 * self.n_embd,
                max_position_embeddings=self.block_size,
                vocab_size=VOCAB_SIZE,
                bos_token_id=None,
                eos_token_id=None,
                use_cache=False,
            )
            model_class = transformers.LlamaForCausalLM
        # Transformers initialises from the global RNG: seed a fork of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = model_class(config)
        return model.float()

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        import_transformers()  # before loading the corpus: say what to install first
        return HFCausalLMRun(load_corpus(self.corpus), self, seed, device)


class HFCausalLMRun(ByteGPTRun):
    """One seeded run of an `HFCausalLMWorkload`: `ByteGPTRun`'s windows, batches,
    optimizer and evaluations, with the Transformers model's logits."""

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T, 256) next-byte logits (Transformers' label shift is not used)."""
        with self._autocast():
            return self.model(input_ids=inputs).logits
