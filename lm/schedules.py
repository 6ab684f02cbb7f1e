"""Fixed learning-rate schedules, as `torch.optim.lr_scheduler.LRScheduler` subclasses.

Each schedule's LR is a closed-form function of the step: ``peak * factor(step)``,
where the peak is the optimizer's LR when the schedule is made. They are made by
name from one registry (`make_schedule`), so the CLI, the comparisons and the tests
all use the same code. `plateau` is PyTorch's own `ReduceLROnPlateau`, stepped with
the validation loss after each evaluation interval.

Progress runs from step 0 to `total_steps`; decays reach their floor at
`total_steps`, warmups reach the peak at their last warmup step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lrpilot.errors import ConfigError, require_positive_int


class FixedSchedule(LRScheduler):
    """Base class: the LR at step `s` is `peak * self.factor(s)`."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, last_epoch: int = -1):
        require_positive_int("total_steps", total_steps)
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        """Fraction of the run done, clipped to [0, 1]."""
        return min(max(step, 0), self.total_steps) / self.total_steps

    def lr_at(self, step: int) -> float:
        """The LR of the first parameter group at `step` (pure: no state changes)."""
        return self.base_lrs[0] * self.factor(step)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def warmup_steps(total_steps: int, fraction: float) -> int:
    """Steps of a warmup over the first `fraction` of a run: at least 1 if `fraction > 0`."""
    return max(1, round(fraction * total_steps)) if fraction > 0 else 0


def _warmup_factor(step: int, warmup: int) -> float:
    """Linear warmup that reaches 1 at step `warmup - 1`."""
    return (step + 1) / warmup


def linear_warmup(step: int, total_steps: int, fraction: float) -> float:
    """The linear warmup factor over the first `fraction` of the run: 1 after it.

    The warmup of WSD and warmup+cosine, also applied by a learned controller with
    `warmup_fraction > 0`.
    """
    w = warmup_steps(total_steps, fraction)
    return _warmup_factor(step, w) if step < w else 1.0


def cooldown_progress(step: int, total_steps: int, fraction: float) -> float:
    """How far into a cooldown over the last `fraction` of the run `step` is: 0 before it
    starts, 1 at `total_steps`."""
    start = total_steps - round(fraction * total_steps)
    if step < start:
        return 0.0
    return (min(step, total_steps) - start) / max(1, total_steps - start)


def sqrt_cooldown(step: int, total_steps: int, fraction: float) -> float:
    """The `1 - sqrt(q)` cooldown factor over the last `fraction` of the run: 1 before it.

    The shape of WSD's default cooldown (Hägele et al. 2024), also applied by a learned
    controller with `cooldown_fraction > 0`.
    """
    return 1.0 - math.sqrt(cooldown_progress(step, total_steps, fraction))


