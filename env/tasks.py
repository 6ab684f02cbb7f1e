"""Tasks: what one episode's training run is, and the distribution each reset draws from."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import product
from typing import Any

import numpy as np

from lrpilot.config import (
    all_of,
    check_fields,
    checked,
    each,
    non_empty,
    positive,
    setting,
    valid_seed,
)
from lrpilot.errors import ConfigError
from lrpilot.lm.run import TrainingRun, interval_lengths
from lrpilot.lm.workloads import Workload, load_workload
from lrpilot.settings import RunSettings

SEED_RANGE = 2**31 - 1


def positive_or_each(value: int | tuple[int, ...]) -> str | None:
    """One positive length, or a non-empty list of them."""
    values = value if isinstance(value, tuple) else (value,)
    return all_of(non_empty, each(positive))(values)


def low_at_most_high(value: tuple[float, float]) -> str | None:
    return None if 0 < value[0] <= value[1] else "must be a range LOW,HIGH with 0 < LOW <= HIGH"


@dataclass(frozen=True)
class Task:
    """One concrete training run: a workload, its seed, budget and start LR.

    `lr_scale`: the run trains at `lr_scale` times the LR the controller sets, and the
    controller is not told (1 outside training). A task space that draws it makes a
    memorised LR worthless: only the run's feedback says where the LR should go.
    """

    workload: Workload = setting(help="the workload (`lrpilot.lm.workloads`)")
    seed: int = setting(help="seed of the weights and the batches", check=valid_seed)
    steps: int = setting(help="the step budget", check=positive)
    eval_every: int = setting(help="steps per evaluation interval", check=positive)
    start_lr: float = setting(help="the start LR (a schedule's peak)", check=positive)
    lr_scale: float = setting(1.0, help="hidden factor on every LR", check=positive)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.eval_every > self.steps:
            raise ConfigError(
                f"eval_every ({self.eval_every}) must not exceed the step budget ({self.steps})"
            )

    @property
    def intervals(self) -> list[int]:
        """Steps of each evaluation interval; the last one takes the remainder."""
        return interval_lengths(self.steps, self.eval_every)

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
            "steps": self.steps,
            "eval_every": self.eval_every,
            "start_lr": self.start_lr,
            "lr_scale": self.lr_scale,
        }


@dataclass(frozen=True)
class TaskSpace:
    """The distribution of tasks that `reset` samples from.

    Each tuple is a set to choose from uniformly; `start_lr` is a log-uniform range
    (pin it with equal ends); `seeds=None` draws a fresh seed at every reset.
    `workloads` are workload specs (built-in names, TOML files, `FILE.py:FUNCTION`);
    `corpora` and `batch_size`, when given, replace the drawn workload's own; a
    workload without a corpus (the text classifier) keeps its data. `eval_every` is one
    interval length, or a tuple to choose from (drawn last, so a space with one length
    draws the same tasks); `num_intervals` replaces it with a number of intervals per
    task, so that budgets of 200 and 3,000 steps are both evaluated about as often:
    every `steps // num_intervals` steps (a remainder makes one more, shorter, interval).

    Two draws for a wide distribution come after all others, and only when given, so
    a space without them draws the same tasks as a space that cannot have them:

    - `vary`: workload settings and the values each is drawn from, uniformly, e.g.
      `{"n_embd": (32, 64, 128), "n_layer": (1, 2)}` (in the order of the names, sorted);
    - `lr_scale`: a log-uniform range of the hidden LR scale (`Task.lr_scale`).

    `max_cost` bounds a wide space's tasks: a task whose parameters x input bytes per
    step x steps (`step_cost()` of its workload x its budget) exceed it is drawn again,
    so widths, depths, batches and budgets can each range widely without drawing runs
    of hours.
    """

    workloads: tuple[str, ...] = setting(
        ("tiny",), help="workload specs to draw from", check=non_empty
    )
    corpora: tuple[str, ...] | None = setting(
        None,
        help="corpora to draw from, replacing the own of each workload that has one",
        check=non_empty,
    )
    seeds: tuple[int, ...] | None = setting(
        None,
        help="seeds to draw from (none: a fresh seed at every reset)",
        check=all_of(non_empty, each(valid_seed)),
    )
    steps: tuple[int, ...] = setting(
        (400,), help="step budgets to draw from", check=all_of(non_empty, each(positive))
    )
    eval_every: int | tuple[int, ...] = setting(
        20, help="steps per interval, or lengths to draw from", check=positive_or_each
    )
    num_intervals: int | None = setting(
        None,
        help="evaluation intervals per task, replacing eval_every: every steps // num_intervals",
        check=positive,
    )
    start_lr: tuple[float, float] = setting(
        (1e-4, 1e-2), help="log-uniform range of the start LR", check=low_at_most_high
    )
    batch_size: int | None = setting(
        None, help="batch size replacing each workload's own", check=positive
    )
    vary: dict[str, tuple] = setting(
        {}, help="workload settings and the values each is drawn from, uniformly"
    )
    lr_scale: tuple[float, float] = setting(
        (1.0, 1.0), help="log-uniform range of the hidden LR scale", check=low_at_most_high
    )
    max_cost: float | None = setting(
        None,
        help="the most a task may cost, in parameters x input bytes per step x steps "
        "(a drawn task above it is drawn again); none: no bound",
        check=positive,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        vary = {}
        if any(not isinstance(name, str) for name in self.vary):
            raise ConfigError(f"vary must name workload settings, got {list(self.vary)!r}")
        for name in sorted(self.vary):
            vary[name] = checked(tuple[Any, ...], self.vary[name], f"vary.{name}", non_empty)
        object.__setattr__(self, "vary", vary)
        for name in ("steps", "eval_every"):
            if name in vary:
                raise ConfigError(f"vary.{name}: the space's own {name} sets it")
        if "batch_size" in vary and self.batch_size is not None:
            raise ConfigError("vary.batch_size and batch_size: give one")
        if "corpus" in vary and self.corpora is not None:
            raise ConfigError("vary.corpus and corpora: give one")
        if self.num_intervals is not None:
            if self.eval_every != TaskSpace.eval_every:
                raise ConfigError(
                    f"eval_every ({self.eval_every}) and num_intervals ({self.num_intervals}): "
                    "give one"
                )
            if self.num_intervals > min(self.steps):
                raise ConfigError(
                    f"num_intervals ({self.num_intervals}) is more than the shortest step budget "
                    f"({min(self.steps)})"
                )
        for eval_every in () if self.num_intervals else self.eval_every_choices:
            if eval_every > min(self.steps):
                raise ConfigError(
                    f"eval_every ({eval_every}) is larger than the step budget ({min(self.steps)})"
                )
        # the workloads a drawn corpus replaces the corpus of (read once, not every draw)
        with_corpus = frozenset(spec for spec in self.workloads if takes_corpus(spec))
        object.__setattr__(self, "_with_corpus", with_corpus)
        if self.corpora is not None and not with_corpus:
            raise ConfigError(
                f"corpora {list(self.corpora)}: none of the workloads {list(self.workloads)} "
                "has a corpus"
            )
        varied = [
            dict(zip(self.vary, values, strict=True)) for values in product(*self.vary.values())
        ]
        cheapest = math.inf
        for corpus in self.corpora or (None,):  # every combination is a valid workload
            for spec in self.workloads:
                own = corpus if spec in with_corpus else None
                run = RunSettings(spec, corpus=own, batch_size=self.batch_size)
                for settings in varied:
                    workload = run.load_workload(**settings)
                    if self.max_cost is not None:
                        cheapest = min(cheapest, step_cost(workload) * min(self.steps))
        if self.max_cost is not None and cheapest > self.max_cost:
            raise ConfigError(
                f"max_cost ({self.max_cost:.3g}) is below the cheapest task of the space "
                f"({cheapest:.3g} parameters x input bytes per step x steps)"
            )

    def __hash__(self) -> int:  # `vary` is a dict (of tuples): hashed as its items
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(tuple(tuple(v.items()) if isinstance(v, dict) else v for v in values))

    @property
    def eval_every_choices(self) -> tuple[int, ...]:
        """The interval lengths a task may get."""
        return self.eval_every if isinstance(self.eval_every, tuple) else (self.eval_every,)

    def sample(self, rng: np.random.Generator) -> Task:
        """Draw one task: with `max_cost`, the first drawn at or under it."""
        while True:
            task = self._draw(rng)
            if self.max_cost is None or step_cost(task.workload) * task.steps <= self.max_cost:
                return task

    def _draw(self, rng: np.random.Generator) -> Task:
        """Draw one task. Always draws the same number of values, so seeding is stable."""
        corpus = self.corpora[rng.integers(len(self.corpora))] if self.corpora else None
        spec = self.workloads[rng.integers(len(self.workloads))]
        drawn_seed = int(rng.integers(SEED_RANGE))
        seed = drawn_seed if self.seeds is None else self.seeds[drawn_seed % len(self.seeds)]
        steps = self.steps[rng.integers(len(self.steps))]
        start_lr = log_uniform(rng, self.start_lr)
        eval_every = self.eval_every
        if isinstance(eval_every, tuple):
            eval_every = eval_every[rng.integers(len(eval_every))]
        if self.num_intervals is not None:
            eval_every = steps // self.num_intervals
        varied = {name: values[rng.integers(len(values))] for name, values in self.vary.items()}
        lr_scale = 1.0 if self.lr_scale == (1.0, 1.0) else log_uniform(rng, self.lr_scale)
        run = RunSettings(
            spec,
            corpus=corpus if spec in self._with_corpus else None,
            batch_size=self.batch_size,
            steps=int(steps),
            eval_every=int(eval_every),
        )
        return run.task(int(seed), start_lr, lr_scale=lr_scale, **varied)


def takes_corpus(spec: str) -> bool:
    """Whether the workload `spec` names has a corpus (a `TaskSpace`'s `corpora` replace it)."""
    return "corpus" in {f.name for f in fields(load_workload(spec))}


def step_cost(workload: Workload) -> int:
    """A workload's `step_cost()` (parameters x input bytes of one step), or a one-line
    `ConfigError` for a workload that cannot say it (a user's `FILE.py:FUNCTION`)."""
    cost = getattr(workload, "step_cost", None)
    if cost is None:
        raise ConfigError(
            f"max_cost needs each workload's cost per step; {workload.name!r} "
            f"({type(workload).__name__}) has none"
        )
    return cost()


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One log-uniform draw over `bounds` (one value is drawn even when they are equal,
    so the draws after it stay the same; then the value is that bound)."""
    low, high = bounds
    value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(low) if low == high else value
