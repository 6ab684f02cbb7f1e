"""Controllers: anything with `act(observation) -> action` drives `LRControlEnv`.

The learned `Policy` (see `policy_file`) and these baselines share that interface,
so every comparison drives the environment the same way. The baselines read what
they need from the raw observation (progress, LR relative to the start, the
validation loss relative to its initial value), so they work on any task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from lrpilot.agents.arguments import is_number
from lrpilot.env.actions import ActionRule
from lrpilot.env.features import FEATURE_NAMES
from lrpilot.errors import ConfigError
from lrpilot.files import json_text
from lrpilot.lm.schedules import PLATEAU, schedule_curve
from lrpilot.lm.sweep import DIVERGED_FACTOR, SMOOTHING

# Each feature set extends the one before it, so these indices hold in every set.
_PROGRESS = FEATURE_NAMES.index("progress")
_LOG_LR = FEATURE_NAMES.index("log_lr_rel_start")
_ABSOLUTE_LOG_LR = FEATURE_NAMES.index("log_lr")
_VAL_REL_INIT = FEATURE_NAMES.index("log_val_rel_init")
_VAL_REL_PREV = FEATURE_NAMES.index("log_val_rel_prev")
_SUGGESTED = FEATURE_NAMES.index("sweep_log_lr_suggested")


class Controller(Protocol):
    def act(self, observation: np.ndarray): ...


def action_for_factor(rule: ActionRule, wanted: float):
    """The action of `rule` whose LR factor comes closest (in log space) to `wanted`."""
    if rule.mode == "discrete":
        return int(np.argmin([abs(math.log(f / wanted)) for f in rule.factors]))
    top = rule.rise_factor if rule.range_start and wanted > 1 else rule.continuous_max_factor
    exponent = math.log(wanted) / math.log(top)
    return np.array([np.clip(exponent, -1.0, 1.0)], dtype=np.float32)


class _FactorController:
    """A baseline that asks for LR factors, turned into actions of the env's `rule`."""

    def __init__(self, rule: ActionRule | None) -> None:
        self.rule = rule if rule is not None else ActionRule()

    def _action(self, wanted: float):
        return action_for_factor(self.rule, wanted)


class ScheduleController(_FactorController):
    """Follows a fixed schedule, one LR per interval, peaking at the start LR.

    The env holds one LR per interval, so this is the schedule sampled at the start of
    each interval; the factor per interval is limited by the action space.
    """

    def __init__(
        self,
        schedule: str,
        total_steps: int,
        rule: ActionRule | None = None,  # the env's action rule; default ActionRule()
    ) -> None:
        if schedule == PLATEAU:
            raise ConfigError("use PlateauController for reduce-on-plateau")
        super().__init__(rule)
        self.curve = schedule_curve(schedule, 1.0, total_steps)  # relative to the peak

    def act(self, observation: np.ndarray):
        step = round(float(observation[_PROGRESS]) * len(self.curve))
        current = math.exp(float(observation[_LOG_LR]))  # LR / start LR
        wanted = self.curve[min(step, len(self.curve) - 1)] / current
        return self._action(max(wanted, 1e-12))


class RandomController:
    """Uniformly random actions, seeded."""

    def __init__(self, action_space, seed: int = 0) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def act(self, observation: np.ndarray):
        return self.action_space.sample()


class PlateauController(_FactorController):
    """Reduce-on-plateau: cut the LR by `factor` after `patience` intervals without a
    new best validation loss (by a relative `threshold`), else keep it."""

    def __init__(
        self,
        patience: int = 2,
        factor: float = 0.5,
        threshold: float = 1e-3,
        rule: ActionRule | None = None,  # the env's action rule; default ActionRule()
    ) -> None:
        super().__init__(rule)
        self.patience, self.factor, self.threshold = patience, factor, threshold
        self.bad_intervals = 0
        self.best = 0.0  # best log(L_t / L_0) so far in this episode

    def act(self, observation: np.ndarray):
        if float(observation[_PROGRESS]) == 0.0:
            self.bad_intervals, self.best = 0, 0.0  # a new episode
            return self._action(1.0)
        loss = float(observation[_VAL_REL_INIT])
        if loss < self.best + math.log1p(-self.threshold):  # L_t < best * (1 - threshold)
            self.best, self.bad_intervals = loss, 0
        else:
            self.bad_intervals += 1
        if self.bad_intervals > self.patience:
            self.bad_intervals = 0
            return self._action(self.factor)
        return self._action(1.0)


