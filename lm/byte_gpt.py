"""The byte-level GPT workload family: lrpilot's own language model on a byte corpus.

`ByteGPTWorkload` names every setting of a run: the corpus, every `ModelConfig`
field, the batch size, AdamW's settings, the step budget and evaluation interval, and
the sizes of the validation and test evaluations. `make_run(seed)` builds the run:

- the model's weights and the training batches are drawn from the seed;
- the validation loss (what a controller observes) is the mean next-byte loss on
  `val_windows` fixed windows spread over the corpus's validation split;
- the test loss (the score) is the same loss on non-overlapping windows spread over
  the test split, at least `test_tokens` predicted bytes when the split holds them.

On CUDA the forward passes run under bf16 autocast.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from lrpilot.config import check_fields, fraction_or_zero, non_negative, positive, setting
from lrpilot.errors import ConfigError
from lrpilot.lm.corpus import Corpus, load_corpus
from lrpilot.lm.memory import require_fits_in_memory
from lrpilot.lm.metric import metric_setting, require_loss_metric, run_settings
from lrpilot.lm.model import GPT, ModelConfig, next_byte_loss
from lrpilot.lm.run import StepRun
from lrpilot.lm.run_parts import RunParts

EVAL_BATCH_WINDOWS = 256  # windows per forward pass in the validation and test losses


def resolve_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def spread(n: int, count: int) -> torch.Tensor:
    """`count` indices spread evenly over `range(n)` (float32 steps, as the splits were
    first drawn; clamped, since float32 rounds the last index past `n - 1` once `n`
    exceeds 2**24)."""
    return torch.linspace(0, n - 1, count).long().clamp(max=n - 1)


def check_budget(workload) -> None:
    """The evaluation interval within the step budget (every built-in family)."""
    if workload.eval_every > workload.steps:
        raise ConfigError(f"eval_every ({workload.eval_every}) exceeds steps ({workload.steps})")


def non_empty_text(value: str) -> str | None:
    return None if value else "must not be empty"


@dataclass(frozen=True)
class ByteGPTWorkload:
    """A byte-level GPT trained with AdamW on a corpus; every field is a TOML key."""

    family: ClassVar[str] = "byte_gpt"

    name: str = setting("tiny", help="the workload's name in tables", check=non_empty_text)
    corpus: str = setting(
        "pydoc",
        help="pydoc, pystdlib, pystdlib:PACKAGE, or a file or folder path",
        check=non_empty_text,
    )
    n_layer: int = setting(1, help="transformer blocks", check=positive)
    n_head: int = setting(4, help="attention heads", check=positive)
    n_embd: int = setting(64, help="model width", check=positive)
    block_size: int = setting(16, help="context length in bytes", check=positive)
    batch_size: int = setting(64, help="sequences of block_size bytes per step", check=positive)
    beta1: float = setting(0.9, help="AdamW's beta1", check=fraction_or_zero)
    beta2: float = setting(0.95, help="AdamW's beta2", check=fraction_or_zero)
    weight_decay: float = setting(
        0.1, help="on matrices only, not on gains and biases", check=non_negative
    )
    grad_clip: float | None = setting(
        1.0,
        help="gradient-norm clip; none: no clipping (the norm is still measured)",
        check=positive,
    )
    steps: int = setting(400, help="the step budget", check=positive)
    eval_every: int = setting(20, help="steps per evaluation interval", check=positive)
    val_windows: int = setting(
        32, help="fixed validation windows of block_size predicted bytes", check=positive
    )
    test_tokens: int = setting(
        65_536, help="predicted bytes the test loss averages over, at least", check=positive
    )
    metric: str = metric_setting("loss")

    def __post_init__(self) -> None:
        check_fields(self)
        require_loss_metric(self)
        check_budget(self)
        require_fits_in_memory(
            self.num_params(),
            f"the model (n_layer={self.n_layer}, n_embd={self.n_embd}, "
            f"block_size={self.block_size})",
        )

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
        )

    def num_params(self) -> int:
        """The model's parameter count, from its sizes (nothing is built)."""
        return self.model_config().num_params()  # checks the sizes

    def step_cost(self) -> int:
        """Parameters x input bytes of one optimizer step: its compute, up to a factor."""
        return self.num_params() * self.batch_size * self.block_size

    def to_dict(self) -> dict:
        return run_settings(self)

    def digest(self) -> str:
        """sha256 of the corpus bytes: an edited corpus file makes new runs."""
        return corpus_digest(load_corpus(self.corpus))

    def build_model(self, init_seed: int) -> torch.nn.Module:
        """The model, its weights drawn from `init_seed` (on the CPU)."""
        return GPT(self.model_config(), torch.Generator().manual_seed(init_seed))

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        return ByteGPTRun(load_corpus(self.corpus), self, seed, device)


