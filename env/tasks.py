"""Tasks: what one episode's LM training run is, and the distribution each reset draws from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.lm.model import model_preset
from lrpilot.lm.trainer import TrainerConfig, interval_lengths

SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class Task:
    """One concrete LM training run: what `reset` sets up."""

    corpus: str
    model: str
    seed: int
    total_steps: int
    eval_every: int
    start_lr: float
    batch_size: int = 64

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

    def __post_init__(self) -> None:
        require_seed(self.seed, "Task.seed")

    def to_dict(self) -> dict:
        return asdict(self)

    def trainer_config(self, device: str = "cpu") -> TrainerConfig:
        """The `Trainer` settings of this run."""
        return TrainerConfig(
            model=model_preset(self.model),
            batch_size=self.batch_size,
            seed=self.seed,
            device=device,
        )


@dataclass(frozen=True)
class TaskSpace:
    """The distribution of tasks that `reset` samples from.

    Each tuple is a set to choose from uniformly; `start_lr` is a log-uniform range
    (pin it with equal ends); `seeds=None` draws a fresh LM seed at every reset.
    `eval_every` is one interval length, or a tuple to choose from: a run of the same
    budget then shows the controller finer or coarser decisions (a tuple draws one more
    value, after the others, so a space with one int draws what it always drew).
    """

    corpora: tuple[str, ...] = ("pydoc",)
    models: tuple[str, ...] = ("tiny",)
    seeds: tuple[int, ...] | None = None
    total_steps: tuple[int, ...] = (400,)
    eval_every: int | tuple[int, ...] = 20
    start_lr: tuple[float, float] = (1e-4, 1e-2)
    batch_size: int = 64

    def __post_init__(self) -> None:
        # Accept lists (from TOML or keyword arguments) but store tuples, so a
        # TaskSpace stays hashable and immutable.
        for name in ("corpora", "models", "total_steps", "start_lr"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.corpora:
            raise ConfigError("TaskSpace.corpora is empty: give at least one corpus")
        if not self.models:
            raise ConfigError("TaskSpace.models is empty: give at least one model preset")
        for model in self.models:
            model_preset(model)
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
        low, high = self.start_lr if len(self.start_lr) == 2 else (math.nan, math.nan)
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(
                f"TaskSpace.start_lr must be a range (low, high) with 0 < low <= high, "
                f"got {self.start_lr!r}"
            )
        require_positive_int("TaskSpace.batch_size", self.batch_size)

    @property
    def eval_every_choices(self) -> tuple[int, ...]:
        """The interval lengths a task may get."""
        return self.eval_every if isinstance(self.eval_every, tuple) else (self.eval_every,)

    @classmethod
    def fixed(cls, task: Task) -> TaskSpace:
        """The space holding exactly one task: how evaluation runs are made."""
        return cls(
            corpora=(task.corpus,),
            models=(task.model,),
            seeds=(task.seed,),
            total_steps=(task.total_steps,),
            eval_every=task.eval_every,
            start_lr=(task.start_lr, task.start_lr),
            batch_size=task.batch_size,
        )

    def sample(self, rng: np.random.Generator) -> Task:
        """Draw one task. Always draws the same number of values, so seeding is stable."""
        corpus = self.corpora[rng.integers(len(self.corpora))]
        model = self.models[rng.integers(len(self.models))]
        drawn_seed = int(rng.integers(SEED_RANGE))
        seed = drawn_seed if self.seeds is None else self.seeds[drawn_seed % len(self.seeds)]
        steps = self.total_steps[rng.integers(len(self.total_steps))]
        low, high = self.start_lr
        start_lr = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if low == high:
            start_lr = float(low)
        eval_every = self.eval_every
        if isinstance(eval_every, tuple):
            eval_every = eval_every[rng.integers(len(eval_every))]
        return Task(
            corpus=corpus,
            model=model,
            seed=int(seed),
            total_steps=int(steps),
            eval_every=int(eval_every),
            start_lr=start_lr,
            batch_size=self.batch_size,
        )
