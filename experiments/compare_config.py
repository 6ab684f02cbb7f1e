"""The settings of `lrpilot compare`: the protocol (`Protocol`, also a suite's) and the
comparison (`CompareConfig`: which run, the protocol, the policy)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lrpilot.agents.rule_policy import rule_named
from lrpilot.config import (
    all_of,
    at_least,
    check_fields,
    distinct,
    each,
    fraction,
    low_high,
    non_empty,
    one_of,
    positive,
    setting,
    valid_seed,
)
from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError
from lrpilot.lm.metric import METRICS
from lrpilot.lm.optimizers import TUNING_FREE, check_tuning_free
from lrpilot.lm.schedules import SCHEDULE_NAMES, default_warmup
from lrpilot.settings import RunSettings

CONTROLLERS = (
    "random",
    "plateau",
    "rangestop",
    "priorstop",
    "priorhold",
    "sweepvalley",
)  # the baseline controllers compare can add


def distinct_in_3_digits(values: tuple[float, ...]) -> str | None:
    return None if len({f"{v:.3g}" for v in values}) == len(values) else "must differ in 3 digits"


@dataclass(frozen=True)
class Protocol:
    """How the methods are compared: the tuning of the fixed schedules, the seeds, and
    what else runs untuned. A suite's top-level settings are one `Protocol`."""

    schedules: tuple[str, ...] = setting(
        ("constant", "warmup_cosine", "wsd", "warmup_linear"),
        help=f"fixed schedules to tune, comma-separated, from: {', '.join(SCHEDULE_NAMES)}",
        check=all_of(non_empty, distinct, each(one_of(SCHEDULE_NAMES))),
    )
    controllers: tuple[str, ...] = setting(
        (),
        help=f"baseline controllers to run untuned, from: {', '.join(CONTROLLERS)}",
        check=all_of(distinct, each(one_of(CONTROLLERS))),
    )
    tuning_free: tuple[str, ...] = setting(
        (),
        help="tuning-free optimizers to run once per evaluation seed untuned, from: "
        f"{', '.join(TUNING_FREE)} (extra lrpilot[tuningfree])",
        check=all_of(distinct, each(one_of(TUNING_FREE))),
    )
    lr_grid: int = setting(5, help="peak LRs per schedule, log-spaced", check=at_least(2))
    lr_range: tuple[float, float] = setting(
        (1e-3, 1e-2), help="LOW,HIGH ends of the peak-LR grid", check=low_high
    )
    warmups: tuple[float, ...] = setting(
        (0.05, 0.1, 0.2, 0.3),
        help="warmup fractions tuned with the peak (every pair is a tuning run), for "
        "schedules with a warmup; empty: each schedule's own (5%)",
        check=all_of(each(fraction), distinct_in_3_digits),
    )
    tune_seeds: tuple[int, ...] = setting(
        (0,),
        help="seeds the schedules are tuned on",
        check=all_of(non_empty, distinct, each(valid_seed)),
    )
    eval_seeds: tuple[int, ...] = setting(
        (1, 2, 3, 4, 5),
        help="held-out seeds every method is scored on",
        check=all_of(non_empty, distinct, each(valid_seed)),
    )
    start_lrs: tuple[float, ...] = setting(
        (1e-3,),
        help="untuned start LRs of the policy and the controllers",
        check=all_of(non_empty, each(positive), distinct_in_3_digits),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        check_tuning_free(self.tuning_free)  # a missing extra is reported now
        shared = sorted(set(self.tune_seeds) & set(self.eval_seeds))
        if shared:
            raise ConfigError(
                f"seed(s) {', '.join(map(str, shared))} are both tuning and evaluation seeds; "
                f"the evaluation seeds must be held out"
            )

    def grid(self) -> list[float]:
        """The log-spaced peak LRs every schedule is tuned over."""
        low, high = self.lr_range
        return [float(lr) for lr in np.geomspace(low, high, self.lr_grid)]

    def warmup_grid(self, schedule: str) -> list[float | None]:
        """The warmups `schedule` is tuned over: `warmups`, else its own; [None] if it has
        no warmup."""
        own = default_warmup(schedule)
        if own is None:
            return [None]
        return list(self.warmups) or [own]


@dataclass(frozen=True)
class CompareConfig:
    """Everything `lrpilot compare` needs; every field is one of its flags."""

    run: RunSettings = setting(RunSettings(), help="which run")
    protocol: Protocol = setting(Protocol(), help="the comparison protocol")
    policy: str | None = setting(
        None,
        help="policy file or folder, a shipped learned policy (tiny, prior_generalist), or "
        "a fixed rule, `default` (priorhold) included (runs as that controller); optional",
        check=non_empty,
    )
    jobs: int = setting(1, help="runs in parallel (--backend process)", check=positive)
    metric: str | None = setting(
        None,
        help="what to tune and rank by in place of the workload's own: loss or accuracy",
        check=one_of(METRICS),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        rule = rule_named(self.policy)
        if rule is not None:  # a fixed rule runs as the baseline controller of its name
            controllers = tuple(dict.fromkeys((*self.protocol.controllers, rule)))
            protocol = dataclasses.replace(self.protocol, controllers=controllers)
            object.__setattr__(self, "protocol", protocol)
            object.__setattr__(self, "policy", None)
        self.task(self.protocol.eval_seeds[0], self.protocol.lr_range[0])  # the run, checked

    def task(self, seed: int, lr: float) -> Task:
        """The comparison's workload as one run: `seed`, and `lr` to start from (the peak
        of a schedule); its `metric` is `metric` where given."""
        return self.run.task(seed, lr, metric=self.metric)
