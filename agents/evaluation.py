"""Evaluation of a controller on fixed tasks, and the rule that picks the best checkpoint."""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
import pandas as pd

from lrpilot.agents.controllers import Controller
from lrpilot.agents.rollout import EpisodeResult, run_episode
from lrpilot.agents.train_config import SELECTION_COLUMNS, start_lr_column
from lrpilot.env.tasks import Task
from lrpilot.lm.trace import scored_final_loss


def evaluate_controller(
    controller: Controller, tasks: list[Task], env: gymnasium.Env
) -> dict[str, Any]:
    """Final validation losses of `controller` over `tasks` (a diverged run counts at the
    divergence cap): the mean, the mean per start LR (`start_lr_column(lr)`) and the
    worst of those, how many runs diverged, and the mean return."""
    factor = env.get_wrapper_attr("config").divergence_factor  # through any wrappers
    results: list[EpisodeResult] = [run_episode(env, controller, task) for task in tasks]
    finals = pd.Series(
        [
            scored_final_loss(
                [row["val_loss"] for row in r.rows], [row["nonfinite"] for row in r.rows], factor
            )
            for r in results
        ]
    )
    by_start_lr = finals.groupby([task.start_lr for task in tasks], sort=False).mean()
    return {
        "mean_final_val_loss": float(finals.mean()),
        "worst_start_lr_final_val_loss": float(by_start_lr.max()),
        "diverged": sum(r.diverged for r in results),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        **{start_lr_column(lr): float(v) for lr, v in by_start_lr.items()},
    }


def is_new_best(result: dict[str, Any], earlier: list[dict[str, Any]], select: str) -> bool:
    """Whether evaluation `result` beats every `earlier` one by the rule `select`.

    An earlier evaluation without the rule's column (written before it existed) or with
    NaN there does not compete.
    """
    column = SELECTION_COLUMNS[select]
    scores = [e.get(column, math.nan) for e in earlier]
    return result[column] < min((v for v in scores if not math.isnan(v)), default=math.inf)
