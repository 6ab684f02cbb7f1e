"""What `PolicyController` measures in a training loop: the gradient norm
(`total_norm`, `MeanGradNorm`), the update ratio of a step (`SampledUpdateRatio`) and
an interval's train-loss statistics (`train_loss_stats`, `loop_interval_stats`), each
as `lrpilot.lm.run.StepRun` measures it in lrpilot's own runs."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from lrpilot.agents.arguments import is_number
from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.run import IntervalStats, least_squares_slope

UPDATE_RATIO_SAMPLE = 4096  # elements sampled per tensor for the update ratio
UPDATE_RATIO_SEED = 0  # the sample is drawn from this seed, the same at every step


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all tensors together, as `clip_grad_norm_` computes it."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(tensors)
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


class MeanGradNorm:
    """The mean gradient norm of an interval's steps (non-finite norms left out). The
    sum stays a tensor on its device between steps: no device sync at every step."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count: torch.Tensor | int = 0

    def add(self, norm: torch.Tensor | float) -> None:
        """Add one step's gradient norm."""
        norm = torch.as_tensor(norm).detach()
        if norm.dtype in (torch.float16, torch.bfloat16):  # sum in float32, not in half
            norm = norm.float()
        finite = torch.isfinite(norm)
        self.total = self.total + torch.where(finite, norm, 0.0)
        self.count = self.count + finite.long()

    @torch.no_grad()
    def add_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Add the norm of the gradients `params` hold now (none held: nothing)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            self.add(total_norm(grads))

    def mean(self) -> float:
        """The mean so far (NaN before any finite norm)."""
        count = int(self.count)
        return float(self.total) / count if count else math.nan


class SampledUpdateRatio:
    """||w_after - w_before|| / ||w_before|| of one optimizer step, over all parameters.

    ||w_before|| is exact (a norm of each tensor, no copy). ||Δw|| is estimated: a
    tensor of at most `sample_size` elements is copied whole, so its part is exact; of
    a larger tensor only `sample_size` elements, drawn at random (with replacement)
    from the seed `seed`, are kept, and its squared change is estimated as
    numel / sample_size times their summed squared change. The generator is seeded
    afresh at every measurement, so every step measures the same elements. The memory
    it holds during one step is `sample_size` values and indices per large tensor,
    whatever the model's size; between measurements it holds nothing.
    `sample_size=None` copies every tensor whole: the exact ratio, as
    `lrpilot.lm.run.weight_update_ratio` computes it.

        ratio = SampledUpdateRatio()
        ratio.before_step(params)
        optimizer.step()
        update_ratio = ratio.after_step(params)
    """

    def __init__(
        self, sample_size: int | None = UPDATE_RATIO_SAMPLE, seed: int = UPDATE_RATIO_SEED
    ):
        if sample_size is not None:
            require_positive_int("update_ratio_sample", sample_size)
        self.sample_size = sample_size
        self.seed = seed
        self._indices: list[torch.Tensor | None] = []  # per tensor; None: the whole tensor
        self._values_before: list[torch.Tensor] = []
        self._weight_norm: torch.Tensor | None = None

    def _is_sampled(self, tensor: torch.Tensor) -> bool:
        return self.sample_size is not None and tensor.numel() > self.sample_size

    @torch.no_grad()
    def before_step(self, params: Sequence[torch.Tensor]) -> None:
        """Keep the sampled weights (and the exact weight norm) before the step."""
        generator = torch.Generator().manual_seed(self.seed)
        self._indices, self._values_before, norms = [], [], []
        for param in params:
            weights = param.detach()
            norms.append(torch.linalg.vector_norm(weights))
            if self._is_sampled(weights):
                drawn = torch.randint(weights.numel(), (self.sample_size,), generator=generator)
                indices = drawn.sort().values.to(weights.device)  # sorted: a faster gather
                self._indices.append(indices)
                self._values_before.append(weights.reshape(-1)[indices])
            else:
                self._indices.append(None)
                self._values_before.append(weights.clone())
        self._weight_norm = torch.stack(norms).norm()

    @torch.no_grad()
    def after_step(self, params: Sequence[torch.Tensor]) -> float:
        """The update ratio of the step since `before_step`; frees what it kept."""
        if self._weight_norm is None:
            raise RuntimeError("SampledUpdateRatio.after_step() needs before_step() first")
        changes = []
        kept = zip(params, self._indices, self._values_before, strict=True)
        for param, indices, before in kept:
            weights = param.detach()
            if indices is None:
                changes.append(torch.linalg.vector_norm(weights - before))
            else:
                change = torch.linalg.vector_norm(weights.reshape(-1)[indices] - before)
                changes.append(change * math.sqrt(weights.numel() / indices.numel()))
        ratio = float(torch.stack(changes).norm() / self._weight_norm.clamp_min(1e-12))
        self._indices, self._values_before, self._weight_norm = [], [], None
        return ratio


