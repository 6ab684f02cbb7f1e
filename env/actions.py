"""Action spaces: multiplicative LR changes, discrete or continuous.

- `discrete` (default): `Discrete(len(factors))`; action `i` multiplies the LR by
  `factors[i]` (by default x0.5, x0.8, x1, x1.25, x2).
- `continuous`: `Box([-1], [1])`; action `a` multiplies the LR by `M**a`, where
  `M = continuous_max_factor` (default 2: from x0.5 to x2 per action).

The new LR is clipped to `[lr_min, lr_max]`.

`factor_span` makes actions independent of how often the controller is asked: with
`factor_span = f`, a factor applies in full over a fraction `f` of the step budget,
so an interval of `n` steps in a run of `T` gets `factor ** (n / (f * T))`. The same
actions then trace the same LR curve against progress whatever the budget or the
evaluation interval. `factor_span = 0` applies each factor once per interval.

`first_action_max_factor` (continuous actions only) widens the first action, the one
taken from the observation at reset before any step: it multiplies the start LR by
`first_action_max_factor**a` in full, whatever the budget (`factor_span` does not
apply), so one action can correct an untuned start LR by up to that factor either way.
`first_action_max_factor = 0` (default): the first action is like the others.

`probe_intervals` makes the first intervals a probe: the first `p` intervals train
at the start LR (with the warmup below) whatever the actions, so the first action
that moves the LR is taken from an observation of how the run took the start LR (its
loss, gradient norm and update ratio) instead of blind at reset. The wide first action
is then the one that sets interval `p`. `probe_intervals = 0` (default): no probe; the
action at reset sets the first interval's LR.

`cooldown_fraction` makes the controller a learned LR with a fixed cooldown: over the
last `c` of the budget, each step trains at the controller's LR times WSD's
`1 - sqrt(q)` cooldown factor (`lrpilot.lm.schedules.sqrt_cooldown`), which falls to
near 0 by the last step (0.6% of the controller's LR in a 400-step run with c = 0.2).
The controller keeps acting; its own LR is what the observation shows.
`cooldown_fraction = 0` (default): the controller's LR is the LR of every step.

`range_start` makes the search for the run's LR part of the rule (an online range
test): the first interval trains at `range_start` times the start LR, far below any
plausible LR, and each later action moves the LR geometrically, up by at most
`rise_factor` per interval (per `factor_span` of the budget, when that is set; a > 0:
`rise_factor**a`), down as far as the other actions (a < 0:
`continuous_max_factor**a`). Rising is what the controller does until
the run's answer says stop; holding (a = 0) stops the rise, a < 0 backs off, and a > 0
later resumes it. So no action jumps the LR up: a too-high LR is approached from
below, one bounded step per interval. `range_start = 0` (default): off.

`sweep_fraction` makes the search for the run's LR a rolled-back sweep before the
run (`lrpilot.lm.sweep`): the first `S = max(2, round(sweep_fraction * T))` steps of
the budget train at LRs rising geometrically from `lr_min` to `lr_max` (absolute
LRs, the range an action can set, whatever the start LR), one step each, on a copy of
the weights and optimizer state that is then put back; the run trains the remaining
`T - S` steps from its start point, and the observation at reset summarises the
loss-against-LR curve (the `sweep` features).
The first interval is the rest of the interval the sweep ended in, so evaluations
stay at the same steps as without a sweep. `sweep_fraction = 0` (default): no sweep.

`prior_lr` starts the controller from a prior of the run's sizes instead of the
user's start LR: the LR that scaling-law fits give the optimal peak as a power law in
(`lrpilot.lm.run_context`, the context features of `lrpilot.env.features`),

    prior = prior_lr * (N / 1e6)**prior_params_power * (F / 64)**prior_fan_in_power
                     * (B / 1e3)**prior_tokens_power * (T / 1e3)**prior_budget_power

(N parameters, F mean fan-in, B tokens or examples per step, T the step budget), clipped
to `[lr_min, lr_max]`. With the range test, the first interval trains at `range_start`
times the prior. `prior_lr = 0` (default): off, the controller starts from the start LR.

`warmup_fraction` is the same at the start: over the first `w` of the budget, each
step `s < W` trains at the controller's LR times WSD's linear warmup factor
`(s + 1) / W`, where `W = round(w T)` (at least 1), so a run started at a high LR does
not take its first steps at that LR unwarmed. `warmup_fraction = 0` (default): no
warmup. The two fractions sum to at most 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from lrpilot.config import (
    above,
    all_of,
    check_fields,
    each,
    fraction_or_zero,
    in_range,
    non_empty,
    non_negative,
    one_of,
    positive,
    setting,
)
from lrpilot.env.features import context_features
from lrpilot.errors import ConfigError
from lrpilot.lm.run_context import RunContext
from lrpilot.lm.schedules import linear_warmup, sqrt_cooldown

ACTION_MODES = ("discrete", "continuous")
# The prior's power (an `ActionRule` field) of each context feature (the log of a size
# over its reference, `lrpilot.env.features.context_features`).
PRIOR_POWERS = {
    "log_params": "prior_params_power",
    "log_fan_in": "prior_fan_in_power",
    "log_tokens_per_step": "prior_tokens_power",
    "log_budget": "prior_budget_power",
}
DEFAULT_FACTORS: tuple[float, ...] = (0.5, 0.8, 1.0, 1.25, 2.0)
DEFAULT_CONTINUOUS_MAX_FACTOR = 2.0


def zero_or_above_one(value: float) -> str | None:
    return None if value == 0 or value > 1 else "must be 0 (off) or a number > 1"


def lr_factor(
    mode: str,
    factors: tuple[float, ...],
    action,
    continuous_max_factor: float = DEFAULT_CONTINUOUS_MAX_FACTOR,
) -> float:
    """The multiplicative LR change an action asks for."""
    if mode == "discrete":
        index = int(np.asarray(action).reshape(()))
        if not 0 <= index < len(factors):
            raise ValueError(f"discrete action must be in [0, {len(factors)}), got {index}")
        return float(factors[index])
    exponent = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return float(continuous_max_factor**exponent) if math.isfinite(exponent) else 1.0


@dataclass(frozen=True)
class ActionRule:
    """How the controller's actions set the LR: every action setting, in one place.

    The environment (`EnvConfig.action`), a policy file (`Policy.action`, stored as the
    metadata table `action`) and `PolicyScheduler` all act through one `ActionRule`.
    """

    mode: str = setting(
        "discrete", help="discrete (a factor per action) or continuous", check=one_of(ACTION_MODES)
    )
    factors: tuple[float, ...] = setting(
        DEFAULT_FACTORS,
        help="LR multipliers of the discrete actions",
        check=all_of(non_empty, each(positive)),
    )
    continuous_max_factor: float = setting(
        DEFAULT_CONTINUOUS_MAX_FACTOR,
        help="continuous actions: a in [-1, 1] multiplies the LR by this factor**a",
        check=above(1),
    )
    first_action_max_factor: float = setting(
        0.0,
        help="the first action multiplies the start LR by this factor**a (continuous); 0: off",
        check=zero_or_above_one,
    )
    factor_span: float = setting(
        0.0,
        help="budget fraction each factor applies over, geometrically; 0: once per interval",
        check=in_range(0, 1),
    )
    probe_intervals: int = setting(
        0,
        help="the first intervals train at the start LR whatever the actions",
        check=non_negative,
    )
    lr_min: float = setting(1e-5, help="the lowest LR an action can set", check=positive)
    lr_max: float = setting(1e-1, help="the highest LR an action can set", check=positive)
    warmup_fraction: float = setting(
        0.0, help="first budget fraction warmed up linearly; 0: none", check=fraction_or_zero
    )
    cooldown_fraction: float = setting(
        0.0, help="last budget fraction cooled to 0 (1 - sqrt); 0: none", check=fraction_or_zero
    )
    range_start: float = setting(
        0.0,
        help="online range test: the first interval trains at this fraction of the start LR, "
        "and no action raises the LR by more than rise_factor (continuous actions; 0: off)",
        check=fraction_or_zero,
    )
    rise_factor: float = setting(
        2.5,
        help="online range test: the largest rise of the LR per interval (per factor_span of "
        "the budget, when that is set); moves down are bounded by continuous_max_factor",
        check=above(1),
    )
    prior_lr: float = setting(
        0.0,
        help="start from a prior of the run's sizes: the LR of a run with 1e6 parameters, "
        "mean fan-in 64, 1e3 tokens per step and 1e3 steps (0: off, start from the start LR)",
        check=non_negative,
    )
    prior_params_power: float = setting(0.0, help="the prior's power of the parameter count")
    prior_fan_in_power: float = setting(0.0, help="the prior's power of the mean fan-in")
    prior_tokens_power: float = setting(0.0, help="the prior's power of the tokens per step")
    prior_budget_power: float = setting(0.0, help="the prior's power of the step budget")
    sweep_fraction: float = setting(
        0.0,
        help="rolled-back LR sweep: this fraction of the budget (at least 2 steps) sweeps the "
        "LR from lr_min to lr_max before the run, then the weights and optimizer state are "
        "put back (0: off)",
        check=in_range(0, 0.5),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.first_action_max_factor and self.mode != "continuous":
            raise ConfigError(
                f"first_action_max_factor needs continuous actions, got action mode {self.mode!r}"
            )
        if not self.lr_min < self.lr_max:
            raise ConfigError(
                f"need 0 < lr_min < lr_max, got lr_min={self.lr_min!r}, lr_max={self.lr_max!r}"
            )
        if self.range_start and (
            self.mode != "continuous" or self.probe_intervals or self.first_action_max_factor
        ):
            raise ConfigError(
                f"range_start needs continuous actions without a probe or a wide first action, "
                f"got mode {self.mode!r}, probe_intervals {self.probe_intervals}, "
                f"first_action_max_factor {self.first_action_max_factor}"
            )
        powers = [power for power in PRIOR_POWERS.values() if getattr(self, power)]
        if powers and not self.prior_lr:
            raise ConfigError(f"{', '.join(powers)} need a prior_lr > 0 (the prior is off)")
        if self.sweep_fraction and (self.range_start or self.probe_intervals or self.prior_lr):
            raise ConfigError(
                f"sweep_fraction is a search of its own: it takes no range_start, probe or "
                f"prior, got range_start {self.range_start}, probe_intervals "
                f"{self.probe_intervals}, prior_lr {self.prior_lr}"
            )
        if self.warmup_fraction + self.cooldown_fraction > 1:
            raise ConfigError(
                f"warmup_fraction + cooldown_fraction must be at most 1, got "
                f"{self.warmup_fraction!r} + {self.cooldown_fraction!r}"
            )

    def sweep_steps(self, total_steps: int) -> int:
        """Steps of the rolled-back sweep in a run of `total_steps` (0: no sweep); a
        `ConfigError` when the sweep would leave the run no step to train."""
        if not self.sweep_fraction:
            return 0
        steps = max(2, round(self.sweep_fraction * total_steps))
        if steps >= total_steps:
            raise ConfigError(
                f"sweep_fraction {self.sweep_fraction} takes {steps} of the run's "
                f"{total_steps} steps, leaving none to train"
            )
        return steps

    def start_lr(self, lr: float, context: RunContext | None, total_steps: int) -> float:
        """The controller's LR before its first action: the prior of the run's sizes
        `context` (needed when `prior_lr` is set), else the start LR `lr`; clipped."""
        if self.prior_lr:
            if context is None:
                raise ConfigError("an action rule with a prior_lr needs the run's context")
            sizes = context_features(context, total_steps)
            log_factor = sum(
                getattr(self, power) * sizes[name] for name, power in PRIOR_POWERS.items()
            )
            lr = self.prior_lr * math.exp(log_factor)
        return float(np.clip(lr, self.lr_min, self.lr_max))

    def action_space(self) -> spaces.Space:
        """The Gymnasium action space of this rule."""
        if self.mode == "discrete":
            return spaces.Discrete(len(self.factors))
        return spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples): the `action` table of a policy file or preset."""
        return dataclasses.asdict(self) | {"factors": list(self.factors)}


