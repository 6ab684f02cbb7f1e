"""What any rule on the rolled-back sweep can reach with one held LR: an open-loop oracle.

For every workload of a suite, each run makes the rolled-back sweep of
`lrpilot.agents.controllers.SWEEP_RULE` (4% of the budget over the rule's LR range,
1e-5 to 1e-1, whatever the start LR, then put back), then trains the rest of its
budget at one fixed candidate LR, set by the first action and held, with the rule's
20% cooldown. The candidates are absolute LRs: by default a factor-2 grid over the
workload's tuned peak-LR range (its `lr_range`, or the suite protocol's), from its low
end up to the first point at or above its high end; `--candidates` names them instead.
Each candidate runs on the suite's evaluation seeds; the oracle is the best candidate
in hindsight, per workload, by its mean score over those seeds: the test loss, or the
test error 1 - accuracy where the workload's metric is accuracy (the `metric` column
of the suite's `summary.csv`). No rule that reads the sweep and holds one LR can beat
it on these seeds among the candidates tried, so its ratio to the best tuned schedule
(from the suite's own results, `--suite-results`) says whether the mechanism can reach
the targets at all. `sweepvalley` (the valley rule, `SweepValleyController`) runs
beside it on the same seeds: how far the fixed rule is from the oracle.

    python experiments/studies/sweep_oracle/oracle.py --suite validation \
        --suite-results runs/validation --jobs 2

Writes `oracle.csv` (every workload x candidate x seed, with the LR trained at) and
`oracle.md` (per workload: the best candidate, its mean score, sweepvalley's, and
their ratios to the best tuned schedule's) into `--out` (default: this folder).
Re-running reuses the rows already in `oracle.csv`.

On a suite of large runs, `--window 1` keeps only the candidates within a factor 2 of
the workload's best tuned peak; `oracle.md` marks a best candidate at the edge of what
was tried, where a wider window could find a better one.
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrpilot.agents.controllers import SWEEP_RULE, SweepValleyController
from lrpilot.env.lr_env import EnvConfig
from lrpilot.experiments.replay import run_controller
from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score
from lrpilot.experiments.suite import load_suite, with_inline_spec
from lrpilot.files import atomic_write_csv, atomic_write_text
from lrpilot.lm.trace import trace_accuracy, trace_scores

HERE = Path(__file__).resolve().parent
COLUMNS = ["workload", "candidate", "seed", "test_loss", "test_accuracy", "lr"]
VALLEY = "valley"  # the candidate name of sweepvalley's runs


class HeldCandidate:
    """The first action sets the LR `lr` (from the run's start LR `start_lr`); every
    later one holds it."""

    def __init__(self, lr: float, start_lr: float) -> None:
        self.log_factor = math.log(lr / start_lr)
        self.acted = False

    def act(self, observation):
        first, self.acted = not self.acted, True
        if not first:
            return np.zeros(1, dtype=np.float32)
        scaled = self.log_factor / math.log(SWEEP_RULE.first_action_max_factor)
        return np.array([scaled], dtype=np.float32)


def one_run(job: tuple) -> dict:
    name, task, candidate = job
    if candidate == VALLEY:
        controller = SweepValleyController()
    else:
        start_lr = float(np.clip(task.start_lr, SWEEP_RULE.lr_min, SWEEP_RULE.lr_max))
        controller = HeldCandidate(float(candidate), start_lr)
    config = EnvConfig(device="cpu", action=SWEEP_RULE, feature_version="v3")
    trace = run_controller(controller, task, config)
    _, test_loss = trace_scores(trace)
    held_lr = float(trace["lr"].iloc[1])  # the first interval's LR, the one held
    return {"workload": name, "candidate": candidate, "seed": task.seed,
            "test_loss": test_loss, "test_accuracy": trace_accuracy(trace),
            "lr": held_lr}  # fmt: skip


def factor_two_grid(low: float, high: float) -> list[str]:
    """`low * 2**k` for k = 0, 1, ... until it reaches `high`, as candidate names."""
    steps = math.ceil(math.log2(high / low) - 1e-9)
    return [f"{low * 2**k:.6g}" for k in range(steps + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="validation", help="a suite name or TOML path")
    parser.add_argument("--suite-results", help="that suite's benchmark folder (tuned best)")
    parser.add_argument(
        "--candidates",
        help="held LRs to try, comma-separated (default: a factor-2 grid over each "
        "workload's tuned LR range)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="keep only the candidates within a factor 2**WINDOW of the best tuned peak "
        "(from --suite-results), to the nearest factor-2 step",
    )
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", default=str(HERE), help="folder for oracle.csv and .md")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    if args.window is not None and not args.suite_results:
        parser.error("--window needs --suite-results (the best tuned peak of each workload)")
    if args.window is not None and args.window < 0:
        parser.error(f"--window must be 0 or more, got {args.window}")
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv") if args.suite_results else None
    peaks = None if summary is None else best_tuned(summary)["lr"]  # each tuned peak
    given = None
    if args.candidates:
        try:
            given = [f"{float(lr):.6g}" for lr in args.candidates.split(",")]
        except ValueError:
            parser.error(f"--candidates must be comma-separated LRs, got {args.candidates!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(out / "oracle.csv", dtype={"candidate": str}) if (
        out / "oracle.csv").is_file() else None  # fmt: skip
    have = set() if done is None else set(map(tuple, done[COLUMNS[:3]].values.tolist()))
    jobs = []
    for entry in suite.entries:
        folder = Path(args.suite_results or out) / entry.name  # where compare puts it
        folder.mkdir(parents=True, exist_ok=True)
        entry = with_inline_spec(entry, folder)
        candidates = given or factor_two_grid(*(entry.lr_range or suite.protocol.lr_range))
        if args.window is not None:
            if entry.name not in peaks.index:
                parser.error(f"--suite-results has no tuned schedule for {entry.name}")
            peak = float(peaks[entry.name])
            candidates = [
                c for c in candidates if abs(math.log2(float(c) / peak)) < args.window + 0.5
            ]
        outside = [c for c in candidates if not SWEEP_RULE.lr_min <= float(c) <= SWEEP_RULE.lr_max]
        if outside:
            parser.error(
                f"candidates must be in [{SWEEP_RULE.lr_min}, {SWEEP_RULE.lr_max}], "
                f"the sweep rule's LR range; got {', '.join(outside)}"
            )
        for seed in suite.protocol.eval_seeds:
            task = entry.run.task(seed, args.start_lr)
            jobs += [(entry.name, task, c) for c in [*candidates, VALLEY]
                     if (entry.name, c, seed) not in have]  # fmt: skip
    rows = [] if done is None else done.to_dict("records")
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            atomic_write_csv(out / "oracle.csv", pd.DataFrame(rows, columns=COLUMNS))
    table = pd.DataFrame(rows, columns=COLUMNS)
    text = report(table, summary)
    atomic_write_text(out / "oracle.md", text)
    print(text)


def report(table: pd.DataFrame, summary: pd.DataFrame | None) -> str:
    """Per workload: the best held candidate, sweepvalley, and their ratios to the best
    tuned schedule of the suite's `summary` (when given), by each workload's score."""
    # The score each workload ranks by (its metric, from the suite's summary): the test
    # loss, or the test error 1 - accuracy; lower is better.
    metrics = (
        {} if summary is None else dict(zip(summary["workload"], summary["metric"], strict=True))
    )
    table = table.assign(
        score=[
            score(row.test_loss, row.test_accuracy, metrics.get(row.workload, "loss"))
            for row in table.itertuples()
        ]
    )
    means = table.groupby(["workload", "candidate"])[["score", "lr"]].mean().reset_index()
    grid = means[means["candidate"] != VALLEY]
    best = grid.loc[grid.groupby("workload")["score"].idxmin()].set_index("workload")
    valley = means[means["candidate"] == VALLEY].set_index("workload")
    # a best candidate at the lowest or highest LR tried: a wider window could do better
    tried = grid.groupby("workload")["lr"].agg(["min", "max"]).reindex(best.index)
    edge = (best["lr"] == tried["min"]) | (best["lr"] == tried["max"])
    rows = pd.DataFrame({
        "oracle lr": best["lr"],
        "edge": np.where(edge, "yes", ""),
        "oracle score": best["score"],
        "valley lr": valley["lr"].reindex(best.index),
        "valley score": valley["score"].reindex(best.index),
    })  # fmt: skip
    rows.insert(0, "metric", [metrics.get(w, "loss") for w in rows.index])
    lines = ["# The rolled-back sweep's open-loop oracle", ""]
    if summary is not None:
        tuned = best_tuned(summary)["mean"]
        rows["oracle / tuned"] = rows["oracle score"] / tuned.reindex(rows.index)
        rows["valley / tuned"] = rows["valley score"] / tuned.reindex(rows.index)
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
