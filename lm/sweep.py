"""The rolled-back LR sweep: a short LR range test at the start of a run, undone after.

A sweep of `S` steps trains the run's model at LRs rising geometrically from `low` to
`high` (`sweep_lrs`; the action rule's `lr_min` and `lr_max`, absolute LRs, so the
sweep does not depend on the run's start LR), records each step's train loss, then puts
the weights, buffers and optimizer state back exactly as they were (`Snapshot`), so
the run goes on from its start point having learned only what the loss-against-LR
curve says. The sweep's steps count in the run's budget and its batches are consumed.

What the curve suggests (`SweepResult.suggested_lr`) follows fastai's `valley` LR
finder (fastai.callback.schedule.valley, fastai 2.x): the losses are smoothed by a
debiased exponential moving average (as fastai's `Recorder` smooths them, here with
`SMOOTHING`, since a sweep has tens of steps, not hundreds), cut where they exceed
`DIVERGED_FACTOR` times their minimum (fastai's `stop_div`), and the suggestion is
fastai's `valley` index on what is left: with the longest decreasing subsequence of
the curve ending at `e` and `b = e - its length`, the index `b + int(d / 3) +
int(d / 6)`, `d = e - b` ("roughly 2/3 through the longest valley", in fastai's
words), here at least 0. fastai also drops the first tenth and the last 5 points of
its 100-step curve; a sweep of tens of steps keeps them all.

`StepRun.sweep` (lrpilot.lm.run) and the in-loop controller both use these functions,
so a run in the env and the same run under `PolicyScheduler` sweep alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SMOOTHING = 0.7  # the EMA's beta: each smoothed loss weighs the last ~3 steps
DIVERGED_FACTOR = 4.0  # the curve ends where the smoothed loss exceeds 4x its minimum


def sweep_lrs(steps: int, low: float, high: float) -> list[float]:
    """The LR of each sweep step: `low * (high / low) ** (j / (steps - 1))` for step `j`,
    so the first step trains at `low` and the last at `high`."""
    if steps < 2:
        raise ValueError(f"a sweep needs at least 2 steps, got {steps}")
    ratio = high / low
    return [low * ratio ** (j / (steps - 1)) for j in range(steps)]


def smoothed(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The debiased exponential moving average of `losses` (fastai's `Recorder`): a
    non-finite loss makes it and every later value infinite."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        if not math.isfinite(loss) or not math.isfinite(average):
            average = math.inf
        else:
            average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i) if math.isfinite(average) else math.inf)
    return out


def valley_index(losses: list[float]) -> int:
    """fastai's `valley` index of `losses` (see the module docstring), at least 0."""
    n = len(losses)
    lengths = [1] * n  # the longest decreasing subsequence ending at each index
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[max_end] < lengths[i]:
                max_end = i
                max_start = max_end - lengths[max_end]
    sections = (max_end - max_start) / 3
    return max(0, max_start + int(sections) + int(sections / 2))


@dataclass(frozen=True)
class SweepResult:
    """One sweep's curve: each step's LR and train loss (NaN for a skipped step)."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def smoothed_losses(self) -> list[float]:
        """The smoothed curve, infinite from where it diverged (`DIVERGED_FACTOR`)."""
        curve = smoothed(list(self.losses))
        finite = [v for v in curve if math.isfinite(v)]
        if not finite:
            return curve
        limit = DIVERGED_FACTOR * min(finite) if min(finite) > 0 else math.inf
        out, diverged = [], False
        for value in curve:
            diverged = diverged or not value <= limit
            out.append(math.inf if diverged else value)
        return out

    @property
    def suggested_lr(self) -> float:
        """fastai's valley LR of the curve before it diverged; the lowest LR if the first
        step already failed."""
        curve = [v for v in self.smoothed_losses if math.isfinite(v)]
        return self.lrs[valley_index(curve)] if curve else self.lrs[0]


class Snapshot:
    """One copy of a model's parameters and buffers and an optimizer's state, put back
    bitwise by `restore()` (which also releases the copy)."""

    def __init__(self, tensors: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.tensors = tensors
        self.copies: list[torch.Tensor] | None = [t.detach().clone() for t in tensors]
        self.optimizer = optimizer
        state = optimizer.state_dict()  # tensors in it are the live ones: copy them
        self.optimizer_state = _cloned(state)

    @torch.no_grad()
    def restore(self) -> None:
        if self.copies is None:
            raise RuntimeError("the snapshot was already restored")
        for tensor, copy in zip(self.tensors, self.copies, strict=True):
            tensor.copy_(copy)
        self.optimizer.load_state_dict(self.optimizer_state)
        self.copies, self.optimizer_state = None, {}


def _cloned(value):
    """A deep copy of a state dict's tensors (and of the containers around them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _cloned(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cloned(item) for item in value)
    return value


def model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `model`: what a sweep changes and puts back."""
    return [*model.parameters(), *model.buffers()]
