"""Tasks: what one episode's training run is, and the distribution each reset draws from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from itertools import product

import numpy as np

from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.lm.run import TrainingRun, interval_lengths
from lrpilot.lm.workloads import Workload, load_workload, with_overrides

SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class Task:
    """One concrete training run: a workload, its seed, budget and start LR.

    `lr_scale`: the run trains at `lr_scale` times the LR the controller sets, and the
    controller is not told (1 outside training). A task space that draws it makes a
    memorised LR worthless: only the run's feedback says where the LR should go.
    """

    workload: Workload
    seed: int
    total_steps: int
    eval_every: int
    start_lr: float
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        require_seed(self.seed, "Task.seed")
        require_positive_int("Task.total_steps", self.total_steps)
        require_positive_int("Task.eval_every", self.eval_every)
        if self.eval_every > self.total_steps:
            raise ConfigError(
                f"eval_every ({self.eval_every}) must not exceed the step budget "
                f"({self.total_steps})"
            )
        lr = self.start_lr
        if isinstance(lr, bool) or not (isinstance(lr, int | float) and 0 < lr < math.inf):
            raise ConfigError(f"the start (or peak) LR must be a positive number, got {lr!r}")
        scale = self.lr_scale
        if isinstance(scale, bool) or not (isinstance(scale, int | float) and 0 < scale < math.inf):
            raise ConfigError(f"Task.lr_scale must be a positive number, got {scale!r}")

    @property
    def intervals(self) -> list[int]:
        """Steps of each evaluation interval; the last one takes the remainder."""
        return interval_lengths(self.total_steps, self.eval_every)

    @property
    def num_intervals(self) -> int:
        return len(self.intervals)

    def interval_steps(self, interval: int) -> int:
        """Steps of interval `interval` (0-based)."""
        return self.intervals[interval]

    def make_run(self, device: str = "cpu") -> TrainingRun:
        """The training run of this task, seeded."""
        return self.workload.make_run(self.seed, device)

    def to_dict(self) -> dict:
        return {
            "workload": self.workload.to_dict(),
            "seed": self.seed,
            "total_steps": self.total_steps,
            "eval_every": self.eval_every,
            "start_lr": self.start_lr,
            "lr_scale": self.lr_scale,
        }

    @classmethod
    def of(
        cls,
        workload: str | Workload,
        seed: int,
        *,
        total_steps: int | None = None,
        eval_every: int | None = None,
        start_lr: float = 1e-3,
        **overrides,
    ) -> Task:
        """A task of `workload` (a spec or a workload), its own budget unless given;
        `overrides` replace workload settings (e.g. `corpus=`, `batch_size=`)."""
        if isinstance(workload, str):
            workload = load_workload(workload)
        workload = with_overrides(workload, **overrides)
        return cls(
            workload,
            seed,
            total_steps if total_steps is not None else workload.steps,
            eval_every if eval_every is not None else workload.eval_every,
            start_lr,
        )


@dataclass(frozen=True)
class TaskSpace:
    """The distribution of tasks that `reset` samples from.

    Each tuple is a set to choose from uniformly; `start_lr` is a log-uniform range
    (pin it with equal ends); `seeds=None` draws a fresh seed at every reset.
    `workloads` are workload specs (built-in names, TOML files, `FILE.py:FUNCTION`);
    `corpora` and `batch_size`, when given, replace the drawn workload's own (for
    workloads that have those settings). `eval_every` is one interval length, or a
    tuple to choose from (drawn last, so a space with one length draws the same tasks).

    Two draws for a wide distribution come after all others, and only when given, so
    a space without them draws the same tasks as before they existed:

    - `vary`: workload settings and the values each is drawn from, uniformly, e.g.
      `{"n_embd": (32, 64, 128), "n_layer": (1, 2)}` (in the order of the names, sorted);
    - `lr_scale`: a log-uniform range of the hidden LR scale (`Task.lr_scale`).
    """

    workloads: tuple[str, ...] = ("tiny",)
    corpora: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    total_steps: tuple[int, ...] = (400,)
    eval_every: int | tuple[int, ...] = 20
    start_lr: tuple[float, float] = (1e-4, 1e-2)
    batch_size: int | None = None
    vary: dict[str, tuple] = field(default_factory=dict)
    lr_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        # Accept lists (from TOML or keyword arguments) but store tuples, so a
        # TaskSpace stays hashable and immutable.
        for name in ("workloads", "total_steps", "start_lr", "lr_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.vary, Mapping):
            raise ConfigError(f"TaskSpace.vary must be a table of settings, got {self.vary!r}")
        vary = {}
        for name in sorted(self.vary):
            values = self.vary[name]
            if not isinstance(values, list | tuple) or not values:
                raise ConfigError(
                    f"TaskSpace.vary.{name} must be a non-empty list of values, got {values!r}"
                )
            vary[name] = tuple(values)
        object.__setattr__(self, "vary", vary)
        for name, own in (("steps", "total_steps"), ("eval_every", "eval_every")):
            if name in vary:
                raise ConfigError(f"TaskSpace.vary.{name}: the space's own {own} sets it")
        if "batch_size" in vary and self.batch_size is not None:
            raise ConfigError("TaskSpace.vary.batch_size and TaskSpace.batch_size: give one")
        if "corpus" in vary and self.corpora is not None:
            raise ConfigError("TaskSpace.vary.corpus and TaskSpace.corpora: give one")
        for name in ("seeds", "corpora"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.workloads:
            raise ConfigError("TaskSpace.workloads is empty: give at least one workload")
        if self.corpora is not None and not self.corpora:
            raise ConfigError("TaskSpace.corpora is empty: give corpora, or none to keep each's")
        if self.seeds is not None and not self.seeds:
            raise ConfigError("TaskSpace.seeds is empty: give seeds, or None to draw them")
        if not self.total_steps:
            raise ConfigError("TaskSpace.total_steps is empty: give at least one step budget")
        for steps in self.total_steps:
            require_positive_int("TaskSpace.total_steps", steps)
        if isinstance(self.eval_every, list | tuple):
            object.__setattr__(self, "eval_every", tuple(self.eval_every))
            if not self.eval_every:
                raise ConfigError("TaskSpace.eval_every is empty: give at least one length")
        for eval_every in self.eval_every_choices:
            require_positive_int("TaskSpace.eval_every", eval_every)
            if eval_every > min(self.total_steps):
                raise ConfigError(
                    f"TaskSpace.eval_every ({eval_every}) is larger than the step budget "
                    f"({min(self.total_steps)})"
                )
        for name in ("start_lr", "lr_scale"):
            bounds = getattr(self, name)
            low, high = bounds if len(bounds) == 2 else (math.nan, math.nan)
            if not (0 < low <= high and math.isfinite(high)):
                raise ConfigError(
                    f"TaskSpace.{name} must be a range (low, high) with 0 < low <= high, "
                    f"got {bounds!r}"
                )
        if self.batch_size is not None:
            require_positive_int("TaskSpace.batch_size", self.batch_size)
        varied = [
            dict(zip(self.vary, values, strict=True)) for values in product(*self.vary.values())
        ]
        for corpus in self.corpora or (None,):  # every combination is a valid workload
            for spec in self.workloads:
                workload = with_overrides(
                    load_workload(spec), corpus=corpus, batch_size=self.batch_size
                )
                for settings in varied:
                    with_overrides(workload, **settings)

    def __hash__(self) -> int:  # `vary` is a dict (of tuples): hashed as its items
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(tuple(tuple(v.items()) if isinstance(v, dict) else v for v in values))

    @property
    def eval_every_choices(self) -> tuple[int, ...]:
        """The interval lengths a task may get."""
        return self.eval_every if isinstance(self.eval_every, tuple) else (self.eval_every,)

    def sample(self, rng: np.random.Generator) -> Task:
        """Draw one task. Always draws the same number of values, so seeding is stable."""
        corpus = self.corpora[rng.integers(len(self.corpora))] if self.corpora else None
        spec = self.workloads[rng.integers(len(self.workloads))]
        drawn_seed = int(rng.integers(SEED_RANGE))
        seed = drawn_seed if self.seeds is None else self.seeds[drawn_seed % len(self.seeds)]
        steps = self.total_steps[rng.integers(len(self.total_steps))]
        start_lr = log_uniform(rng, self.start_lr)
        eval_every = self.eval_every
        if isinstance(eval_every, tuple):
            eval_every = eval_every[rng.integers(len(eval_every))]
        workload = with_overrides(load_workload(spec), corpus=corpus, batch_size=self.batch_size)
        if self.vary:
            settings = {
                name: values[rng.integers(len(values))] for name, values in self.vary.items()
            }
            workload = with_overrides(workload, **settings)
        lr_scale = 1.0 if self.lr_scale == (1.0, 1.0) else log_uniform(rng, self.lr_scale)
        return Task(workload, int(seed), int(steps), int(eval_every), start_lr, lr_scale)


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One log-uniform draw over `bounds` (one value is drawn even when they are equal,
    so the draws after it stay the same; then the value is that bound)."""
    low, high = bounds
    value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(low) if low == high else value
