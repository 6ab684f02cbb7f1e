"""The metric a workload's users read: what `lrpilot compare` tunes the fixed schedules
by and ranks every method by.

- `loss`: the test loss (every family);
- `accuracy`: the test accuracy, for families whose runs measure one (text
  classification, where it is the default).

The metric is a scoring choice, not a setting of the runs: `run_settings` leaves it
out, so a workload's runs (and their cached results) are the same whichever it names.
"""

from __future__ import annotations

import dataclasses

from lrpilot.config import one_of, setting
from lrpilot.errors import ConfigError

METRICS = ("loss", "accuracy")


def metric_setting(default: str):
    """A workload family's `metric` field, defaulting to `default`."""
    return setting(
        default,
        help="what compare tunes and ranks by: loss (test loss, lower is better) or "
        "accuracy (test accuracy, higher is better; families that measure it)",
        check=one_of(METRICS),
    )


def require_loss_metric(workload, reason: str = "") -> None:
    """Refuse `accuracy` for a family ranked by loss only: its runs measure no test
    accuracy (or, `reason`, need not)."""
    if workload.metric != "loss":
        reason = reason or f"{workload.family} runs measure no test accuracy"
        raise ConfigError(f"metric {workload.metric!r}: {reason}; use metric = 'loss'")


def run_settings(workload) -> dict:
    """`family` and every setting of `workload` that its runs depend on: all but the
    metric (`Workload.to_dict()`)."""
    settings = {"family": workload.family, **dataclasses.asdict(workload)}
    del settings["metric"]
    return settings
