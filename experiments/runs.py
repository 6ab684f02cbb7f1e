"""One training run under a fixed schedule, written to a run folder.

This is what `lrpilot run` does: it makes the task's `TrainingRun` and the schedule
from a `RunConfig`, trains interval by interval, and after every interval rewrites
`trace.csv` atomically, so a crash loses at most the interval in flight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError
from lrpilot.experiments.folders import claim_folder
from lrpilot.files import atomic_write_csv, atomic_write_json, ensure_writable_dir
from lrpilot.lm.byte_gpt import resolve_device
from lrpilot.lm.run import IntervalStats, TrainingRun, interval_lengths
from lrpilot.lm.schedules import PLATEAU, SCHEDULE_NAMES, lr_function, make_schedule
from lrpilot.lm.trace import (
    DIVERGENCE_FACTOR,
    initial_row,
    interval_row,
    run_diverged,
    trace_scores,
    with_test_result,
)


@dataclass(frozen=True)
class RunConfig:
    """A fixed-schedule training run: what `lrpilot run` trains."""

    schedule: str  # a name from lrpilot.lm.schedules.SCHEDULE_NAMES
    task: Task  # the workload, seed and budget; its start LR is the schedule's peak
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_NAMES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULE_NAMES)}"
            )
        if not isinstance(self.task, Task):
            raise ConfigError(f"RunConfig.task must be a Task, got {self.task!r}")

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "task": self.task.to_dict(), "device": self.device}


IntervalHook = Callable[[int, IntervalStats, list[dict]], bool]


def train_intervals(
    run: TrainingRun,
    steps: int,
    eval_every: int,
    lr_at: Callable[[int], float],
    *,
    on_interval: IntervalHook | None = None,
    first_row: dict | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    desc: str = "run",
) -> pd.DataFrame:
    """Train a run interval by interval at `lr_at(step)` and return its trace.

    `on_interval(interval, stats, rows)` runs after each interval: it may add columns
    to the new row `rows[-1]` and returns True to end the run early. `first_row` adds
    columns to row 0. The test loss is measured once, at the end (`lm.trace`). With
    `out_dir`, `trace.csv` is rewritten after every interval.
    """
    rows = [initial_row(run.evaluate(), lr_at(0)) | (first_row or {})]
    bar = tqdm(total=steps, unit="step", disable=not progress, desc=desc, leave=False)
    for interval, length in enumerate(interval_lengths(steps, eval_every), start=1):
        stats = run.train(length, lr_at)
        rows.append(interval_row(interval, stats, rows[-1]))
        stop = on_interval(interval, stats, rows) if on_interval is not None else False
        if out_dir is not None:
            atomic_write_csv(out_dir / "trace.csv", pd.DataFrame(rows))
        bar.update(length)
        bar.set_postfix(val_loss=f"{stats.val_loss:.3f}", lr=f"{stats.lr:.2e}")
        if stop or stats.nonfinite:
            break  # diverged: the rest of the run would only skip steps
    bar.close()
    rows[-1] = with_test_result(rows[-1], run.test())
    if out_dir is not None:
        atomic_write_csv(out_dir / "trace.csv", pd.DataFrame(rows))
    return pd.DataFrame(rows)


def run_schedule(
    config: RunConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    **options,
):
    """Train one run under a fixed schedule; return its trace as a DataFrame, writing the
    run folder if given (a folder that holds another experiment is refused unless
    `force`). `options` go to the schedule (e.g. `warmup=0.2`)."""
    task = config.task
    run = task.make_run(config.device)
    run.set_lr(task.start_lr)  # the schedule's peak: its LR at the optimizer's creation
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    if out is not None:
        record = config.to_dict() | {"device": resolve_device(config.device).type}
        record |= {"data_sha256": task.workload.digest(), "options": options}
        claim_folder(out, "run", record, force)
    scheduler = make_schedule(config.schedule, run.optimizer, task.steps, **options)

    def step_plateau(_interval: int, stats: IntervalStats, _rows: list[dict]) -> bool:
        scheduler.step(stats.val_loss)
        return False

    start = time.perf_counter()
    trace = train_intervals(
        run,
        task.steps,
        task.eval_every,
        lr_function(scheduler, run.optimizer),
        on_interval=step_plateau if config.schedule == PLATEAU else None,
        out_dir=out,
        progress=progress,
        desc=config.schedule,
    )
    if out is not None:
        atomic_write_json(out / "summary.json", run_summary(trace, time.perf_counter() - start))
    return trace


def run_summary(
    trace: pd.DataFrame, seconds: float, divergence_factor: float = DIVERGENCE_FACTOR
) -> dict:
    """Final, scored and best validation loss, the test loss (and accuracy) and its
    score, divergence (`lm.trace.run_diverged`), and throughput of a finished run."""
    last = trace.iloc[-1]
    losses, nonfinite = trace["val_loss"].tolist(), trace["nonfinite"].tolist()
    val_score, test_score = trace_scores(trace, divergence_factor)
    return {
        "final_val_loss": float(last["val_loss"]),
        "scored_final_val_loss": val_score,
        "test_loss": float(last["test_loss"]),
        "test_accuracy": float(last["test_accuracy"]),
        "scored_test_loss": test_score,
        "best_val_loss": float(trace["val_loss"].min()),
        "diverged": run_diverged(losses, nonfinite, divergence_factor),
        "steps": int(last["step"]),
        "tokens": int(last["tokens"]),
        "seconds": seconds,
        "tokens_per_second": float(last["tokens"]) / seconds if seconds > 0 else math.nan,
        "torch_threads": torch.get_num_threads(),
    }