# The online range test that `RangeStopController` drives: from a tenth of the start LR,
# up by at most x2.5 per interval, then a 1 - sqrt cooldown over the last 20%.
RANGE_TEST_RULE = ActionRule(
    mode="continuous",
    continuous_max_factor=4.0,
    range_start=0.1,
    rise_factor=2.5,
    cooldown_fraction=0.2,
)


RANGE_STOP = {"stop_fraction": 0.3, "backoff": 1.0}  # fixed on the validation suite

# A prior of the peak LR from the run's sizes, fitted on training workloads of our own
# (experiments/studies/lr_prior/: lr = 1.29e-3 (N / 1e6)^-0.647 (B / 1e3)^0.330, N
# parameters, B tokens per step; a typical miss of x1.4 in leave-one-out).
LR_PRIOR = {  # experiments/studies/lr_prior/prior.json
    "prior_lr": 0.0012854617598698273,
    "prior_params_power": -0.646747,
    "prior_tokens_power": 0.329642,
}

# The online range test from that prior: the first interval at 0.4x the prior, so that
# one rise of x2.5 reaches it; the start LR is not used. Two fixed rules drive it:
# "priorstop" (`RangeStopController`, its stop fraction fixed on the validation suite by
# experiments/studies/range_test_oracle/stop_rule.py) and "priorhold" (one rise, to the
# prior, then hold: what the prior alone gives).
PRIOR_RANGE_RULE = dataclasses.replace(RANGE_TEST_RULE, range_start=0.4, **LR_PRIOR)
PRIOR_STOP = {"stop_fraction": 0.7, "backoff": 1.0}
# priorhold holds 0.4x the prior instead if its first interval's loss rises
PRIOR_HOLD = {"stop_fraction": 0.0, "backoff": 1.0, "max_rises": 1}

# The range-test controllers of `compare`: each one's action rule and the settings of
# its `RangeStopController`.
RANGE_RULES = {
    "rangestop": (RANGE_TEST_RULE, RANGE_STOP),
    "priorstop": (PRIOR_RANGE_RULE, PRIOR_STOP),
    "priorhold": (PRIOR_RANGE_RULE, PRIOR_HOLD),
}


# The rolled-back sweep that `SweepValleyController` reads: 4% of the budget over the
# rule's whole LR range (1e-5 to 1e-1, whatever the start LR); the first action may set
# any LR in that range (a factor of up to lr_max / lr_min either way); a 1 - sqrt
# cooldown over the last 20%.
SWEEP_RULE = ActionRule(
    mode="continuous",
    first_action_max_factor=ActionRule().lr_max / ActionRule().lr_min,
    sweep_fraction=0.04,
    cooldown_fraction=0.2,
)
SWEEP_VALLEY = {"smoothing": SMOOTHING, "diverged_factor": DIVERGED_FACTOR}  # the valley's


def rule_digest(name: str) -> str:
    """sha256 of a rule-driven baseline's settings ("" for the others): a comparison's
    cache keys its runs by it, so changed settings are new runs, not stale ones."""
    if name in RANGE_RULES:
        rule, stop = RANGE_RULES[name]
        settings = {"rule": rule.to_dict()} | stop
    elif name == "sweepvalley":
        settings = {"rule": SWEEP_RULE.to_dict()} | SWEEP_VALLEY
    else:
        return ""
    return hashlib.sha256(json_text(settings, indent=None).encode()).hexdigest()


def reads_start_lr(name: str) -> bool:
    """Whether the baseline controller `name`'s runs depend on the start LR (a range
    test from the LR prior does not: its runs from every start LR are the same run)."""
    return name not in RANGE_RULES or not RANGE_RULES[name][0].prior_lr


