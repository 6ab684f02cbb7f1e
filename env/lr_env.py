"""`LRControlEnv`: one episode is one training run, one step is one evaluation interval.

    reset(seed)   -> sample a Task, make its TrainingRun, measure L_0, run the
                     rolled-back LR sweep if the rule has one (`sweep_fraction`), observe
    step(action)  -> lr <- clip(lr * factor(action)) (the first action's factor
                     may be wider: `first_action_max_factor`; the intervals of a
                     probe, `probe_intervals`, keep the start LR); train one interval at lr
                     (times the warmup and cooldown factors, with
                     `warmup_fraction` and `cooldown_fraction`);
                     observation, instant reward, terminated, truncated, info

The episode terminates when the step budget is spent, or early when the run
diverges (a non-finite loss, or L_t > divergence_factor * L_0), with the penalty of
`lrpilot.env.rewards`. Both are true ends of the MDP (progress t/T is in the
observation), so both set `terminated`; `truncated` is left to outside time limits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lrpilot.config import above, check_fields, non_negative, one_of, setting
from lrpilot.env.actions import ActionRule, applied_lr, next_lr
from lrpilot.env.features import (
    FEATURE_CLIP,
    FEATURE_SETS,
    FEATURE_VERSION,
    ObservationBuilder,
    check_history,
    check_masked_features,
    observation_size,
    reads_context,
    sweep_feature_values,
)
from lrpilot.env.rewards import REWARD_NAMES, interval_reward
from lrpilot.env.tasks import Task, TaskSpace
from lrpilot.errors import ConfigError
from lrpilot.lm.run import IntervalStats, TrainingRun
from lrpilot.lm.sweep import SweepResult, sweep_lrs
from lrpilot.lm.trace import DIVERGENCE_FACTOR
from lrpilot.settings import device_name


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines the environment; every field is also a keyword of the env."""

    task_space: TaskSpace = setting(TaskSpace(), help="the tasks each reset draws from")
    action: ActionRule = setting(ActionRule(), help="how actions set the LR")
    reward: str = setting(
        "log_improvement",
        help=f"the reward, one of: {', '.join(REWARD_NAMES)}",
        check=one_of(REWARD_NAMES),
    )
    divergence_factor: float = setting(
        DIVERGENCE_FACTOR,
        help="a validation loss above this multiple of L_0 is divergence",
        check=above(1),
    )
    divergence_penalty: float = setting(
        1.0, help="the reward lost when a run diverges", check=non_negative
    )
    feature_version: str = setting(
        FEATURE_VERSION,
        help=f"the observation's feature set, one of: {', '.join(FEATURE_SETS)}",
        check=one_of(tuple(FEATURE_SETS)),
    )
    masked_features: tuple[str, ...] = setting(
        (), help="features the controller sees as 0 (ablations)"
    )
    history: int = setting(1, help="evaluations per observation, newest first (a frame stack)")
    device: str = setting("cpu", help="cpu, cuda, cuda:N, or auto", check=device_name)

    def __post_init__(self) -> None:
        check_fields(self)
        masked = check_masked_features(self.masked_features, self.feature_version)
        object.__setattr__(self, "masked_features", masked)
        check_history(self.history)


