"""One LM training run, advanced interval by interval.

The `Trainer` is the substrate that every controller drives: a fixed schedule,
a learned policy and a baseline all call `run_interval(steps, lr)` and read
the `IntervalStats` it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.lm.corpus import Corpus
from lrpilot.lm.model import GPT, ModelConfig, next_byte_loss

LRSpec = float | Callable[[int], float]  # a constant LR, or the LR for a global step


@dataclass(frozen=True)
class TrainerConfig:
    """Everything that fixes a training run besides the corpus and the LR."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 64  # sequences of block_size bytes per step
    seed: int = 0
    weight_decay: float = 0.1  # applied to matrices only, not to gains, biases
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0  # None: no clipping (the norm is still measured)
    val_windows: int = 32  # fixed validation windows of `block_size` bytes
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        require_positive_int("batch_size", self.batch_size)
        require_positive_int("val_windows", self.val_windows)
        require_seed(self.seed)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be positive or None, got {self.grad_clip!r}")


@dataclass(frozen=True)
class IntervalStats:
    """What one evaluation interval of training measured."""

    step: int  # global step count at the end of the interval
    steps: int  # optimizer steps attempted in this interval
    lr: float  # LR of the interval's last step
    lr_mean: float  # mean LR over the interval
    train_loss_mean: float  # nats/byte, over the finite steps
    train_loss_std: float
    train_loss_slope: float  # least-squares slope of train loss per step
    val_loss: float  # nats/byte on the run's fixed validation windows
    grad_norm: float  # mean gradient norm before clipping
    update_ratio: float  # ||delta w|| / ||w|| of the interval's last step
    nonfinite: bool  # a non-finite loss or gradient was seen (those steps were skipped)
    nonfinite_steps: int
    tokens: int  # training tokens consumed in this interval
    seconds: float  # wall time of the interval, validation included


def interval_lengths(total_steps: int, eval_every: int) -> list[int]:
    """Steps of each evaluation interval of a run; the last one takes the remainder."""
    full, rest = divmod(total_steps, eval_every)
    return [eval_every] * full + ([rest] if rest else [])


@torch.no_grad()
def weight_update_ratio(before: list[torch.Tensor], after: list[torch.nn.Parameter]) -> float:
    """||w_after - w_before|| / ||w_before|| over all parameters: the step size, scale-free."""
    pairs = zip(after, before, strict=True)
    delta = torch.stack([torch.linalg.vector_norm(a - b) for a, b in pairs])
    weight = torch.stack([torch.linalg.vector_norm(b) for b in before])
    return float(delta.norm() / weight.norm().clamp_min(1e-12))


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


def least_squares_slope(values: list[float]) -> float:
    """Least-squares slope of `values` per index (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


class Trainer:
    """One training run of a byte-level GPT with AdamW on a corpus."""

    def __init__(self, corpus: Corpus, config: TrainerConfig) -> None:
        block = config.model.block_size
        for part in ("train", "val"):
            size = getattr(corpus, part).numel()
            if size < block + 2:
                raise ConfigError(
                    f"corpus {corpus.name!r} is shorter than one block: its {part} split has "
                    f"{size} bytes, block_size is {block}"
                )
        self.corpus = corpus
        self.config = config
        self.device = resolve_device(config.device)
        init_seed, data_seed = np.random.SeedSequence(config.seed).generate_state(2)
        self.model = GPT(config.model, torch.Generator().manual_seed(int(init_seed)))
        self.model.to(self.device)
        self.batch_generator = torch.Generator().manual_seed(int(data_seed))
        self.optimizer = self._make_optimizer()
        self.step = 0
        self.tokens = 0
        # Every window of block_size + 1 bytes, as views (no copy): (n - block, block + 1).
        self._train_windows = corpus.train.unfold(0, block + 1, 1)
        val_windows = corpus.val.unfold(0, block + 1, 1)
        picks = torch.linspace(0, val_windows.size(0) - 1, config.val_windows).long()
        self._val_batch = val_windows[picks].long().to(self.device)  # (val_windows, block + 1)

    def _make_optimizer(self) -> torch.optim.AdamW:
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        betas = (self.config.beta1, self.config.beta2)
        return torch.optim.AdamW(groups, lr=1e-3, betas=betas, foreach=True)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded random batch of training windows: inputs and targets, each (B, T)."""
        n = self._train_windows.size(0)
        offsets = torch.randint(0, n, (self.config.batch_size,), generator=self.batch_generator)
        windows = self._train_windows[offsets].long().to(self.device)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation loss (nats/byte) on the run's fixed validation windows."""
        self.model.eval()
        losses = []
        for chunk in self._val_batch.split(self.config.batch_size):
            with self._autocast():
                logits = self.model(chunk[:, :-1])
            loss = next_byte_loss(logits, chunk[:, 1:])
            losses.append(loss * chunk.size(0))
        self.model.train()
        return float(torch.stack(losses).sum().item() / self._val_batch.size(0))

    def run_interval(self, steps: int, lr: LRSpec) -> IntervalStats:
        """Train `steps` optimizer steps at `lr` (a float, or a function of the global step).

        A step whose loss or gradient is not finite is skipped and flagged; the caller
        decides whether to end the run.
        """
        require_positive_int("steps", steps)
        lr_at = lr if callable(lr) else (lambda _step: lr)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        start = time.perf_counter()
        losses: list[float] = []
        grad_norms: list[float] = []
        lrs: list[float] = []
        nonfinite_steps = 0
        update_ratio = 0.0
        tokens_before = self.tokens
        for i in range(steps):
            step_lr = float(lr_at(self.step))
            if not math.isfinite(step_lr) or step_lr < 0:
                raise ConfigError(f"learning rate must be finite and >= 0, got {step_lr!r}")
            for group in self.optimizer.param_groups:
                group["lr"] = step_lr
            lrs.append(step_lr)
            inputs, targets = self.sample_batch()
            with self._autocast():
                loss = next_byte_loss(self.model(inputs), targets)
            loss_value = loss.item()
            self.step += 1
            self.tokens += inputs.numel()
            if not math.isfinite(loss_value):
                nonfinite_steps += 1
                continue
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True).item()
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                nonfinite_steps += 1
                continue
            last = i == steps - 1
            before = [p.detach().clone() for p in params] if last else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if before is not None:
                update_ratio = weight_update_ratio(before, params)
            losses.append(loss_value)
            grad_norms.append(grad_norm)
        val_loss = self.evaluate()
        return IntervalStats(
            step=self.step,
            steps=steps,
            lr=lrs[-1],
            lr_mean=float(np.mean(lrs)),
            train_loss_mean=float(np.mean(losses)) if losses else math.nan,
            train_loss_std=float(np.std(losses)) if losses else math.nan,
            train_loss_slope=least_squares_slope(losses),
            val_loss=val_loss,
            grad_norm=float(np.mean(grad_norms)) if grad_norms else math.nan,
            update_ratio=update_ratio,
            nonfinite=nonfinite_steps > 0 or not math.isfinite(val_loss),
            nonfinite_steps=nonfinite_steps,
            tokens=self.tokens - tokens_before,
            seconds=time.perf_counter() - start,
        )
