"""How `heldout`'s ratios move when its tuned reference gets finer.

The earlier protocol tuned peaks a factor 3.2 apart on one seed (`--old`, the committed
`experiments/results/heldout-coarse/`); the current one tunes peaks a factor 2 apart on two
seeds (`--new`, a fresh `lrpilot benchmark --suite heldout` folder). Methods that do not
depend on the tuning (the shipped policy, the tuning-free optimizers) ran the same
evaluation runs under both, so their means divided by either reference show how much of
a "win" or a "loss" was the grid's coarseness.

    python experiments/studies/finer_tuning/ratios.py \
        --old experiments/results/heldout-coarse --new experiments/results/heldout

Prints, and writes to `ratios.md` beside this script (or `--out`): per workload the
best tuned schedule under each protocol, then every untuned method's ratio under each,
with the median and worst over the workloads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.files import atomic_write_text

HERE = Path(__file__).resolve().parent


def reference_table(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per workload: the best tuned schedule (label, peak, warmup, mean score) of each
    protocol; `new / old` only where both rank by the same score (the test loss)."""
    rows = {"metric": best_tuned(new)["metric"]}
    for name, summary in (("old", old), ("new", new)):
        best = best_tuned(summary)
        rows[f"{name} best"] = best["label"] + " " + best["lr"].map(lambda v: f"{v:.3g}")
        rows[f"{name} warmup"] = best["warmup"].fillna(0)
        rows[f"{name} mean"] = best["mean"]
    table = pd.DataFrame(rows)
    table["new / old"] = (table["new mean"] / table["old mean"]).where(table["metric"] == "loss")
    return table


def moved_ratios(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Every untuned method of `old` (kind other than `schedule`): its ratio as `old`
    reported it, and its mean score over the new best tuned, per workload. The new ratio
    is of the new protocol's score: where a workload is now ranked by accuracy (`old`
    ranked every workload by test loss), of the test error 1 - accuracy."""
    untuned = old[old["kind"] != "schedule"]
    reference = best_tuned(new)
    metric = reference["metric"].reindex(untuned["workload"]).to_numpy()
    score = np.where(metric == "accuracy", 1 - untuned["accuracy"], untuned["mean"])
    table = untuned[["workload", "label", "ratio_to_best"]].rename(
        columns={"ratio_to_best": "old ratio"}
    )
    table["new ratio"] = score / reference["mean"].reindex(untuned["workload"]).to_numpy()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the earlier protocol's heldout folder")
    parser.add_argument("--new", required=True, help="the current protocol's heldout folder")
    parser.add_argument("--out", default=str(HERE), help="folder for ratios.md")
    args = parser.parse_args()
    old = pd.read_csv(Path(args.old) / "summary.csv")
    new = pd.read_csv(Path(args.new) / "summary.csv")
    references = reference_table(old, new)
    moved = moved_ratios(old, new)
    medians = moved.groupby("label")[["old ratio", "new ratio"]].agg(["median", "max"])
    medians.columns = [f"{ratio} {stat}".replace("max", "worst") for ratio, stat in medians.columns]
    lines = [
        "# heldout under finer tuning",
        "",
        "The best tuned schedule of each workload (old: peaks x3.2 apart, one tuning seed; "
        "new: x2 apart, two seeds):",
        "",
        markdown_table(references.reset_index().round(4)),
        "",
        "Untuned methods, the same evaluation runs, divided by each reference "
        "(median and worst over the workloads):",
        "",
        markdown_table(medians.reset_index().round(4)),
        "",
        "The old protocol ranked every workload by test loss; a workload ranked by "
        "accuracy now (`metric`) has its untuned methods' test error divided by the new "
        "reference's.",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ratios.md", text)
    print(text)


if __name__ == "__main__":
    main()
