"""Run one episode of `LRControlEnv` under any controller and record its trace."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np

from lrpilot.agents.controllers import Controller
from lrpilot.env.tasks import Task
from lrpilot.lm.trace import initial_row, interval_row, with_test_result


@dataclass
class EpisodeResult:
    task: Task
    rows: list[dict]  # the trace format of lrpilot.lm.trace, plus `action` and `reward`
    episode_return: float
    final_val_loss: float
    diverged: bool


def _action_value(action) -> float:
    return float(np.asarray(action, dtype=np.float64).reshape(-1)[0])


def run_episode(
    env: gymnasium.Env,
    controller: Controller,
    task: Task,
    on_row: Callable[[list[dict]], None] | None = None,
    test: bool = False,
) -> EpisodeResult:
    """Drive one run of `task` with `controller`, closed loop, to its end.

    `env` is an `LRControlEnv`, or one inside wrappers (`gymnasium.make`'s among them):
    each interval's full statistics are read from the env itself (`env.unwrapped`).
    `on_row(rows)` is called after each interval (to save or show progress). With
    `test`, the run's test loss is measured at the end and stands in the last row.
    """
    observation, info = env.reset(seed=task.seed, options={"task": task})
    start_lr = task.lr_scale * info["lr"]  # the LR the run trains at, as in later rows
    rows = [initial_row(info["val_loss"], start_lr) | {"action": math.nan, "reward": 0.0}]
    total = 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        action = controller.act(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        total += reward
        row = interval_row(info["interval"], env.unwrapped.last_stats, rows[-1])
        rows.append(row | {"action": _action_value(action), "reward": reward})
        if on_row is not None:
            on_row(rows)
    if test:
        rows[-1] = with_test_result(rows[-1], env.unwrapped.run.test())
        if on_row is not None:
            on_row(rows)
    final = info["val_loss"] if not info["diverged"] else math.inf
    return EpisodeResult(task, rows, total, final, info["diverged"])
