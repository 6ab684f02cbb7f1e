"""Choose which trained policy to ship by the `controller_quality` suite's targets, on
validation seeds.

Each candidate policy runs the `controller_quality` suite (its four workloads, its tuned
schedules, the same code as `lrpilot benchmark --suite controller_quality`), but on the
validation LM seeds (100001, 100002, 100003 by default; `--validation-seeds` for more)
instead of the suite's comparison seeds 1, 2, 3, which must never choose what ships and
are refused here. Schedules are tuned on seed 0 as there.

Per workload, a candidate's quality is its mean test loss from 1e-3 over the best tuned
schedule's (target <= 0.99) and its robustness the worst / best of its mean test losses
over the start LRs (target <= 1.02). Its margin is its worst ratio to a target over the
eight figures (four workloads x quality and robustness):

    margin = max over workloads of max(quality / 0.99, robustness / 1.02)

so a margin <= 1 meets every target on the validation seeds. The candidate with the
smallest margin is chosen; a tie goes to the one listed first (list the incumbent
first). Unlike checkpoint selection during training (400-step `tiny` tasks only), this
sees the larger model and the 2x budget, on other seeds.

Written to `experiments/studies/policy_selection/policy_selection.{csv,md}` (or
`--results`) and printed:

    python experiments/studies/policy_selection/select_policy.py --jobs 2 \\
        --candidate current=tiny --candidate new=runs/controller/best
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.errors import ConfigError
from lrpilot.experiments.report import write_result_table
from lrpilot.experiments.suite import UNTUNED_START, Suite, load_suite, run_suite
from lrpilot.flags import named_policy

SUITE = "controller_quality"
RESULTS = "experiments/studies/policy_selection"
VALIDATION_SEEDS = (100001, 100002, 100003)  # the training run's evaluation seeds
QUALITY_TARGET = 0.99  # policy from UNTUNED_START / best tuned schedule, at most
ROBUSTNESS_TARGET = 1.02  # policy's worst / best over the start LRs, at most


def validation_suite(seeds: tuple[int, ...]) -> Suite:
    """The `controller_quality` suite on `seeds` instead of its comparison seeds."""
    suite = load_suite(SUITE)
    comparison = suite.protocol.eval_seeds
    if set(seeds) & set(comparison):
        raise ConfigError(
            f"validation seeds must not include the comparison seeds "
            f"{', '.join(map(str, comparison))}, got {seeds}"
        )
    suite = dataclasses.replace(
        suite, protocol=dataclasses.replace(suite.protocol, eval_seeds=tuple(seeds))
    )
    suite.config(suite.entries[0], None, 1, "cpu")  # bad seeds (tuning seed, twice): refused
    return suite


def workload_figures(per_workload: pd.DataFrame) -> list[dict]:
    """Per workload of a suite's `summary.csv`: the policy's quality and robustness."""
    rows = []
    for workload, group in per_workload.groupby("workload", sort=False):
        policy = group[group["kind"] == "policy"]
        untuned = policy[np.isclose(policy["lr"], UNTUNED_START)].iloc[0]
        rows.append(
            {
                "workload": workload,
                "quality": round(float(untuned["ratio_to_best"]), 4),
                "robustness": round(float(policy["mean"].max() / policy["mean"].min()), 4),
            }
        )
    return rows


def selection_row(candidate: str, path: str, figures: list[dict], minutes: float) -> dict:
    """One candidate's eight figures, how many targets they meet, its margin and the
    minutes its measurement took (with the schedules' runs, when not yet cached)."""
    row: dict = {"candidate": candidate, "policy": path}
    ratios = []
    for figure in figures:
        row[f"{figure['workload']}: quality"] = figure["quality"]
        row[f"{figure['workload']}: robustness"] = figure["robustness"]
        ratios += [figure["quality"] / QUALITY_TARGET, figure["robustness"] / ROBUSTNESS_TARGET]
    row["targets met"] = sum(r <= 1 for r in ratios)
    row["margin"] = round(max(ratios), 4)
    row["minutes"] = round(minutes, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--candidate",
        action="append",
        required=True,
        type=named_policy,
        metavar="NAME=PATH",
        help="a candidate policy (`tiny`, a policy file or a folder holding one); "
        "repeat for each; ties go to the first",
    )
    parser.add_argument("--jobs", type=int, default=2, help="LM runs in parallel (processes)")
    parser.add_argument(
        "--out",
        default="runs/policy_selection",
        help="suite folder of the runs, one compare folder per workload (a cache: reruns "
        "reuse its runs)",
    )
    parser.add_argument(
        "--results", default=RESULTS, help="folder for policy_selection.csv and .md"
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
    try:  # bad seeds: one line now, before any measuring
        suite = validation_suite(seeds)
    except ConfigError as error:
        parser.error(str(error))

    rows = []
    for name, path in candidates:
        start = time.perf_counter()
        run_suite(suite, args.out, policy=path, jobs=args.jobs, progress=not args.quiet)
        figures = workload_figures(pd.read_csv(Path(args.out) / "summary.csv"))
        rows.append(selection_row(name, path, figures, (time.perf_counter() - start) / 60))
        print(f"{name}: margin {rows[-1]['margin']}, {rows[-1]['targets met']} of 8 targets met")
    table = pd.DataFrame(rows)
    chosen = table.loc[table["margin"].idxmin(), "candidate"]  # idxmin: the first of ties
    command = "python experiments/studies/policy_selection/select_policy.py --jobs {} {}".format(
        args.jobs, " ".join(f"--candidate {n}={p}" for n, p in candidates)
    )
    if seeds != VALIDATION_SEEDS:
        command += " --validation-seeds " + " ".join(map(str, seeds))
    if args.results != RESULTS:
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
