"""The settings of `lrpilot compare`, checked once: `CompareConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.lm.optimizers import check_tuning_free
from lrpilot.lm.schedules import SCHEDULE_NAMES, default_warmup

CONTROLLERS = ("random", "plateau")  # the baseline controllers compare can add


@dataclass(frozen=True)
class CompareConfig:
    """Everything `lrpilot compare` needs; every field is one of its flags."""

    schedules: tuple[str, ...] = ("constant", "warmup_cosine", "wsd", "warmup_linear")
    policy: str | None = None  # a policy file or folder; None compares schedules alone
    controllers: tuple[str, ...] = ()  # baseline controllers: random, plateau
    tuning_free: tuple[str, ...] = ()  # prodigy, schedulefree: run once per seed, untuned
    workload: str = "tiny"  # a built-in name, a .toml file or FILE.py:FUNCTION
    corpus: str | None = None  # replaces the workload's corpus (byte-corpus workloads)
    batch_size: int | None = None  # replaces the workload's batch size
    steps: int | None = None  # the step budget; None: the workload's
    eval_every: int | None = None  # steps per interval; None: the workload's
    lr_grid: int = 5  # peak LRs per schedule, log-spaced over lr_range
    lr_range: tuple[float, float] = (1e-3, 1e-2)
    # warmup fractions tuned with the peak (every pair), for schedules with a warmup;
    # () keeps each schedule's own (5%)
    warmups: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    tune_seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    start_lrs: tuple[float, ...] = (1e-3,)  # untuned start LRs of policy and controllers
    jobs: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        lists = (
            "schedules",
            "controllers",
            "tuning_free",
            "warmups",
            "tune_seeds",
            "eval_seeds",
            "start_lrs",
        )
        for name in lists:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "lr_range", tuple(self.lr_range))
        if not self.schedules:
            raise ConfigError("the schedule list is empty: give at least one schedule to tune")
        unknown = [s for s in self.schedules if s not in SCHEDULE_NAMES]
        if unknown:
            raise ConfigError(
                f"unknown schedule(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(SCHEDULE_NAMES)}"
            )
        unknown = [c for c in self.controllers if c not in CONTROLLERS]
        if unknown:
            raise ConfigError(
                f"unknown controller(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(CONTROLLERS)}"
            )
        check_tuning_free(self.tuning_free)
        if not isinstance(self.lr_grid, int) or self.lr_grid < 2:
            raise ConfigError(f"lr_grid must be an integer >= 2, got {self.lr_grid!r}")
        low, high = self.lr_range if len(self.lr_range) == 2 else (math.nan, math.nan)
        if not (0 < low < high and math.isfinite(high)):
            raise ConfigError(f"lr_range must be LOW,HIGH with 0 < LOW < HIGH, got {self.lr_range}")
        if any(not 0 < w < 1 for w in self.warmups):
            raise ConfigError(f"warmups must be fractions of the run in (0, 1), got {self.warmups}")
        if len({f"{w:.3g}" for w in self.warmups}) != len(self.warmups):
            raise ConfigError(f"warmups must differ in 3 significant digits, got {self.warmups}")
        if not self.tune_seeds or not self.eval_seeds:
            raise ConfigError("tune_seeds and eval_seeds must not be empty")
        for seed in (*self.tune_seeds, *self.eval_seeds):
            require_seed(seed)
        for name in ("schedules", "controllers", "tuning_free", "tune_seeds", "eval_seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} lists a value twice: {', '.join(map(str, values))}")
        if len({f"{lr:.3g}" for lr in self.start_lrs}) != len(self.start_lrs):
            raise ConfigError(
                f"start_lrs must differ in 3 significant digits, got {self.start_lrs!r}"
            )
        shared = sorted(set(self.tune_seeds) & set(self.eval_seeds))
        if shared:
            raise ConfigError(
                f"seed(s) {', '.join(map(str, shared))} are both tuning and evaluation seeds; "
                f"the evaluation seeds must be held out"
            )
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.start_lrs) or not self.start_lrs:
            raise ConfigError(f"start_lrs must be positive numbers, got {self.start_lrs!r}")
        require_positive_int("jobs", self.jobs)
        self.task(self.eval_seeds[0], low)  # the run settings, checked once

    def task(self, seed: int, lr: float) -> Task:
        """The comparison's workload as one run: `seed`, and `lr` to start from (the peak
        of a schedule)."""
        return Task.of(
            self.workload,
            seed,
            total_steps=self.steps,
            eval_every=self.eval_every,
            start_lr=lr,
            corpus=self.corpus,
            batch_size=self.batch_size,
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
