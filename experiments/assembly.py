"""A finished comparison's tables: the long results table, one row per run, and the
notes of its summary."""

from __future__ import annotations

import math

import pandas as pd

from lrpilot.experiments.compare_config import CompareConfig
from lrpilot.experiments.replay import REPLAY_COLUMNS
from lrpilot.experiments.run_cache import RunCache, RunSpec
from lrpilot.experiments.scoring import run_scores
from lrpilot.lm.schedules import default_warmup
from lrpilot.lm.trace import DIVERGENCE_FACTOR, run_diverged


def assemble(cache: RunCache, phases: list[tuple[str, RunSpec]], metric: str):
    """The long results table (run x interval) and the one-row-per-run table, scored by
    `metric` (`lrpilot.experiments.scoring.run_scores`)."""
    frames, runs = [], []
    for phase, spec in phases:
        trace = cache.trace(spec)
        warmup = math.nan if spec.warmup is None else spec.warmup
        about = {
            "label": spec.label,
            "kind": spec.kind,
            "method": spec.method,
            "phase": phase,
            "seed": spec.seed,
            "peak_or_start_lr": spec.lr,
            "warmup": warmup,
            "run": spec.key,
        }
        frames.append(trace.assign(**about)[[*about, *REPLAY_COLUMNS]])
        runs.append(
            {
                "label": spec.label,
                "kind": spec.kind,
                "method": spec.method,
                "phase": phase,
                "seed": spec.seed,
                "lr": spec.lr,
                "warmup": warmup,
                **run_scores(trace, metric),
                "curve_steps": trace["step"].tolist(),
                "curve_val": trace["val_loss"].tolist(),
                "steps": int(trace["step"].iloc[-1]),
                "diverged": run_diverged(
                    trace["val_loss"].tolist(), trace["nonfinite"].tolist(), DIVERGENCE_FACTOR
                ),
            }
        )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(runs)


def notes(
    config: CompareConfig,
    grids: dict[str, list[float]],
    best: dict[str, tuple[float, float | None]],
    metric: str,
) -> list[str]:
    grid = ", ".join(f"{lr:.3g}" for lr in config.protocol.grid())
    notes = [
        f"Schedules tuned over peak LRs {grid} on tuning seed(s) "
        f"{', '.join(map(str, config.protocol.tune_seeds))}; evaluated on held-out seed(s) "
        f"{', '.join(map(str, config.protocol.eval_seeds))}.",
    ]
    tuned = [name for name in config.protocol.schedules if default_warmup(name) is not None]
    if config.protocol.warmups and tuned:
        warmups = ", ".join(f"{w:.3g}" for w in config.protocol.warmups)
        notes.append(
            f"{', '.join(tuned)}: tuned over warmups {warmups} of the run too (every pair)."
        )
    notes += [
        "Policy and controllers start from the given LR, untuned, with no tuning runs.",
        *(
            [
                f"Tuning-free: {', '.join(config.protocol.tuning_free)}, once per evaluation seed "
                "at "
                "their recommended settings (Prodigy lr=1 with a cosine decay; schedule-free "
                "AdamW lr=0.0025 with a 5% warmup), no tuning runs."
            ]
            if config.protocol.tuning_free
            else []
        ),
        *score_notes(metric),
    ]
    for name, grid in grids.items():
        if len(grid) > config.protocol.lr_grid:
            edge = "still on the widened edge" if best[name][0] in (grid[0], grid[-1]) else "inside"
            notes.append(
                f"{name}: grid widened to {grid[0]:.3g}..{grid[-1]:.3g}; best peak {edge}."
            )
    return notes


def score_notes(metric: str) -> list[str]:
    """What a comparison ranked by `metric` scores, as its summary's notes say."""
    if metric == "loss":
        return [
            "Score: the test loss after the last step, on the workload's test split (which no "
            "controller observes; schedules are tuned by it on the tuning seeds); a diverged "
            f"run scores {DIVERGENCE_FACTOR:g} x its initial validation loss. The validation "
            "loss is the controller's observation, shown beside it."
        ]
    return [
        "Score: the test accuracy after the last step, on the workload's test split (which "
        "no controller observes; schedules are tuned by it on the tuning seeds); a diverged "
        f"run (validation loss above {DIVERGENCE_FACTOR:g} x its initial one) scores accuracy "
        "0. The test loss is shown beside it, and the validation loss, the controller's "
        "observation.",
        "Ranked by the test error, 1 - accuracy, so that lower is better as for a loss: "
        "÷ best tuned is (1 - accuracy) / (1 - the best tuned schedule's), ≤ 1.00 ties or "
        "beats it; the paired difference and wins are of the test error too.",
        "Steps to target: — (the runs observe no validation accuracy to reach a target on).",
    ]