class RangeStopController(_FactorController):
    """The online range test driven by a fixed rule, the non-learned method on that
    mechanism: rise while each interval's log-improvement of the validation loss is at
    least `stop_fraction` of the best interval's so far (and, with `max_rises`, at most
    that many times); at the first that is not, back off by `backoff` once and hold the
    LR for the rest of the run."""

    READS = ("progress", "log_val_rel_prev")  # the features it acts on

    def __init__(
        self,
        stop_fraction: float = RANGE_STOP["stop_fraction"],
        backoff: float = RANGE_STOP["backoff"],
        rule: ActionRule = RANGE_TEST_RULE,
        max_rises: int | None = None,
    ) -> None:
        if max_rises is not None and (
            isinstance(max_rises, bool) or not isinstance(max_rises, int) or max_rises < 0
        ):
            raise ConfigError(f"max_rises must be a whole number >= 0 or None, got {max_rises!r}")
        if not rule.range_start or rule.factor_span:
            raise ConfigError(
                "RangeStopController needs an action rule with range_start > 0 and no "
                f"factor_span, got range_start {rule.range_start}, factor_span {rule.factor_span}"
            )
        super().__init__(rule)
        self.stop_fraction, self.backoff, self.max_rises = stop_fraction, backoff, max_rises
        self.rising, self.best_gain, self.rises = True, 0.0, 0

    def act(self, observation: np.ndarray):
        if float(observation[_PROGRESS]) == 0.0:  # a new episode; the range test's start
            self.rising, self.best_gain, self.rises = True, 0.0, 0
            return self._action(self.rule.rise_factor)
        if not self.rising:
            return self._action(1.0)
        gain = -float(observation[_VAL_REL_PREV])  # log(L_{t-1} / L_t)
        self.best_gain = max(self.best_gain, gain)
        if gain < self.stop_fraction * self.best_gain or self.rises == self.max_rises:
            self.rising = False
            return self._action(1.0 / self.backoff)
        self.rises += 1
        return self._action(self.rule.rise_factor)

    def state_dict(self) -> dict[str, Any]:
        """Where the range test stands (plain data): a run resumed with it goes on alike."""
        return {"rising": self.rising, "best_gain": self.best_gain, "rises": self.rises}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`'s data; anything else is a one-line error."""
        valid = (
            isinstance(state, Mapping)
            and set(state) == {"rising", "best_gain", "rises"}
            and isinstance(state["rising"], bool)
            and is_number(state["best_gain"])
            and isinstance(state["rises"], int)
            and not isinstance(state["rises"], bool)
        )
        if not valid:
            raise ConfigError(
                f"not a RangeStopController state (rising, best_gain, rises): {state!r}"
            )
        self.rising, self.best_gain, self.rises = (
            state["rising"],
            float(state["best_gain"]),
            state["rises"],
        )


class SweepValleyController:
    """The rolled-back sweep read by a fixed rule, the non-learned method on that
    mechanism: the first action (at reset, after the sweep) sets the LR the sweep
    suggests (`sweep_log_lr_suggested`: fastai's valley, `lrpilot.lm.sweep`; the factor
    from the start LR is `exp(sweep_log_lr_suggested - log_lr)`), and every later action
    holds it; the rule's cooldown ends the run. Needs an env with the `sweep` features
    (feature set `v3`)."""

    def __init__(self, rule: ActionRule = SWEEP_RULE) -> None:
        if not rule.sweep_fraction or rule.mode != "continuous" or not rule.first_action_max_factor:
            raise ConfigError(
                "SweepValleyController needs a continuous action rule with sweep_fraction > 0 "
                f"and a first_action_max_factor, got mode {rule.mode!r}, sweep_fraction "
                f"{rule.sweep_fraction}, first_action_max_factor {rule.first_action_max_factor}"
            )
        self.rule = rule

    def act(self, observation: np.ndarray):
        if float(observation[_PROGRESS]) != 0.0:  # after the first interval: hold
            return np.zeros(1, dtype=np.float32)
        log_factor = float(observation[_SUGGESTED]) - float(observation[_ABSOLUTE_LOG_LR])
        exponent = log_factor / math.log(self.rule.first_action_max_factor)
        return np.array([np.clip(exponent, -1.0, 1.0)], dtype=np.float32)