class LRControlEnv(gym.Env):
    """Learning-rate control of a training run as a Gymnasium environment."""

    metadata: ClassVar[dict] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self, config: EnvConfig | None = None, *, render_mode: str | None = None, **overrides
    ) -> None:
        config = config or EnvConfig()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(EnvConfig)}
        if unknown:
            raise ConfigError(f"unknown environment setting(s): {', '.join(sorted(unknown))}")
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if render_mode not in (None, "ansi"):
            raise ConfigError(f"unknown render_mode {render_mode!r}; only 'ansi' is supported")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(
            -FEATURE_CLIP,
            FEATURE_CLIP,
            shape=(observation_size(self.config.history, self.config.feature_version),),
            dtype=np.float32,
        )
        self.action_space = self.config.action.action_space()
        self.feature_version = self.config.feature_version
        self.task: Task | None = None
        self.sweep: SweepResult | None = None  # the run's LR sweep at the controller's LRs
        self.first_interval = 0  # the first interval trained after the sweep
        self.run: TrainingRun | None = None
        self.last_stats: IntervalStats | None = None
        self._lines: list[str] = []

    # -- episode ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a new run. `options={"task": Task}` pins the task instead of sampling."""
        super().reset(seed=seed)
        task = (options or {}).get("task") or self.config.task_space.sample(self.np_random)
        if not isinstance(task, Task):
            raise ConfigError(f"options['task'] must be a Task, got {type(task).__name__}")
        rule = self.config.action
        sweep_steps = rule.sweep_steps(task.steps)  # checked before any work
        self.task = task
        self.run = task.make_run(self.config.device)
        self.initial_val_loss = self.run.evaluate()
        self.val_loss = self.initial_val_loss
        version = self.config.feature_version
        self.sweep = None
        if sweep_steps:
            # The sweep's LRs are the controller's; the run trains at `lr_scale` times them.
            lrs = sweep_lrs(sweep_steps, rule.lr_min, rule.lr_max)
            result = self.run.sweep([task.lr_scale * lr for lr in lrs])
            self.sweep = SweepResult(tuple(lrs), result.losses)
        # Evaluations stay where they are without a sweep: training starts in the
        # interval the sweep ended in.
        self.interval = self.first_interval = int(np.searchsorted(self._ends, sweep_steps, "right"))
        context = self.run.context() if reads_context(version) or rule.prior_lr else None
        self.lr = rule.start_lr(task.start_lr, context, task.steps)  # the prior's, if any
        self.features = ObservationBuilder(
            self.lr,
            self.initial_val_loss,
            task.steps,
            self.config.masked_features,
            history=self.config.history,
            version=version,
            context=context if reads_context(version) else None,
            sweep=sweep_feature_values(self.sweep, self.initial_val_loss),
        )
        self._lines = []
        self.last_stats = None
        return self.features.initial(), self._info(None, diverged=False)

    def step(self, action):
        if self.run is None or self.task is None:
            raise RuntimeError("call reset() before step()")
        if self.interval >= self.task.num_intervals:
            raise RuntimeError("the episode has ended; call reset()")
        steps = self._ends[self.interval] - self.run.step
        self.lr = next_lr(
            self.lr,
            action,
            interval=self.interval - self.first_interval,
            interval_steps=steps,
            total_steps=self.task.steps,
            rule=self.config.action,
        )
        stats = self.run.train(steps, self._step_lr)
        self.interval += 1
        last = self.interval == self.task.num_intervals
        reward, diverged = interval_reward(
            self.config.reward,
            previous_loss=self.val_loss,
            loss=stats.val_loss if not stats.nonfinite else math.nan,
            initial_loss=self.initial_val_loss,
            interval=self.interval,
            num_intervals=self.task.num_intervals,
            divergence_factor=self.config.divergence_factor,
            divergence_penalty=self.config.divergence_penalty,
        )
        self.val_loss = stats.val_loss
        self.last_stats = stats  # the full IntervalStats, for traces (info stays comparable)
        observation = self.features.update(stats, controller_lr=self.lr)
        terminated = last or diverged
        self._lines.append(self._render_line(stats, reward, diverged))
        if diverged:
            self.interval = self.task.num_intervals  # no more steps in this run
        return observation, float(reward), terminated, False, self._info(stats, diverged)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _ends(self) -> list[int]:
        """The step count at the end of each of the task's intervals."""
        assert self.task is not None
        return np.cumsum(self.task.intervals).tolist()

    def _step_lr(self, step: int) -> float:
        """The LR of step `step`: the controller's LR, warmed up at the start and cooled
        down near the end."""
        assert self.task is not None
        lr = applied_lr(self.lr, step, total_steps=self.task.steps, rule=self.config.action)
        return self.task.lr_scale * lr  # the hidden scale of a training task; 1 elsewhere

    def _info(self, stats: IntervalStats | None, diverged: bool) -> dict:
        assert self.run is not None and self.task is not None
        return {
            "lr": self.lr,
            "step": self.run.step,
            "interval": self.interval,
            "train_loss": stats.train_loss_mean if stats else math.nan,
            "val_loss": self.val_loss,
            "initial_val_loss": self.initial_val_loss,
            "tokens": self.run.tokens,
            "diverged": diverged,
            "task": self.task,
        }

    def _render_line(self, stats: IntervalStats, reward: float, diverged: bool) -> str:
        assert self.task is not None
        line = (
            f"step {stats.step:>5}/{self.task.steps}  lr {stats.lr:.3e}  "
            f"train {stats.train_loss_mean:.4f}  val {stats.val_loss:.4f}  reward {reward:+.4f}"
        )
        return line + ("  DIVERGED" if diverged else "")

    def render(self) -> str | None:
        """`ansi`: the line of the last interval (one readable line per interval)."""
        if self.render_mode != "ansi":
            return None
        return self._lines[-1] if self._lines else "reset: no interval trained yet"
