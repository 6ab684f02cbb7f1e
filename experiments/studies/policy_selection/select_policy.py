"""Choose which trained policy to ship by controller_quality.py's targets, on validation seeds.

Each candidate policy is measured exactly as `controller_quality.py` measures the
shipped one (the same four settings, the same tuned schedules, the same code), but on
the validation LM seeds (100001, 100002, 100003 by default; `--validation-seeds` for
more) instead of the comparison seeds 1, 2, 3, which must never choose what ships and
are refused here. Schedules are tuned on seed 0 as there.

A candidate's margin is its worst ratio to a target over the eight (four settings x
quality and robustness):

    margin = max over settings of max(quality / 0.99, robustness / 1.02)

so a margin <= 1 meets every target on the validation seeds. The candidate with the
smallest margin is chosen; a tie goes to the one listed first (list the incumbent
first). Unlike checkpoint selection during training (400-step `tiny` tasks only), this
sees the larger model and the 2x budget, on other seeds.

Written to `experiments/results/policy_selection.{csv,md}` and printed:

    python experiments/benchmarks/select_policy.py --jobs 2 \\
        --candidate current=default --candidate new=runs/controller/best
"""

from __future__ import annotations

import argparse

import pandas as pd

from lrpilot.cli import named_policy, positive_int
from lrpilot.errors import ConfigError
from lrpilot.experiments.benchmarks.controller_quality import (
    COMPARISON_SEEDS,
    QUALITY,
    QUALITY_TARGET,
    ROBUSTNESS,
    ROBUSTNESS_TARGET,
    SETTINGS,
    compare_config,
    measure,
    short_name,
)
from lrpilot.experiments.report import write_result_table

VALIDATION_SEEDS = (100001, 100002, 100003)  # the training run's evaluation seeds


def selection_row(candidate: str, path: str, settings: list[dict]) -> dict:
    """One candidate's eight figures, how many targets they meet, its margin and the
    minutes its measurement took (with the schedules' runs, when not yet cached)."""
    row: dict = {"candidate": candidate, "policy": path}
    ratios = []
    for setting in settings:
        name = short_name(setting["setting"])
        quality, robustness = setting[QUALITY], setting[ROBUSTNESS]
        row[f"{name}: quality"] = quality
        row[f"{name}: robustness"] = robustness
        ratios += [quality / QUALITY_TARGET, robustness / ROBUSTNESS_TARGET]
    row["targets met"] = sum(r <= 1 for r in ratios)
    row["margin"] = round(max(ratios), 4)
    row["minutes"] = round(sum(setting["minutes"] for setting in settings), 1)  # 0 if cached
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--candidate",
        action="append",
        required=True,
        type=named_policy,
        metavar="NAME=PATH",
        help="a candidate policy (`default`, a policy file or a folder holding one); "
        "repeat for each; ties go to the first",
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=2, help="LM runs in parallel (processes)"
    )
    parser.add_argument(
        "--out",
        default="runs/policy_selection",
        help="folder of the compare runs, one per setting (a cache: reruns reuse its runs)",
    )
    parser.add_argument(
        "--results",
        default="experiments/results",
        help="folder for policy_selection.csv and .md",
    )
    parser.add_argument(
        "--validation-seeds",
        type=int,
        nargs="+",
        default=list(VALIDATION_SEEDS),
        metavar="SEED",
        help="LM seeds the candidates are judged on (default: 100001 100002 100003); "
        "never the comparison seeds 1, 2, 3 nor the tuning seed 0",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    candidates = args.candidate  # (name, path) pairs, each path checked by named_policy
    if len({name for name, _ in candidates}) != len(candidates):
        parser.error(f"candidate names must differ, got {[n for n, _ in candidates]!r}")
    seeds = tuple(args.validation_seeds)
    if set(seeds) & set(COMPARISON_SEEDS):
        comparison = ", ".join(map(str, COMPARISON_SEEDS))
        parser.error(
            f"validation seeds must not include the comparison seeds {comparison}, got {seeds}"
        )
    try:  # bad seeds (the tuning seed, duplicates): one line now, before any measuring
        compare_config(next(iter(SETTINGS.values())), "default", seeds, args.jobs)
    except ConfigError as error:
        parser.error(str(error))

    rows = []
    for name, path in candidates:
        settings = [
            measure(
                setting,
                values,
                policy=path,
                eval_seeds=seeds,
                jobs=args.jobs,
                out=args.out,
                quiet=args.quiet,
            )
            for setting, values in SETTINGS.items()
        ]
        rows.append(selection_row(name, path, settings))
        print(f"{name}: margin {rows[-1]['margin']}, {rows[-1]['targets met']} of 8 targets met")
    table = pd.DataFrame(rows)
    chosen = table.loc[table["margin"].idxmin(), "candidate"]  # idxmin: the first of ties
    command = "python experiments/benchmarks/select_policy.py --jobs {} {}".format(
        args.jobs, " ".join(f"--candidate {n}={p}" for n, p in candidates)
    )
    if seeds != VALIDATION_SEEDS:
        command += " --validation-seeds " + " ".join(map(str, seeds))
    if args.results != "experiments/results":
        command += f" --results {args.results}"
    text = write_result_table(
        args.results,
        "policy_selection",
        table,
        f"Policy selection (validation seeds {', '.join(map(str, seeds))})",
        command,
        footer=f"Chosen: **{chosen}** (smallest margin).",
    )
    print(text)


if __name__ == "__main__":
    main()
