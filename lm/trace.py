"""The trace of a training run: one row per evaluation interval, one format everywhere.

Row 0 is the state before training (the initial validation loss); row `i` holds the
`IntervalStats` of interval `i`. `tokens` and `seconds` are cumulative over the run.
`test_loss` and `test_accuracy` (classification only) are measured once, after the
last interval, and stand in the last row (NaN elsewhere). Replay and compare add their
own columns (action, reward, method, ...) after these.
"""

from __future__ import annotations

import math

from lrpilot.lm.run import IntervalStats, TestResult

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
    "test_loss",
    "test_accuracy",
)

NOT_MEASURED = {"test_loss": math.nan, "test_accuracy": math.nan}


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
    } | NOT_MEASURED


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
    } | NOT_MEASURED


def with_test_result(row: dict, result: TestResult) -> dict:
    """The last row of a run with its test loss and accuracy."""
    return row | {"test_loss": result.loss, "test_accuracy": result.accuracy}


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


def scored_test_loss(
    val_losses: list[float],
    nonfinite: list[bool],
    test_loss: float,
    factor: float = DIVERGENCE_FACTOR,
) -> float:
    """The score of a run: its test loss, a diverged run (or one whose test loss is not
    finite) scoring the cap `factor * L_0` of `scored_final_loss`."""
    if run_diverged(val_losses, nonfinite, factor) or not math.isfinite(test_loss):
        return factor * val_losses[0]
    return float(test_loss)


def scored_test_accuracy(
    val_losses: list[float],
    nonfinite: list[bool],
    test_accuracy: float,
    factor: float = DIVERGENCE_FACTOR,
) -> float:
    """A run's test accuracy, a diverged run scoring 0 (the worst, as the cap is for the
    loss); NaN where none was measured (a language model)."""
    if math.isnan(test_accuracy):
        return math.nan
    if run_diverged(val_losses, nonfinite, factor):
        return 0.0
    return float(test_accuracy)


def trace_accuracy(trace, factor: float = DIVERGENCE_FACTOR) -> float:
    """The scored test accuracy of a finished run's trace (`scored_test_accuracy`)."""
    val_losses, nonfinite = trace["val_loss"].tolist(), trace["nonfinite"].tolist()
    return scored_test_accuracy(
        val_losses, nonfinite, float(trace["test_accuracy"].iloc[-1]), factor
    )


def trace_scores(trace, factor: float = DIVERGENCE_FACTOR) -> tuple[float, float]:
    """(scored final validation loss, scored test loss) of a finished run's trace."""
    val_losses, nonfinite = trace["val_loss"].tolist(), trace["nonfinite"].tolist()
    test_loss = float(trace["test_loss"].iloc[-1])
    return (
        scored_final_loss(val_losses, nonfinite, factor),
        scored_test_loss(val_losses, nonfinite, test_loss, factor),
    )
