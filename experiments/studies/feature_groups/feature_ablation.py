"""What each feature group is worth to a trained policy, measured on a suite.

For every group of features, a copy of the policy reads that group as its training
mean (a mean ablation: the policy's normalisation statistics get a huge variance for
those inputs, so the normalised input is 0, the value it averaged in training,
whatever the run does). The copy runs the suite's protocol (`heldout` by default) on
the suite's evaluation seeds from the given start LRs, and the table reports what
the policy lost without the group. The schedules and tuning-free optimizers are
reused from a finished suite folder (`--cache-from`), so only the policy runs are
new: about 4 minutes per start LR and group on 2 cores for `heldout`.

This ablates a trained policy's inputs; it does not retrain one per group (at 74
minutes a training, seven trainings do not fit a session). A group the policy
ignores costs nothing here even if a policy trained without it would have learned
another way. The groups are those of `FEATURE_GROUPS` that the policy's feature set
holds, but the absolute LR (`log_lr`), which the generalists were trained without and
read as 0 already, plus the history. With `--policies-only` it writes the ablated
policy files and stops, for a script that runs policies alone against a suite's
committed tables (`experiments/studies/prior_generalist/select_policy.py`).

Per group and start LR: the median and worst ratio of the policy's mean test loss
to the best tuned schedule's over the workloads, and on how many workloads it beats
both tuning-free optimizers; then the robustness over the start LRs (worst / best
mean test loss, the worst workload). Written to OUT/feature_ablation.{csv,md} (and
`--results`) and printed:

    python experiments/studies/feature_groups/feature_ablation.py --policy runs/generalist/best \
        --cache-from runs/heldout --out runs/feature-ablation --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import pandas as pd

from lrpilot.agents.policy_file import Policy, load_policy
from lrpilot.env.features import FEATURE_GROUPS, FEATURE_SETS, observation_size
from lrpilot.errors import ConfigError
from lrpilot.experiments.report import markdown_table
from lrpilot.experiments.suite import load_suite, run_suite
from lrpilot.files import atomic_write_csv, atomic_write_text

HISTORY = "history"  # the group of every feature of the past evaluations
# The groups a policy can lose: those of `FEATURE_GROUPS` that its feature set holds,
# but the absolute LR (`log_lr`), which the generalists were trained without and read as
# 0 already; plus the history.
GROUPS = ("none", *(name for name in FEATURE_GROUPS if name != "absolute LR"), HISTORY)


def group_features(group: str) -> tuple[str, ...]:
    return () if group in ("none", HISTORY) else FEATURE_GROUPS[group]


# The columns of the suite table (`suite_table`) that the ablation table keeps.
ROW_COLUMNS = (
    "method",
    "median ratio to best tuned",
    "worst ratio to best tuned",
    "workloads it beats every tuning-free optimizer on",
    "robustness (worst / best start LR), worst workload",
)
ABLATED_VARIANCE = 1e12  # normalised input = (x - mean) / 1e6: 0 for any feature value


def ablated_inputs(group: str, history: int, feature_version: str) -> list[int]:
    """Observation indices the group covers: evaluation k's features are at k * n ...
    (k + 1) * n - 1 (newest first, n features a set), and a group is masked in every
    evaluation the policy sees; the history is every evaluation but the newest."""
    names = FEATURE_SETS[feature_version]
    n = len(names)
    if group == HISTORY:
        return list(range(n, observation_size(history, feature_version)))
    missing = sorted(set(group_features(group)) - set(names))
    if missing:
        raise ConfigError(f"feature set {feature_version} lacks group {group!r} ({missing})")
    return [k * n + names.index(name) for k in range(history) for name in group_features(group)]


def mean_ablated(policy: Policy, group: str) -> Policy:
    """`policy` reading the group's inputs as their training mean."""
    norm = policy.metadata["normalization"]
    if not norm:
        raise ConfigError("a mean ablation needs a policy with normalisation statistics")
    variance = list(norm["var"])
    for index in ablated_inputs(group, policy.history, policy.feature_version):
        variance[index] = ABLATED_VARIANCE
    return Policy(policy.weights, policy.metadata | {"normalization": norm | {"var": variance}})