def next_lr(
    lr: float,
    action,
    *,
    interval: int,
    interval_steps: int,
    total_steps: int,
    rule: ActionRule,
) -> float:
    """The LR of interval `interval` (0: the first, set at reset, before any step): `lr`
    times the action's factor, clipped to the bounds. The intervals of the probe keep
    `lr`; the first action after them may be wider (`first_action_max_factor`). With
    the range test, the first interval starts at `range_start` times `lr` and no action
    rises by more than `rise_factor`.

    The one rule for the environment and `PolicyScheduler` (open-loop replay follows
    recorded LRs instead).
    """
    if interval < rule.probe_intervals:
        return float(np.clip(lr, rule.lr_min, rule.lr_max))
    if rule.range_start and interval == 0:  # the range test starts far below `lr`
        return float(np.clip(lr * rule.range_start, rule.lr_min, rule.lr_max))
    if interval == rule.probe_intervals and rule.first_action_max_factor:
        factor = lr_factor(rule.mode, rule.factors, action, rule.first_action_max_factor)
    else:
        factor = lr_factor(rule.mode, rule.factors, action, rule.continuous_max_factor)
        if rule.range_start and factor > 1:  # the range test rises by at most rise_factor
            factor = lr_factor(rule.mode, rule.factors, action, rule.rise_factor)
        if rule.factor_span > 0:
            factor = factor ** (interval_steps / (rule.factor_span * total_steps))
    return float(np.clip(lr * factor, rule.lr_min, rule.lr_max))


def applied_lr(lr: float, step: int, *, total_steps: int, rule: ActionRule) -> float:
    """The LR that step `step` (steps done so far) trains at, given the controller's `lr`.

    The one rule for the environment and `PolicyScheduler` (see the module docstring).
    With both fractions 0 the factor is exactly 1 at every step. Where rounding makes
    the two windows share a step (only when the fractions sum to 1), both factors apply.
    """
    return (
        lr
        * linear_warmup(step, total_steps, rule.warmup_fraction)
        * sqrt_cooldown(step, total_steps, rule.cooldown_fraction)
    )