TrainLoss = float | Sequence[float] | torch.Tensor  # what observe() takes as train losses


def train_loss_values(train_loss: TrainLoss) -> list[float] | float:
    """An interval's train losses as Python floats (one number stays one number), or a
    one-line `ConfigError` if they are empty or not numbers. Tensors are stacked on one
    device first, so a list of losses kept on a GPU costs one sync, here."""
    if isinstance(train_loss, torch.Tensor):
        if train_loss.dim() > 1:
            raise ConfigError(
                f"train_loss must be one loss or a sequence of losses, got a tensor of shape "
                f"{tuple(train_loss.shape)}"
            )
        values = train_loss.detach().cpu().tolist()  # a 0-d tensor gives one float
    elif is_number(train_loss):
        values = float(train_loss)
    elif isinstance(train_loss, Sequence) and not isinstance(train_loss, (str, bytes)):
        values = _sequence_values(train_loss)
    else:
        raise ConfigError(
            f"train_loss must be a number or a sequence of numbers, got {train_loss!r}"
        )
    if values == []:
        raise ConfigError(
            "train_loss is empty: observe() needs the interval's train losses (or their "
            "mean), got []"
        )
    return values


def _sequence_values(losses: Sequence) -> list[float]:
    """A sequence of numbers or one-element tensors, as floats."""
    for loss in losses:
        if not (is_number(loss) or (isinstance(loss, torch.Tensor) and loss.numel() == 1)):
            raise ConfigError(
                f"train_loss must hold numbers or one-element tensors, got {loss!r} in it"
            )
    tensors = [loss for loss in losses if isinstance(loss, torch.Tensor)]
    if not tensors:
        return [float(loss) for loss in losses]
    device = tensors[0].device
    stacked = torch.stack(
        [torch.as_tensor(loss).detach().reshape(()).to(device) for loss in losses]
    )
    return stacked.cpu().tolist()


def train_loss_stats(train_loss: TrainLoss, steps: int) -> tuple[float, float, float, int]:
    """Mean, std, per-step slope and non-finite count of an interval of `steps` steps, as
    `StepRun.train` computes them (non-finite losses left out). A sequence gives all
    four; one number gives only the mean (std and slope NaN)."""
    values = train_loss_values(train_loss)
    if isinstance(values, float):  # the mean only: a non-finite one spoils the interval
        if not math.isfinite(values):
            return math.nan, math.nan, math.nan, steps
        return values, math.nan, math.nan, 0
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan, len(values)
    # Losses of evenly spaced steps (not every step) give the per-step slope too.
    slope = least_squares_slope(finite) * (len(values) / steps)
    return float(np.mean(finite)), float(np.std(finite)), slope, len(values) - len(finite)


def loop_interval_stats(
    step: int,
    steps: int,
    step_lrs: list[float],
    train_loss: TrainLoss,
    val_loss: float,
    grad_norm: float,
    update_ratio: float,
) -> IntervalStats:
    """The `IntervalStats` of an interval of `steps` steps ending at step count `step`,
    trained at `step_lrs`, from what the loop measured (tokens and time: not features,
    unknown here)."""
    mean, std, slope, nonfinite_steps = train_loss_stats(train_loss, steps)
    return IntervalStats(
        step=step,
        steps=steps,
        lr=step_lrs[-1],
        lr_mean=float(np.mean(step_lrs)),
        train_loss_mean=mean,
        train_loss_std=std,
        train_loss_slope=slope,
        val_loss=val_loss,
        grad_norm=grad_norm,
        update_ratio=update_ratio,
        nonfinite=nonfinite_steps > 0,
        nonfinite_steps=nonfinite_steps,
        tokens=0,
        seconds=math.nan,
    )


def weak_method_hook(controller: weakref.ref, method: str):
    """An optimizer hook that calls the controller's `method`, while the controller lives."""

    def hook(_optimizer, _args, _kwargs) -> None:
        alive = controller()
        if alive is not None:
            getattr(alive, method)()

    return hook