def _cosine(q: float, floor: float) -> float:
    """Cosine from 1 at q=0 down to `floor` at q=1."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * q))


class ConstantSchedule(FixedSchedule):
    def factor(self, step: int) -> float:
        return 1.0


class StepSchedule(FixedSchedule):
    """Multiply by `gamma` at each milestone (fractions of the run)."""

    def __init__(self, optimizer, total_steps, milestones=(0.5, 0.75), gamma=0.1, last_epoch=-1):
        self.milestones = tuple(milestones)
        self.gamma = gamma
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        passed = sum(self.progress(step) >= m for m in self.milestones)
        return self.gamma**passed


class ExponentialSchedule(FixedSchedule):
    """Geometric decay from the peak to `final_ratio * peak` at the end."""

    def __init__(self, optimizer, total_steps, final_ratio=0.01, last_epoch=-1):
        self.final_ratio = final_ratio
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        return self.final_ratio ** self.progress(step)


class LinearSchedule(FixedSchedule):
    """Linear decay from the peak to `final_ratio * peak` at the end."""

    def __init__(self, optimizer, total_steps, final_ratio=0.0, last_epoch=-1):
        self.final_ratio = final_ratio
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        return 1.0 - (1.0 - self.final_ratio) * self.progress(step)


class CosineSchedule(FixedSchedule):
    """Cosine decay from the peak to `final_ratio * peak` at the end."""

    def __init__(self, optimizer, total_steps, final_ratio=0.0, last_epoch=-1):
        self.final_ratio = final_ratio
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        return _cosine(self.progress(step), self.final_ratio)


class WarmupDecaySchedule(FixedSchedule):
    """Linear warmup over `warmup` of the run, then `decay(q)` from 1 at q = 0 to
    `final_ratio` at q = 1 over the rest."""

    def __init__(self, optimizer, total_steps, warmup=0.05, final_ratio=0.0, last_epoch=-1):
        self.warmup = warmup
        self.final_ratio = final_ratio
        super().__init__(optimizer, total_steps, last_epoch)

    def decay(self, q: float) -> float:
        raise NotImplementedError

    def factor(self, step: int) -> float:
        w = warmup_steps(self.total_steps, self.warmup)
        if step < w:
            return _warmup_factor(step, w)
        return self.decay((min(step, self.total_steps) - w) / max(1, self.total_steps - w))


class WarmupCosineSchedule(WarmupDecaySchedule):
    """Linear warmup over `warmup` of the run, then cosine decay to `final_ratio`."""

    def decay(self, q: float) -> float:
        return _cosine(q, self.final_ratio)


class WarmupLinearSchedule(WarmupDecaySchedule):
    """Linear warmup over `warmup` of the run, then linear decay to `final_ratio` (0:
    decay to zero, which beats cosine to 10% for LMs: arXiv 2502.15938)."""

    def decay(self, q: float) -> float:
        return 1.0 - (1.0 - self.final_ratio) * q


class WSDSchedule(FixedSchedule):
    """Warmup-stable-decay: warmup, a constant phase, then a cooldown over the last `decay`
    of the run to `final_ratio`, shaped `1 - sqrt(q)` (default) or linear `1 - q`."""

    def __init__(
        self,
        optimizer,
        total_steps,
        warmup=0.05,
        decay=0.2,
        final_ratio=0.0,
        cooldown="sqrt",
        last_epoch=-1,
    ):
        if cooldown not in ("sqrt", "linear"):
            raise ConfigError(f"WSD cooldown must be 'sqrt' or 'linear', got {cooldown!r}")
        self.warmup = warmup
        self.decay = decay
        self.final_ratio = final_ratio
        self.cooldown = cooldown
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        w = warmup_steps(self.total_steps, self.warmup)
        if step < w:
            return _warmup_factor(step, w)
        if self.cooldown == "sqrt":
            shape = sqrt_cooldown(step, self.total_steps, self.decay)
        else:
            shape = 1.0 - cooldown_progress(step, self.total_steps, self.decay)
        return self.final_ratio + (1.0 - self.final_ratio) * shape


class WSDLinearSchedule(WSDSchedule):
    """WSD with a linear cooldown."""

    def __init__(self, optimizer, total_steps, warmup=0.05, decay=0.2, final_ratio=0.0, **kw):
        super().__init__(optimizer, total_steps, warmup, decay, final_ratio, "linear", **kw)


class OneCycleSchedule(FixedSchedule):
    """One-cycle (Smith): cosine rise from `peak / div_factor` to the peak over `warmup`
    of the run, then cosine fall to `peak / final_div_factor` (PyTorch's defaults,
    without the momentum cycle)."""

    def __init__(
        self,
        optimizer,
        total_steps,
        warmup=0.3,
        div_factor=25.0,
        final_div_factor=1e4,
        last_epoch=-1,
    ):
        self.warmup = warmup
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        w = warmup_steps(self.total_steps, self.warmup)
        start = 1.0 / self.div_factor
        if step < w:
            q = step / max(1, w - 1)
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * q))
        q = (min(step, self.total_steps) - w) / max(1, self.total_steps - w)
        return _cosine(q, 1.0 / self.final_div_factor)


class InverseSqrtSchedule(FixedSchedule):
    """Linear warmup, then `peak * sqrt(warmup_steps / (step + 1))` (Vaswani et al.)."""

    def __init__(self, optimizer, total_steps, warmup=0.05, last_epoch=-1):
        self.warmup = warmup
        super().__init__(optimizer, total_steps, last_epoch)

    def factor(self, step: int) -> float:
        w = max(1, warmup_steps(self.total_steps, self.warmup))
        if step < w:
            return _warmup_factor(step, w)
        return math.sqrt(w / (step + 1))


SCHEDULES: dict[str, type[FixedSchedule]] = {
    "constant": ConstantSchedule,
    "step": StepSchedule,
    "exponential": ExponentialSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "warmup_cosine": WarmupCosineSchedule,
    "warmup_linear": WarmupLinearSchedule,
    "wsd": WSDSchedule,
    "wsd_linear": WSDLinearSchedule,
    "one_cycle": OneCycleSchedule,
    "inverse_sqrt": InverseSqrtSchedule,
}
PLATEAU = "plateau"
SCHEDULE_NAMES: tuple[str, ...] = (*SCHEDULES, PLATEAU)


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, **options
) -> FixedSchedule | ReduceLROnPlateau:
    """Make a schedule by name; the optimizer's current LR is the peak."""
    if name == PLATEAU:
        settings = {"mode": "min", "factor": 0.5, "patience": 2, "threshold": 1e-3} | options
        return ReduceLROnPlateau(optimizer, **settings)
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULE_NAMES)}")
    return SCHEDULES[name](optimizer, total_steps, **options)


def default_warmup(name: str) -> float | None:
    """The warmup fraction a schedule uses unless told otherwise; None if it has no
    warmup to tune (e.g. `constant`, `cosine`, `plateau`)."""
    if name not in SCHEDULES:
        return None
    option = inspect.signature(SCHEDULES[name].__init__).parameters.get("warmup")
    return None if option is None else float(option.default)


def lr_function(
    scheduler: FixedSchedule | ReduceLROnPlateau, optimizer: torch.optim.Optimizer
) -> Callable[[int], float]:
    """The per-step LR function that `TrainingRun.train` takes, for a schedule.

    A fixed schedule is evaluated in closed form; `ReduceLROnPlateau` holds the
    optimizer's current LR, which it lowers when stepped with the validation loss.
    """
    if isinstance(scheduler, FixedSchedule):
        return scheduler.lr_at
    return lambda _step: optimizer.param_groups[0]["lr"]


def schedule_curve(name: str, peak_lr: float, total_steps: int, **options) -> list[float]:
    """The LR at every step of a fixed schedule, with no model (for plots and tests)."""
    if name == PLATEAU:
        raise ConfigError("plateau depends on the losses of a run and has no fixed curve")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    scheduler = make_schedule(name, optimizer, total_steps, **options)
    return [scheduler.lr_at(step) for step in range(total_steps)]
