"""One LM training run under a fixed schedule, written to a run folder.

This is what `lrpilot run` does: it makes the corpus, the `Trainer` and the
schedule from a `RunConfig`, trains interval by interval, and after every interval
rewrites `trace.csv` atomically, so a crash loses at most the interval in flight.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.files import atomic_write_csv, atomic_write_json, ensure_writable_dir
from lrpilot.lm.corpus import load_corpus
from lrpilot.lm.model import model_preset
from lrpilot.lm.schedules import PLATEAU, SCHEDULE_NAMES, lr_function, make_schedule
from lrpilot.lm.trace import (
    DIVERGENCE_FACTOR,
    initial_row,
    interval_row,
    run_diverged,
    scored_final_loss,
)
from lrpilot.lm.trainer import IntervalStats, Trainer, TrainerConfig, interval_lengths


@dataclass(frozen=True)
class RunConfig:
    """A fixed-schedule training run; every field is a flag of `lrpilot run`."""

    schedule: str = "warmup_cosine"  # a name from lrpilot.lm.schedules.SCHEDULE_NAMES
    lr: float = 3e-3  # peak learning rate
    steps: int = 400  # optimizer steps in the run
    eval_every: int = 20  # steps per evaluation interval
    corpus: str = "pydoc"  # pydoc, pystdlib, or a file or folder path
    model: str = "tiny"  # model preset: tiny, small, base
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_NAMES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULE_NAMES)}"
            )
        model_preset(self.model)  # raises on an unknown preset
        if not (isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be positive, got {self.lr!r}")
        for name in ("steps", "eval_every", "batch_size"):
            require_positive_int(name, getattr(self, name))
        require_seed(self.seed)
        if self.eval_every > self.steps:
            raise ConfigError(
                f"eval_every ({self.eval_every}) must not exceed steps ({self.steps})"
            )

    def trainer_config(self) -> TrainerConfig:
        return TrainerConfig(
            model=model_preset(self.model),
            batch_size=self.batch_size,
            seed=self.seed,
            device=self.device,
        )


IntervalHook = Callable[[int, IntervalStats, list[dict]], bool]


def make_trainer(config: RunConfig) -> Trainer:
    """The Trainer of a run, its optimizer set to the run's (peak or start) LR."""
    corpus = load_corpus(config.corpus)
    trainer = Trainer(corpus, config.trainer_config())  # checks the corpus holds a block
    for group in trainer.optimizer.param_groups:
        group["lr"] = config.lr
    return trainer


def train_intervals(
    trainer: Trainer,
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
    columns to row 0. With `out_dir`, `trace.csv` is rewritten after every interval.
    """
    rows = [initial_row(trainer.evaluate(), lr_at(0)) | (first_row or {})]
    bar = tqdm(total=steps, unit="step", disable=not progress, desc=desc, leave=False)
    for interval, length in enumerate(interval_lengths(steps, eval_every), start=1):
        stats = trainer.run_interval(length, lr_at)
        rows.append(interval_row(interval, stats, rows[-1]))
        stop = on_interval(interval, stats, rows) if on_interval is not None else False
        if out_dir is not None:
            atomic_write_csv(out_dir / "trace.csv", pd.DataFrame(rows))
        bar.update(length)
        bar.set_postfix(val_loss=f"{stats.val_loss:.3f}", lr=f"{stats.lr:.2e}")
        if stop or stats.nonfinite:
            break  # diverged: the rest of the run would only skip steps
    bar.close()
    return pd.DataFrame(rows)


def run_schedule(
    config: RunConfig, out_dir: str | Path | None = None, progress: bool = True, **options
):
    """Train one run under a fixed schedule; return its trace as a DataFrame, writing the
    run folder if given. `options` go to the schedule (e.g. `warmup=0.2`)."""
    trainer = make_trainer(config)
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    if out is not None:
        atomic_write_json(out / "config.json", dataclasses.asdict(config))
    scheduler = make_schedule(config.schedule, trainer.optimizer, config.steps, **options)

    def step_plateau(_interval: int, stats: IntervalStats, _rows: list[dict]) -> bool:
        scheduler.step(stats.val_loss)
        return False

    start = time.perf_counter()
    trace = train_intervals(
        trainer,
        config.steps,
        config.eval_every,
        lr_function(scheduler, trainer.optimizer),
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
    """Final, scored and best validation loss, divergence (`lm.trace.run_diverged`), and
    throughput of a finished run."""
    last = trace.iloc[-1]
    losses, nonfinite = trace["val_loss"].tolist(), trace["nonfinite"].tolist()
    return {
        "final_val_loss": float(last["val_loss"]),
        "scored_final_val_loss": scored_final_loss(losses, nonfinite, divergence_factor),
        "best_val_loss": float(trace["val_loss"].min()),
        "diverged": run_diverged(losses, nonfinite, divergence_factor),
        "steps": int(last["step"]),
        "tokens": int(last["tokens"]),
        "seconds": seconds,
        "tokens_per_second": float(last["tokens"]) / seconds if seconds > 0 else math.nan,
        "torch_threads": torch.get_num_threads(),
    }
