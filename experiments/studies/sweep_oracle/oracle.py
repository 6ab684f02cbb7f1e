"""What any rule on the rolled-back sweep can reach with one held LR: an open-loop oracle.

For every workload of a suite, each run makes the rolled-back sweep of
`lrpilot.agents.controllers.SWEEP_RULE` (4% of the budget, from x0.01 to x100 of the
start LR, then put back), then trains the rest of its budget at one fixed candidate
LR, `start LR * 2**k`, set by the first action and held, with the rule's 20%
cooldown. Each candidate runs on the suite's evaluation seeds; the oracle is the best
candidate in hindsight, per workload, by mean test loss over those seeds. No rule
that reads the sweep and holds one LR can beat it on these seeds among the
candidates tried, so its ratio to the best tuned schedule (from the suite's own
results, `--suite-results`) says whether the mechanism can reach the targets at all.
`sweepvalley` (the valley rule, `SweepValleyController`) runs beside it on the same
seeds: how far the fixed rule is from the oracle.

    python experiments/studies/sweep_oracle/oracle.py --suite validation \
        --suite-results runs/validation --jobs 2

Writes `oracle.csv` (every workload x candidate x seed, with the LR trained at) and
`oracle.md` (per workload: the best candidate, its mean test loss, sweepvalley's,
and their ratios to the best tuned schedule) into `--out` (default: this folder).
Re-running reuses the rows already in `oracle.csv`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.agents.controllers import SWEEP_RULE, SweepValleyController
from lrpilot.env.lr_env import EnvConfig
from lrpilot.experiments.replay import run_controller
from lrpilot.experiments.report import markdown_table
from lrpilot.experiments.suite import load_suite
from lrpilot.files import atomic_write_csv, atomic_write_text
from lrpilot.lm.trace import trace_scores

HERE = Path(__file__).resolve().parent
COLUMNS = ["workload", "candidate", "seed", "test_loss", "lr"]
VALLEY = "valley"  # the candidate name of sweepvalley's runs


class HeldCandidate:
    """The first action sets `2**exponent` times the start LR; every later one holds."""

    def __init__(self, exponent: int) -> None:
        self.exponent = exponent
        self.acted = False

    def act(self, observation):
        first, self.acted = not self.acted, True
        if not first:
            return np.zeros(1, dtype=np.float32)
        scaled = self.exponent * math.log(2) / math.log(SWEEP_RULE.first_action_max_factor)
        return np.array([scaled], dtype=np.float32)


def one_run(job: tuple) -> dict:
    name, task, candidate = job
    controller = SweepValleyController() if candidate == VALLEY else HeldCandidate(candidate)
    config = EnvConfig(device="cpu", action=SWEEP_RULE, feature_version="v2+sweep")
    trace = run_controller(controller, task, config)
    _, test_loss = trace_scores(trace)
    held_lr = float(trace["lr"].iloc[1])  # the first interval's LR, the one held
    return {"workload": name, "candidate": str(candidate), "seed": task.seed,
            "test_loss": test_loss, "lr": held_lr}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="validation", help="a suite name or TOML path")
    parser.add_argument("--suite-results", help="that suite's benchmark folder (tuned best)")
    parser.add_argument("--exponents", default="-6:6", help="candidates 2**k, k from LOW:HIGH")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", default=str(HERE), help="folder for oracle.csv and .md")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    low, high = (int(k) for k in args.exponents.split(":"))
    reach = math.log2(SWEEP_RULE.first_action_max_factor)
    if not -reach <= low <= high <= reach:
        parser.error(f"exponents must satisfy -{reach:.2f} <= LOW <= HIGH <= {reach:.2f}")
    candidates = [*range(low, high + 1), VALLEY]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(out / "oracle.csv", dtype={"candidate": str}) if (
        out / "oracle.csv").is_file() else None  # fmt: skip
    have = set() if done is None else set(map(tuple, done[COLUMNS[:3]].values.tolist()))
    jobs = []
    for entry in suite.entries:
        if entry.inline is not None:  # an inline workload: written where compare puts it
            path = Path(args.suite_results or out) / entry.name / "workload.toml"
            entry = dataclasses.replace(
                entry, run=dataclasses.replace(entry.run, workload=str(path))
            )
        for seed in suite.protocol.eval_seeds:
            task = entry.run.task(seed, args.start_lr)
            jobs += [(entry.name, task, c) for c in candidates
                     if (entry.name, str(c), seed) not in have]  # fmt: skip
    rows = [] if done is None else done.to_dict("records")
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            atomic_write_csv(out / "oracle.csv", pd.DataFrame(rows, columns=COLUMNS))
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(out / "oracle.md", report(table, args.suite_results))
    print(report(table, args.suite_results))


def report(table: pd.DataFrame, suite_results: str | None) -> str:
    """Per workload: the best held candidate, sweepvalley, and their ratios to the best
    tuned schedule of `suite_results` (when given)."""
    means = table.groupby(["workload", "candidate"])[["test_loss", "lr"]].mean().reset_index()
    grid = means[means["candidate"] != VALLEY]
    best = grid.loc[grid.groupby("workload")["test_loss"].idxmin()].set_index("workload")
    valley = means[means["candidate"] == VALLEY].set_index("workload")
    rows = pd.DataFrame({
        "oracle 2^k": best["candidate"],
        "oracle lr": best["lr"],
        "oracle test loss": best["test_loss"],
        "valley lr": valley["lr"].reindex(best.index),
        "valley test loss": valley["test_loss"].reindex(best.index),
    })  # fmt: skip
    lines = ["# The rolled-back sweep's open-loop oracle", ""]
    if suite_results:
        summary = pd.read_csv(Path(suite_results) / "summary.csv")
        tuned = summary[summary["kind"] == "schedule"].groupby("workload")["mean"].min()
        rows["oracle / tuned"] = rows["oracle test loss"] / tuned.reindex(rows.index)
        rows["valley / tuned"] = rows["valley test loss"] / tuned.reindex(rows.index)
    lines.append(markdown_table(rows.reset_index().round(5)))
    if "oracle / tuned" in rows:
        for name in ("oracle", "valley"):
            ratios = rows[f"{name} / tuned"]
            lines += [
                "",
                f"{name}: median ratio {np.median(ratios):.4f}, worst {ratios.max():.4f}.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
