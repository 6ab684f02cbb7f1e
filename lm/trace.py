"""The trace of a training run: one row per evaluation interval, one format everywhere.

Row 0 is the state before training (the initial validation loss); row `i` holds the
`IntervalStats` of interval `i`. `tokens` and `seconds` are cumulative over the run.
Replay and compare add their own columns (action, reward, method, ...) after these.
"""

from __future__ import annotations

import math

from lrpilot.lm.trainer import IntervalStats

TRACE_COLUMNS: tuple[str, ...] = (
    "interval",
    "step",
    "lr",
    "lr_mean",
    "train_loss",
    "train_loss_std",
    "train_loss_slope",
    "val_loss",
    "grad_norm",
    "update_ratio",
    "nonfinite",
    "tokens",
    "seconds",
)


def initial_row(val_loss: float, lr: float) -> dict:
    """Row 0: the validation loss before any training step."""
    return {
        "interval": 0,
        "step": 0,
        "lr": lr,
        "lr_mean": lr,
        "train_loss": math.nan,
        "train_loss_std": math.nan,
        "train_loss_slope": math.nan,
        "val_loss": val_loss,
        "grad_norm": math.nan,
        "update_ratio": math.nan,
        "nonfinite": not math.isfinite(val_loss),
        "tokens": 0,
        "seconds": 0.0,
    }


def interval_row(interval: int, stats: IntervalStats, previous: dict) -> dict:
    """Row `interval` from its stats, accumulating tokens and seconds from `previous`."""
    return {
        "interval": interval,
        "step": stats.step,
        "lr": stats.lr,
        "lr_mean": stats.lr_mean,
        "train_loss": stats.train_loss_mean,
        "train_loss_std": stats.train_loss_std,
        "train_loss_slope": stats.train_loss_slope,
        "val_loss": stats.val_loss,
        "grad_norm": stats.grad_norm,
        "update_ratio": stats.update_ratio,
        "nonfinite": stats.nonfinite,
        "tokens": previous["tokens"] + stats.tokens,
        "seconds": previous["seconds"] + stats.seconds,
    }


DIVERGENCE_FACTOR = 3.0  # a run whose validation loss exceeds this multiple of L_0 diverged


def run_diverged(val_losses: list[float], nonfinite: list[bool], factor: float) -> bool:
    """True when any interval was non-finite or its loss passed `factor` times L_0."""
    cap = factor * val_losses[0]
    return any(nonfinite) or any(not (loss <= cap) for loss in val_losses)


def scored_final_loss(
    val_losses: list[float], nonfinite: list[bool], factor: float = DIVERGENCE_FACTOR
) -> float:
    """The final validation loss of a run, a diverged run scoring the cap `factor * L_0`.

    One number per run that every comparison uses: a diverged run is worse than any
    run that stayed below the cap, and a mean over seeds stays finite.
    """
    if run_diverged(val_losses, nonfinite, factor):
        return factor * val_losses[0]
    return float(val_losses[-1])