def describe(group: str) -> str:
    if group == HISTORY:
        return "every feature of the past evaluations"
    return ", ".join(group_features(group)) or "nothing"


def group_rows(group: str, table: pd.DataFrame) -> list[dict]:
    """The suite table's policy rows (one per start LR), labelled with the group."""
    policy = table[table["kind"] == "policy"]
    return [
        {"group": group, "ablated": describe(group)} | {k: row[k] for k in ROW_COLUMNS}
        for _, row in policy.iterrows()
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--policy", required=True, help="policy file or folder, or a shipped policy's name"
    )
    parser.add_argument("--suite", default="heldout", help="suite name or TOML path")
    parser.add_argument(
        "--start-lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="the policy's start LRs"
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        choices=GROUPS,
        help="groups to ablate (default: every group the policy's feature set holds)",
    )
    parser.add_argument(
        "--policies-only",
        action="store_true",
        help="write the ablated policy files to OUT/policies/ and stop (to run them with "
        "another script, such as prior_generalist/select_policy.py)",
    )
    parser.add_argument(
        "--cache-from",
        help="a finished suite folder whose cached runs seed each group's (copied once)",
    )
    parser.add_argument("--out", required=True, help="folder: one suite folder per group")
    parser.add_argument("--results", help="also write the tables to this folder")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    return parser.parse_args(argv)


def write_tables(rows: list[dict], args: argparse.Namespace, suite_name: str) -> str:
    """The table so far, to OUT (and `--results`), as CSV and Markdown."""
    table = pd.DataFrame(rows)
    text = (
        f"# Feature groups of `{args.policy}` on suite `{suite_name}` (mean ablation)\n\n"
        f"`python experiments/studies/feature_groups/feature_ablation.py --policy {args.policy} "
        f"--suite {args.suite} --start-lrs {' '.join(map(str, args.start_lrs))}`\n\n"
        + markdown_table(table.round(4))
        + "\n"
    )
    for folder in [Path(args.out)] + ([Path(args.results)] if args.results else []):
        atomic_write_csv(folder / "feature_ablation.csv", table)
        atomic_write_text(folder / "feature_ablation.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        policy = load_policy(args.policy)
        if not isinstance(policy, Policy):
            raise ConfigError(f"{args.policy!r} is a fixed rule, not a policy: it has no inputs")
        held = set(FEATURE_SETS[policy.feature_version])
        groups = args.groups or [
            g
            for g in GROUPS
            if set(group_features(g)) <= held and (g != HISTORY or policy.history > 1)
        ]
        ablated = {group: mean_ablated(policy, group) for group in groups}  # checked now
        suite = load_suite(args.suite)
        if any(not lr > 0 for lr in args.start_lrs):
            raise ConfigError(f"start LRs must be > 0, got {args.start_lrs}")
        suite = dataclasses.replace(
            suite, protocol=dataclasses.replace(suite.protocol, start_lrs=tuple(args.start_lrs))
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.policies_only:
        for group, ablated_policy in ablated.items():
            print(ablated_policy.save(out / "policies" / group.replace(" ", "-")))
        return 0
    rows = []
    for group in groups:  # the table is rewritten after each group
        folder = out / group.replace(" ", "-")
        if args.cache_from and not folder.exists():
            shutil.copytree(args.cache_from, folder)
        path = ablated[group].save(out / "policies" / group.replace(" ", "-"))
        print(f"== group {group!r}: {path}", flush=True)
        rows += group_rows(group, run_suite(suite, folder, policy=str(path), jobs=args.jobs))
        text = write_tables(rows, args, suite.name)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
