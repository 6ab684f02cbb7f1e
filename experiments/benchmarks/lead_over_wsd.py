"""Where in a run the policy gains on tuned WSD: val-loss differences along the run.

Reads the compare runs a measurement left under `--out` (by default those of
`select_policy.py` on the validation seeds; run it first). That folder holds the runs of
the policy measured last there, which is named first. Then it prints, per LM seed, the
policy's val loss from 1e-3 minus tuned WSD's at 10%, 25%, 50%, 75%, 90% and 100% of the
run, in the 400-step and 800-step settings, and the policy's LR range between the first
20% and the last 20% of the run; then, per LM seed and start LR, the LR the policy's first
action chose and the final val loss minus that of the start from 1e-3 (where a
robustness miss comes from). No run is trained here.

    python experiments/benchmarks/lead_over_wsd.py
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from lrpilot.experiments.benchmarks.controller_quality import (
    UNTUNED_START,
    setting_folder,
    short_name,
)
from lrpilot.experiments.report import markdown_table

SETTINGS = ("held-out seeds (pydoc, tiny, 400 steps)", "2x step budget (800 steps)")
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def lead_rows(results: pd.DataFrame, setting: str) -> list[dict]:
    """One row per evaluation seed: policy - WSD val loss at FRACTIONS, policy LR range."""
    runs = results[results["phase"] != "tune"]
    rows = []
    for seed, seed_runs in runs.groupby("seed"):
        is_policy = (seed_runs["kind"] == "policy") & (
            seed_runs["peak_or_start_lr"] == UNTUNED_START
        )
        policy = seed_runs[is_policy].set_index("interval")
        wsd = seed_runs[seed_runs["method"] == "wsd"].set_index("interval")
        intervals = len(policy) - 1
        row = {"setting": short_name(setting), "seed": seed}
        for fraction in FRACTIONS:
            at = round(fraction * intervals)
            row[f"{fraction:.0%}"] = round(policy["val_loss"][at] - wsd["val_loss"][at], 3)
        middle = policy["lr"][round(0.2 * intervals) : round(0.8 * intervals)]
        row["policy LR, 20-80%"] = f"{middle.min():.2g}-{middle.max():.2g}"
        rows.append(row)
    return rows


def start_rows(results: pd.DataFrame, setting: str) -> list[dict]:
    """One row per evaluation seed and policy start LR: the first interval's LR and the
    final val loss, also as a difference to the start from UNTUNED_START."""
    policy = results[(results["phase"] != "tune") & (results["kind"] == "policy")]
    rows = []
    for seed, seed_runs in policy.groupby("seed"):
        runs = {lr: run.set_index("interval") for lr, run in seed_runs.groupby("peak_or_start_lr")}
        untuned_final = runs[UNTUNED_START]["val_loss"].iloc[-1]
        for start, run in runs.items():
            final = run["val_loss"].iloc[-1]
            rows.append(
                {
                    "setting": short_name(setting),
                    "seed": seed,
                    "start LR": start,
                    "first action's LR": f"{run['lr'][1]:.3g}",
                    "final val loss": round(final, 4),
                    "minus start 1e-3": round(final - untuned_final, 3),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default="runs/policy_selection",
        help="folder of a measurement's compare runs (select_policy.py's by default)",
    )
    args = parser.parse_args()
    rows, starts = [], []
    for setting in SETTINGS:
        folder = setting_folder(args.out, setting)
        if not (folder / "results.csv").is_file():
            parser.error(f"no compare runs in {str(folder)!r}; run select_policy.py first")
        policy = json.loads((folder / "config.json").read_text())["policy"]
        print(f"{short_name(setting)}: policy {policy}")
        results = pd.read_csv(folder / "results.csv")
        rows += lead_rows(results, setting)
        starts += start_rows(results, setting)
    print(markdown_table(pd.DataFrame(rows)))
    print()
    print(markdown_table(pd.DataFrame(starts)))


if __name__ == "__main__":
    main()
