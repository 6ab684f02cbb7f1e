"""Issue 37's targets for one chosen policy on `heldout` (and `controller_quality`),
from its runs by `select_policy.py` and the suites' committed tables.

    python experiments/studies/prior_generalist/select_policy.py --suite heldout \\
        --suite-results experiments/results/heldout --candidate chosen=PATH --jobs 2 \\
        --rules priorhold --out experiments/studies/prior_generalist/heldout
    python experiments/studies/prior_generalist/targets.py --candidate chosen=PATH \\
        --selection experiments/studies/prior_generalist/heldout \\
        --suite-results experiments/results/heldout \\
        --oracle experiments/studies/range_test_oracle/heldout-prior04/oracle.csv

Each workload's score is its metric (the test loss, or the test error for accuracy),
the mean over the evaluation seeds, as in the suites. The targets:
- against the best tuned schedule: median ratio <= 1.00 and worst <= 1.03;
- better than every tuning-free optimizer (a lower mean score) on >= 7 of 8 workloads;
- better than the fixed rule (`--rule`) at the median ratio and on >= 5 of 8;
- within 1.02 of the mechanism's open-loop oracle at the median: the policy's median
  ratio over the oracle's (the oracle's best stop per workload in hindsight, from its
  `oracle.csv`);
- with `--quality-selection` (the same script's runs on `controller_quality` against
  `--quality-results`): <= 1.00 against the tuned schedules on all four workloads.
Robustness over start LRs is not measured here: a policy on the LR prior never reads
the start LR (its runs from any start are one run, `tests/test_env.py`).
Only the chosen policy file's runs count (by its sha256), and every workload needs all
of the suite's evaluation seeds. Writes `targets.md` into `--selection`.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score, score_ratio
from lrpilot.experiments.suite import load_suite
from lrpilot.files import atomic_write_text


def candidate_means(
    selection: Path, name: str, policy: bytes, seeds: list[int], metrics: dict[str, str], parser
) -> pd.Series:
    """The candidate's mean score per workload from `select_policy.py`'s runs of this
    policy file; a workload without a run for every seed is an error."""
    runs = pd.read_csv(selection / "selection.csv")
    runs = runs[(runs["candidate"] == name) & (runs["policy_sha256"] == sha256(policy))]
    for workload in metrics:
        have = set(runs.loc[runs["workload"] == workload, "seed"])
        if not set(seeds) <= have:
            parser.error(
                f"{selection}/selection.csv lacks {name!r} on {workload} for seeds "
                f"{sorted(set(seeds) - have)}: finish select_policy.py first"
            )
    runs = runs[runs["workload"].isin(list(metrics)) & runs["seed"].isin(seeds)]
    scores = [score(r.test_loss, r.test_accuracy, metrics[r.workload]) for r in runs.itertuples()]
    return runs.assign(score=scores).groupby("workload")["score"].mean()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def oracle_means(path: Path, metrics: dict[str, str]) -> pd.Series:
    """The oracle's best mean score per workload over its stops and back-offs."""
    runs = pd.read_csv(path)
    scores = [score(r.test_loss, r.test_accuracy, metrics[r.workload]) for r in runs.itertuples()]
    means = runs.assign(score=scores).groupby(["workload", "stop", "backoff"])["score"].mean()
    return means.groupby("workload").min()


def named_file(text: str, parser) -> tuple[str, bytes]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        parser.error(f"expected NAME=PATH of a policy file, got {text!r}")
    return name, Path(path).read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", required=True, help="NAME=PATH: the chosen policy file")
    parser.add_argument("--selection", required=True, help="select_policy.py's --out on heldout")
    parser.add_argument("--suite-results", required=True, help="heldout's summary.csv folder")
    parser.add_argument("--oracle", required=True, help="the mechanism's oracle.csv on heldout")
    parser.add_argument("--rule", default="priorhold", help="the fixed rule on the mechanism")
    parser.add_argument("--rule-start-lr", type=float, default=1e-3, help="the rule's row")
    parser.add_argument("--quality-selection", help="select_policy.py --out, controller_quality")
    parser.add_argument("--quality-results", help="controller_quality's summary.csv folder")
    args = parser.parse_args()
    if (args.quality_selection is None) != (args.quality_results is None):
        parser.error("give both --quality-selection and --quality-results, or neither")
    name, policy_bytes = named_file(args.candidate, parser)
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv")
    tuned = best_tuned(summary)["mean"]
    metrics = {w: summary.loc[summary["workload"] == w, "metric"].iloc[0] for w in tuned.index}
    seeds = load_suite("heldout").protocol.eval_seeds
    policy = candidate_means(Path(args.selection), name, policy_bytes, seeds, metrics, parser)
    rule_label = f"{args.rule} (start {args.rule_start_lr:.3g})"
    rule = summary[summary["label"] == rule_label].set_index("workload")["mean"]
    tuning_free = summary[summary["kind"] == "tuningfree"].groupby("workload")["mean"].min()
    oracle = oracle_means(Path(args.oracle), metrics)
    for what, means in (("rule " + rule_label, rule), ("tuning-free", tuning_free),
                        ("oracle", oracle)):  # fmt: skip
        if set(tuned.index) - set(means.index):
            parser.error(f"no {what} rows for {sorted(set(tuned.index) - set(means.index))}")
    policy, rule, tuning_free, oracle = (
        means.reindex(tuned.index) for means in (policy, rule, tuning_free, oracle)
    )
    ratio = pd.Series({w: score_ratio(policy[w], tuned[w]) for w in tuned.index})
    rule_ratio = pd.Series({w: score_ratio(rule[w], tuned[w]) for w in tuned.index})
    oracle_ratio = pd.Series({w: score_ratio(oracle[w], tuned[w]) for w in tuned.index})
    per_workload = pd.DataFrame(
        {
            "policy / tuned": ratio,
            f"{args.rule} / tuned": rule_ratio,
            "oracle / tuned": oracle_ratio,
            "beats every tuning-free": policy < tuning_free,
            f"beats {args.rule}": policy < rule,
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
        quality_seeds = load_suite("controller_quality").protocol.eval_seeds
        means = candidate_means(
            Path(args.quality_selection), name, policy_bytes, quality_seeds,
            {w: quality_metrics[w] for w in quality_tuned.index}, parser,
        )  # fmt: skip
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
        f"# Issue 37's targets for `{name}` on `heldout` (sha256 {sha256(policy_bytes)[:12]})",
        "",
        markdown_table(table),
        "",
        markdown_table(per_workload.reset_index(names="workload")),
    ]
    atomic_write_text(Path(args.selection) / "targets.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
