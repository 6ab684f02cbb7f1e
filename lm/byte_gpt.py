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
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch

from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.corpus import Corpus, load_corpus
from lrpilot.lm.memory import require_fits_in_memory
from lrpilot.lm.model import GPT, ModelConfig, next_byte_loss
from lrpilot.lm.run import RunParts, StepRun

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


def is_number(value: object) -> bool:
    """An int or float (bools excluded), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_common_settings(workload) -> None:
    """The settings every built-in family shares: a name, the interval within the
    budget, betas in [0, 1), a finite weight decay >= 0, a positive finite clip or None."""
    if not isinstance(workload.name, str) or not workload.name:
        raise ConfigError(f"name must be a non-empty string, got {workload.name!r}")
    if workload.eval_every > workload.steps:
        raise ConfigError(f"eval_every ({workload.eval_every}) exceeds steps ({workload.steps})")
    for name in ("beta1", "beta2"):
        value = getattr(workload, name)
        if not (is_number(value) and 0 <= value < 1):
            raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    decay = workload.weight_decay
    if not (is_number(decay) and decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {decay!r}")
    clip = workload.grad_clip
    if clip is not None and not (is_number(clip) and clip > 0):
        raise ConfigError(f"grad_clip must be a positive finite number or None, got {clip!r}")


@dataclass(frozen=True)
class ByteGPTWorkload:
    """A byte-level GPT trained with AdamW on a corpus; every field is a TOML key."""

    family: ClassVar[str] = "byte_gpt"

    name: str = "tiny"
    corpus: str = "pydoc"  # pydoc, pystdlib, or a file or folder path
    n_layer: int = 1
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 16  # context length in bytes
    batch_size: int = 64  # sequences of block_size bytes per step
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1  # on matrices only, not on gains and biases
    grad_clip: float | None = 1.0  # None: no clipping (the norm is still measured)
    steps: int = 400  # the step budget
    eval_every: int = 20  # steps per evaluation interval
    val_windows: int = 32  # fixed validation windows of block_size predicted bytes
    test_tokens: int = 65_536  # predicted bytes the test loss averages over, at least

    def __post_init__(self) -> None:
        if not isinstance(self.corpus, str) or not self.corpus:
            raise ConfigError(
                f"corpus must be pydoc, pystdlib, or a file or folder path, got {self.corpus!r}"
            )
        for name in ("batch_size", "steps", "eval_every", "val_windows", "test_tokens"):
            require_positive_int(name, getattr(self, name))
        check_common_settings(self)
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

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}

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
        picks = torch.linspace(0, val_windows.size(0) - 1, workload.val_windows).long()
        self._val_batch = val_windows[picks].long().to(self.device)  # (val_windows, block + 1)
        # Non-overlapping windows (each byte predicted once), spread over the test split.
        test_windows = corpus.test.unfold(0, block + 1, block)
        count = min(test_windows.size(0), math.ceil(workload.test_tokens / block))
        picks = torch.linspace(0, test_windows.size(0) - 1, count).long()
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
