"""Issue 37's targets for one chosen policy on `heldout` (and `controller_quality`),
from its runs by `select_policy.py` and the suites' committed tables.

    python experiments/studies/prior_generalist/select_policy.py --suite heldout \\
        --suite-results experiments/results/heldout --candidate chosen=PATH --jobs 2 \\
        --rules priorhold --out experiments/studies/prior_generalist/heldout
    python experiments/studies/prior_generalist/targets.py --candidate chosen \\
        --selection experiments/studies/prior_generalist/heldout \\
        --suite-results experiments/results/heldout \\
        --oracle experiments/studies/range_test_oracle/heldout-prior04/oracle.csv

Each workload's score is its metric (the test loss, or the test error for accuracy),
the mean over the evaluation seeds, as in the suites. The targets:
- against the best tuned schedule: median ratio <= 1.00 and worst <= 1.03;
- better than every tuning-free optimizer (a lower mean score) on >= 7 of 8 workloads;
- better than the fixed rule (`--rule`) at the median ratio and on >= 5 of 8;
- within 1.02 of the mechanism's open-loop oracle at the median (the oracle's best
  stop per workload in hindsight, from its `oracle.csv`);
- with `--quality-selection` (the same script's runs on `controller_quality` against
  `--quality-results`): <= 1.00 against the tuned schedules on all four workloads.
Robustness over start LRs is not measured here: a policy on the LR prior never reads
the start LR (its runs from any start are one run, `tests/test_env.py`).
Writes `targets.md` into `--selection`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score, score_ratio
from lrpilot.files import atomic_write_text


def candidate_means(selection: Path, candidate: str, metrics: dict[str, str]) -> pd.Series:
    """The candidate's mean score per workload from `select_policy.py`'s runs."""
    runs = pd.read_csv(selection / "selection.csv")
    runs = runs[runs["candidate"] == candidate]
    if runs.empty:
        raise SystemExit(f"{selection}/selection.csv has no runs of candidate {candidate!r}")
    scores = [score(r.test_loss, r.test_accuracy, metrics[r.workload]) for r in runs.itertuples()]
    return runs.assign(score=scores).groupby("workload")["score"].mean()


def oracle_means(path: Path, metrics: dict[str, str]) -> pd.Series:
    """The oracle's best mean score per workload over its stops and back-offs."""
    runs = pd.read_csv(path)
    scores = [score(r.test_loss, r.test_accuracy, metrics[r.workload]) for r in runs.itertuples()]
    means = runs.assign(score=scores).groupby(["workload", "stop", "backoff"])["score"].mean()
    return means.groupby("workload").min()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", required=True, help="the chosen candidate's name")
    parser.add_argument("--selection", required=True, help="select_policy.py's --out on heldout")
    parser.add_argument("--suite-results", required=True, help="heldout's summary.csv folder")
    parser.add_argument("--oracle", required=True, help="the mechanism's oracle.csv on heldout")
    parser.add_argument("--rule", default="priorhold", help="the fixed rule on the mechanism")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the rule's start LR row")
    parser.add_argument("--quality-selection", help="select_policy.py --out, controller_quality")
    parser.add_argument("--quality-results", help="controller_quality's summary.csv folder")
    args = parser.parse_args()
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv")
    metrics = dict(zip(summary["workload"], summary["metric"], strict=False))
    tuned = best_tuned(summary)["mean"]
    policy = candidate_means(Path(args.selection), args.candidate, metrics).reindex(tuned.index)
    rule_label = f"{args.rule} (start {args.start_lr:.3g})"
    rule = summary[summary["label"] == rule_label].set_index("workload")["mean"]
    tuning_free = summary[summary["kind"] == "tuningfree"].groupby("workload")["mean"].min()
    oracle = oracle_means(Path(args.oracle), metrics)
    ratio = pd.Series({w: score_ratio(policy[w], tuned[w]) for w in tuned.index})
    rule_ratio = pd.Series({w: score_ratio(rule[w], tuned[w]) for w in tuned.index})
    oracle_ratio = pd.Series({w: score_ratio(oracle[w], tuned[w]) for w in tuned.index})
    per_workload = pd.DataFrame(
        {
            "policy / tuned": ratio,
            f"{args.rule} / tuned": rule_ratio,
            "oracle / tuned": oracle_ratio,
            "beats every tuning-free": policy < tuning_free.reindex(tuned.index),
            f"beats {args.rule}": policy < rule.reindex(tuned.index),
        }
    ).round(4)
    n = len(tuned)
    checks = [
        ("median ratio to the best tuned <= 1.00", f"{ratio.median():.4f}", ratio.median() <= 1),
        ("worst ratio to the best tuned <= 1.03", f"{ratio.max():.4f}", ratio.max() <= 1.03),
        (
            "beats every tuning-free optimizer on >= 7 of 8",
            f"{int(per_workload['beats every tuning-free'].sum())} of {n}",
            per_workload["beats every tuning-free"].sum() >= 7,
        ),
        (
            f"better than {args.rule} at the median",
            f"{ratio.median():.4f} vs {rule_ratio.median():.4f}",
            ratio.median() < rule_ratio.median(),
        ),
        (
            f"better than {args.rule} on >= 5 of 8",
            f"{int(per_workload[f'beats {args.rule}'].sum())} of {n}",
            per_workload[f"beats {args.rule}"].sum() >= 5,
        ),
        (
            "within 1.02 of the oracle at the median",
            f"{ratio.median() / oracle_ratio.median():.4f} ({oracle_ratio.median():.4f})",
            ratio.median() / oracle_ratio.median() <= 1.02,
        ),
    ]
    if args.quality_selection:
        quality = pd.read_csv(Path(args.quality_results) / "summary.csv")
        quality_metrics = dict(zip(quality["workload"], quality["metric"], strict=False))
        quality_tuned = best_tuned(quality)["mean"]
        means = candidate_means(Path(args.quality_selection), args.candidate, quality_metrics)
        ratios = [score_ratio(means[w], quality_tuned[w]) for w in quality_tuned.index]
        checks.append(
            (
                "controller_quality: <= 1.00 against the tuned schedules in all four",
                " / ".join(f"{r:.4f}" for r in ratios),
                max(ratios) <= 1,
            )
        )
    table = pd.DataFrame(checks, columns=["target", "measured", "met"])
    lines = [
        f"# Issue 37's targets for `{args.candidate}` (start {args.start_lr:g})",
        "",
        markdown_table(table),
        "",
        markdown_table(per_workload.reset_index(names="workload")),
    ]
    atomic_write_text(Path(args.selection) / "targets.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