def corpus_digest(corpus: Corpus) -> str:
    digest = hashlib.sha256()
    for part in (corpus.train, corpus.val, corpus.test):
        digest.update(part.numpy().tobytes())
    return digest.hexdigest()


class ByteGPTRun(StepRun):
    """One seeded run of a byte-corpus language model on a loaded corpus: the model is
    the workload's `build_model(seed)`, read through `logits` (a subclass may read
    another model's outputs)."""

    def __init__(
        self, corpus: Corpus, workload: ByteGPTWorkload, seed: int = 0, device: str = "cpu"
    ) -> None:
        block = workload.block_size
        for part in ("train", "val", "test"):
            size = getattr(corpus, part).numel()
            if size < block + 2:
                raise ConfigError(
                    f"corpus {corpus.name!r} is shorter than one block: its {part} split has "
                    f"{size} bytes, block_size is {block}"
                )
        self.corpus = corpus
        self.workload = workload
        self.device = resolve_device(device)
        init_seed, data_seed = np.random.SeedSequence(seed).generate_state(2)
        model = workload.build_model(int(init_seed)).to(self.device)
        self.batch_generator = torch.Generator().manual_seed(int(data_seed))
        # Every window of block_size + 1 bytes, as views (no copy): (n - block, block + 1).
        self._train_windows = corpus.train.unfold(0, block + 1, 1)
        val_windows = corpus.val.unfold(0, block + 1, 1)
        picks = spread(val_windows.size(0), workload.val_windows)
        self._val_batch = val_windows[picks].long().to(self.device)  # (val_windows, block + 1)
        # Non-overlapping windows (each byte predicted once), spread over the test split.
        test_windows = corpus.test.unfold(0, block + 1, block)
        count = min(test_windows.size(0), math.ceil(workload.test_tokens / block))
        picks = spread(test_windows.size(0), count)
        self._test_batch = test_windows[picks].long().to(self.device)  # (count, block + 1)
        super().__init__(
            RunParts(
                model=model,
                optimizer=self._make_optimizer(model),
                batches=iter(self.sample_batch, None),
                loss=self._batch_loss,
                validation_loss=lambda: self._mean_loss(self._val_batch),
                test_loss=lambda: self._mean_loss(self._test_batch),
                test_items=count * block,
                items_in=lambda batch: batch[0].numel(),
                grad_clip=workload.grad_clip,
            )
        )

    def _make_optimizer(self, model: torch.nn.Module) -> torch.optim.AdamW:
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.workload.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        betas = (self.workload.beta1, self.workload.beta2)
        return torch.optim.AdamW(groups, lr=1e-3, betas=betas, foreach=True)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded random batch of training windows: inputs and targets, each (B, T)."""
        n = self._train_windows.size(0)
        offsets = torch.randint(0, n, (self.workload.batch_size,), generator=self.batch_generator)
        windows = self._train_windows[offsets].long().to(self.device)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T) bytes -> (B, T, 256) next-byte logits."""
        with self._autocast():
            return self.model(inputs)

    def _batch_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        return next_byte_loss(self.logits(inputs), targets)

    def _mean_loss(self, windows: torch.Tensor) -> float:
        """Mean next-byte loss (nats/byte) over fixed windows (called under no_grad)."""
        total = torch.zeros((), device=self.device)
        for chunk in windows.split(EVAL_BATCH_WINDOWS):
            total += next_byte_loss(self.logits(chunk[:, :-1]), chunk[:, 1:]) * chunk.size(0)
        return float(total.item() / windows.size(0))
