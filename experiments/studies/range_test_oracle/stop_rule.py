"""Fixing the range test's stop rule on the validation suite, from the oracle's runs.

`RangeStopController` rises while each interval's log-improvement of the validation
loss is at least `stop_fraction` of the best so far, then backs off by `backoff` once
and holds. Until it stops, its run is the oracle's run that rises longest (the same
seed, the same LRs, so the same numbers on the CPU): after the interval `j` (counted
from the first trained interval, the range test's start) whose gain falls short, it
backs off, which is the oracle's script `stop = j - 1` with that back-off. So every
(stop_fraction, backoff) of the grid is scored from `oracle.csv` without a run of its
own, wherever its stop lies inside the oracle's stops.

Selection rule, fixed before the figures were seen: the setting with the lowest median
over the suite's workloads of (its mean score / the best tuned schedule's), ties broken
by the lowest worst ratio. The score is the workload's test loss, or its test error
rate (1 - accuracy) where the workload ranks by accuracy (its `metric`, read from the
suite's `summary.csv`, whose `mean` is that score).

    python experiments/studies/range_test_oracle/stop_rule.py \
        --oracle experiments/studies/range_test_oracle/validation/oracle.csv \
        --suite-results runs/validation

Prints a table of every setting and writes `stop_rule.md` beside the oracle's CSV.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score
from lrpilot.files import atomic_write_text

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7)


def stop_of(val_losses: list[float], stop_fraction: float) -> int | None:
    """The oracle stop that `RangeStopController` makes on this rising run, or None if
    it does not stop within it. `val_losses[0]` is the loss before training,
    `val_losses[j]` after interval j (interval 1 trains at the range test's start)."""
    best = 0.0  # as the controller counts: a first interval that loses stops the rise
    for j in range(1, len(val_losses)):
        gain = math.log(val_losses[j - 1] / val_losses[j])
        best = max(best, gain)
        if gain < stop_fraction * best:
            return j - 1
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oracle", required=True, help="oracle.csv of the suite")
    parser.add_argument("--suite-results", required=True, help="the suite's benchmark folder")
    args = parser.parse_args()
    oracle = pd.read_csv(args.oracle)
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv")
    metrics = dict(zip(summary["workload"], summary["metric"], strict=True))
    oracle["score"] = [
        score(row.test_loss, row.test_accuracy, metrics[row.workload])
        for row in oracle.itertuples()
    ]
    lowest, longest = oracle["stop"].min(), oracle["stop"].max()
    if (oracle.groupby("workload")["stop"].agg(["min", "max"]) != [lowest, longest]).any(axis=None):
        parser.error("every workload of the oracle must have run the same stops (no --window)")
    rising = oracle[(oracle["stop"] == longest) & (oracle["backoff"] == 1.0)]
    tuned = best_tuned(summary)["mean"].to_dict()  # the best tuned score
    rows = []
    for fraction in FRACTIONS:
        for backoff in sorted(oracle["backoff"].unique()):  # the oracle's back-offs
            ratios, outside = [], 0
            for workload, runs in rising.groupby("workload"):
                scores = []
                for run in runs.itertuples():
                    losses = [float(v) for v in run.val_losses.split()]  # [0]: L_0
                    stop = stop_of(losses, fraction)
                    if stop is None or not lowest <= stop <= longest:
                        outside += 1  # scored at the nearest stop the oracle ran
                        stop = longest if stop is None else min(max(stop, lowest), longest)
                    match = oracle[
                        (oracle["workload"] == workload)
                        & (oracle["stop"] == stop)
                        & (oracle["backoff"] == backoff)
                        & (oracle["seed"] == run.seed)
                    ]
                    scores.append(float(match["score"].iloc[0]))
                ratios.append(np.mean(scores) / tuned[workload])
            rows.append({"stop_fraction": fraction, "backoff": backoff,
                         "median ratio": np.median(ratios), "worst ratio": max(ratios),
                         "stops outside the oracle's": outside})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["median ratio", "worst ratio"])
    chosen = table.iloc[0]
    lines = [
        "# The range test's stop rule, scored from the oracle's runs",
        "",
        markdown_table(table.round(4)),
        "",
        f"Chosen by the rule fixed beforehand: stop_fraction {chosen['stop_fraction']}, "
        f"backoff {chosen['backoff']}.",
    ]
    atomic_write_text(Path(args.oracle).with_name("stop_rule.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
