"""The score a comparison ranks runs by, from its workload's metric (`lrpilot.lm.metric`).

One number per run, lower is better, for both metrics:

- `loss`: the scored test loss (`lrpilot.lm.trace.scored_test_loss`);
- `accuracy`: the test error, 1 - the scored test accuracy (a diverged run scores
  accuracy 0, `lrpilot.lm.trace.scored_test_accuracy`).

Means, ratios to the best tuned schedule, paired differences and wins are all of this
score, so "lower is better" and "a ratio <= 1.00 ties or beats it" read the same in every
table; for accuracy a ratio is of error rates, (1 - acc) / (1 - acc_best).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lrpilot.lm.trace import trace_accuracy, trace_scores

# what ranks, as the tables name it
RANKED_BY = {"loss": "test loss", "accuracy": "test accuracy"}
# the score's name (what means, ratios and differences are of)
SCORE_NAMES = {"loss": "test loss", "accuracy": "test error (1 - accuracy)"}


def score(test_loss: float, accuracy: float, metric: str) -> float:
    """The score of a run's test loss and test accuracy under `metric`."""
    return test_loss if metric == "loss" else 1.0 - accuracy


def run_scores(trace, metric: str) -> dict[str, float]:
    """A finished run's numbers: `score` (what ranks, lower is better), `test_loss` and
    `accuracy` (scored), and `val_score` (the scored final validation loss)."""
    val_score, test_loss = trace_scores(trace)
    accuracy = trace_accuracy(trace)
    return {
        "score": score(test_loss, accuracy, metric),
        "test_loss": test_loss,
        "accuracy": accuracy,
        "val_score": val_score,
    }


def score_ratio(value: float, reference: float) -> float:
    """`value / reference` of two mean scores; 1 where both are 0 (two perfect
    accuracies tie) and inf where only the reference is (NaN: a missing score)."""
    if reference == 0:
        return 1.0 if value == 0 else math.inf if value > 0 else math.nan
    return float(value / reference)


def score_name(metrics: Iterable[str]) -> str:
    """The name of the scores of a set of workloads (`metrics`, one per workload)."""
    names = sorted({SCORE_NAMES[metric] for metric in metrics})
    return " or ".join(names) if names else SCORE_NAMES["loss"]
