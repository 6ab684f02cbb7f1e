"""Which reading of the sweep's curve picks the best LR: LR-finder rules, scored open-loop.

For every workload and evaluation seed of a suite, the rolled-back sweep of
`SWEEP_RULE` is run alone (the env's reset: the same seed, the same sweep as in the
oracle's runs), and each rule below reads its curve (`SweepResult`: the LRs and the
train losses of its steps, smoothed as `lrpilot.lm.sweep` smooths them):

- `valley`: fastai's valley (what `sweepvalley` uses);
- `min/10`, `min/3`: the LR of the lowest smoothed loss, divided by 10 or 3 (the
  classic LR range test reading, Smith 2017);
- `steepest`: the LR where the smoothed loss falls fastest per log-LR (fastai's
  `steep`).

Each suggestion is scored by the oracle's held-candidate run nearest to it in log-LR
(`oracle.csv`, candidates a factor 2 apart: within a factor 1.41 of the suggestion), on
the same seed, so no run is made here: the ratio to the best tuned schedule is the
candidate's. Selection rule, fixed before the figures were seen: the rule with the
lowest median ratio over the workloads, ties broken by the worst.

    python experiments/studies/sweep_oracle/suggestions.py --suite validation \
        --suite-results runs/validation --oracle runs/sweep-oracle-validation/oracle.csv

Prints the table and writes `suggestions.md` beside the oracle's CSV, and `curves.csv`:
each sweep's LRs, smoothed losses and the LR of its lowest loss.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrpilot.agents.controllers import SWEEP_RULE
from lrpilot.env.lr_env import EnvConfig, LRControlEnv
from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score
from lrpilot.experiments.suite import load_suite, with_inline_spec
from lrpilot.files import atomic_write_csv, atomic_write_text
from lrpilot.lm.sweep import SweepResult, valley_index


def suggestions(sweep: SweepResult) -> dict[str, float]:
    """Each rule's LR from one sweep's curve (the lowest LR where the curve is empty)."""
    curve = sweep.smoothed_losses
    finite = [i for i, v in enumerate(curve) if math.isfinite(v)]
    if not finite:
        return dict.fromkeys(("valley", "min/10", "min/3", "steepest"), sweep.lrs[0])
    kept = curve[: finite[-1] + 1]
    lowest = int(np.argmin(kept))
    logs = np.log(sweep.lrs[: len(kept)])
    slopes = np.diff(kept) / np.diff(logs)  # d loss / d log lr between steps
    steepest = int(np.argmin(slopes)) if len(slopes) else 0
    return {
        "valley": sweep.lrs[valley_index(kept)],
        "min/10": sweep.lrs[lowest] / 10,
        "min/3": sweep.lrs[lowest] / 3,
        "steepest": sweep.lrs[steepest],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="validation", help="a suite name or TOML path")
    parser.add_argument("--suite-results", required=True, help="the suite's benchmark folder")
    parser.add_argument("--oracle", required=True, help="the sweep oracle's oracle.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    oracle = pd.read_csv(args.oracle, dtype={"candidate": str})
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv")
    metrics = dict(zip(summary["workload"], summary["metric"], strict=True))
    tuned = best_tuned(summary)["mean"]
    oracle["score"] = [
        score(row.test_loss, row.test_accuracy, metrics[row.workload])
        for row in oracle.itertuples()
    ]
    held = oracle[oracle["candidate"] != "valley"].copy()
    held["lr"] = held["candidate"].astype(float)
    scores: dict[tuple[str, str], list[float]] = {}
    curves: list[dict] = []  # each sweep's smoothed curve, written to curves.csv
    for entry in suite.entries:
        entry = with_inline_spec(entry, Path(args.suite_results) / entry.name)
        for seed in suite.protocol.eval_seeds:
            task = entry.run.task(seed, 1e-3)
            env = LRControlEnv(EnvConfig(device="cpu", action=SWEEP_RULE, feature_version="v3"))
            env.reset(seed=seed, options={"task": task})
            curve = env.sweep.smoothed_losses
            curves.append({"workload": entry.name, "seed": seed, "steps": len(curve),
                           "lr at the lowest loss": env.sweep.lrs[int(np.argmin(curve))],
                           "lrs": " ".join(f"{v:.3g}" for v in env.sweep.lrs),
                           "smoothed losses": " ".join(f"{v:.4g}" for v in curve)})  # fmt: skip
            runs = held[(held["workload"] == entry.name) & (held["seed"] == seed)]
            for rule, lr in suggestions(env.sweep).items():
                nearest = runs.iloc[int(np.argmin(np.abs(np.log(runs["lr"] / lr))))]
                scores.setdefault((rule, entry.name), []).append(float(nearest["score"]))
    rows = []
    for rule in ("valley", "min/10", "min/3", "steepest"):
        ratios = [np.mean(scores[rule, w]) / tuned[w] for w in tuned.index if (rule, w) in scores]
        rows.append({"rule": rule, "median ratio": np.median(ratios), "worst ratio": max(ratios)})
    table = pd.DataFrame(rows).sort_values(["median ratio", "worst ratio"])
    lines = [
        "# Readings of the sweep's curve, scored by the oracle's nearest held LR",
        "",
        markdown_table(table.round(4)),
        "",
        f"Chosen by the rule fixed beforehand: {table.iloc[0]['rule']}.",
    ]
    atomic_write_text(Path(args.oracle).with_name("suggestions.md"), "\n".join(lines) + "\n")
    atomic_write_csv(Path(args.oracle).with_name("curves.csv"), pd.DataFrame(curves))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
