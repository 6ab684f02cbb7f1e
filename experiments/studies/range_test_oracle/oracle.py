"""What any controller on the online range test can reach: an open-loop oracle.

For every workload of a suite, the range test (`lrpilot.agents.controllers.
RANGE_TEST_RULE`: from a tenth of the start LR, up by x2.5 per interval, a 20%
cooldown) is run with a scripted stop: rise for `k` intervals, back off by `b` once,
then hold. Each (k, b) runs on the suite's evaluation seeds; the oracle is the best
(k, b) in hindsight, per workload, by mean test loss over those seeds. No stop-and-hold
controller within the (k, b) grid tried can beat it on these seeds, so it bounds what a
learned stop of that shape can gain, and its ratio to the best tuned schedule (from the suite's own
results, `--suite-results`) says whether the mechanism can reach the targets at all.

    python experiments/studies/range_test_oracle/oracle.py --suite validation \
        --suite-results runs/validation --jobs 2

Writes `oracle.csv` (every workload x k x b x seed) and `oracle.md` (per workload: the
best stop, its mean score, and its ratio to the best tuned schedule's; the score is the
test loss, or the test error 1 - accuracy where the workload's metric is accuracy) into
`--out` (default: this folder). Re-running reuses the rows already in `oracle.csv`.

On a suite of large runs, `--window 1` tries only the stop whose held LR is nearest the
workload's best tuned peak and one stop on each side (on `validation` every best stop
lay there); `oracle.md` marks a best stop at the edge of what was tried, where a wider
window could find a better one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrpilot.agents.controllers import RANGE_TEST_RULE, action_for_factor
from lrpilot.env.actions import ActionRule
from lrpilot.env.lr_env import EnvConfig
from lrpilot.experiments.replay import run_controller
from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score
from lrpilot.experiments.suite import load_suite, with_inline_spec
from lrpilot.files import atomic_write_csv, atomic_write_json, atomic_write_text
from lrpilot.lm.trace import trace_accuracy, trace_scores

HERE = Path(__file__).resolve().parent
COLUMNS = ["workload", "stop", "backoff", "seed", "test_loss", "test_accuracy", "lrs", "val_losses"]


class ScriptedStop:
    """After the start (the first action, which the range test ignores), rise `stop`
    times, back off by `backoff` once, then hold."""

    def __init__(self, stop: int, backoff: float, rule: ActionRule = RANGE_TEST_RULE) -> None:
        self.stop, self.backoff, self.rule, self.acted = stop, backoff, rule, 0

    def act(self, observation):
        self.acted += 1
        rises_done = self.acted - 2  # the action now sets the LR after this many rises
        if rises_done < self.stop:
            wanted = self.rule.rise_factor
        else:
            wanted = 1.0 / self.backoff if rises_done == self.stop else 1.0
        return action_for_factor(self.rule, wanted)


def one_run(job: tuple) -> dict:
    name, task, stop, backoff, rule = job
    config = EnvConfig(device="cpu", action=rule)
    trace = run_controller(ScriptedStop(stop, backoff, rule), task, config)
    _, test_loss = trace_scores(trace)
    return {"workload": name, "stop": stop, "backoff": backoff, "seed": task.seed,
            "test_loss": test_loss, "test_accuracy": trace_accuracy(trace),
            # the LR and validation loss of every interval, for studying stop rules
            "lrs": " ".join(f"{v:.6g}" for v in trace["lr"]),
            "val_losses": " ".join(f"{v:.6g}" for v in trace["val_loss"])}  # fmt: skip


def stops_near(stops: list[int], rule: ActionRule, start_lr: float, peak: float, window: int):
    """The stop of `stops` (sorted) whose held LR (no back-off) is nearest `peak` in log
    distance, with `window` stops of `stops` on each side."""
    first = start_lr * rule.range_start
    held = [min(rule.lr_max, max(rule.lr_min, first) * rule.rise_factor**k) for k in stops]
    nearest = int(np.argmin([abs(np.log(lr / peak)) for lr in held]))
    return stops[max(0, nearest - window) : nearest + window + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="validation", help="a suite name or TOML path")
    parser.add_argument("--suite-results", help="that suite's benchmark folder (tuned best)")
    parser.add_argument("--stops", default="1,2,3,4,5,6,7,8", help="rise intervals to try")
    parser.add_argument("--backoffs", default="1,2", help="back-off factors to try")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument(
        "--start-lrs",
        help="a design variant: a CSV of each workload's start LR (columns workload, "
        "start_lr; e.g. the LR prior's, lr_prior/fit_prior.py), in place of --start-lr",
    )
    parser.add_argument(
        "--range-start",
        type=float,
        default=RANGE_TEST_RULE.range_start,
        help="a design variant: the range test starts at this fraction of the start LR",
    )
    parser.add_argument(
        "--rise-factor",
        type=float,
        default=RANGE_TEST_RULE.rise_factor,
        help="a design variant: the rise per interval",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="try only the stop whose held LR is nearest the best tuned peak (from "
        "--suite-results) and this many stops of --stops on each side",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", default=str(HERE), help="folder for oracle.csv and .md")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    if args.window is not None and not args.suite_results:
        parser.error("--window needs --suite-results (the best tuned peak of each workload)")
    summary = pd.read_csv(Path(args.suite_results) / "summary.csv") if args.suite_results else None
    stops = sorted(int(s) for s in args.stops.split(","))
    backoffs = [float(b) for b in args.backoffs.split(",")]
    if any(not 1 <= b <= RANGE_TEST_RULE.continuous_max_factor for b in backoffs):
        parser.error(f"back-offs must be in [1, {RANGE_TEST_RULE.continuous_max_factor}]")
    if args.window is not None and args.window < 0:
        parser.error(f"--window must be 0 or more, got {args.window}")
    start_lrs = {}
    if args.start_lrs:
        given = pd.read_csv(args.start_lrs)
        if not {"workload", "start_lr"} <= set(given.columns):
            parser.error(f"--start-lrs needs columns workload and start_lr, got {list(given)}")
        start_lrs = dict(zip(given["workload"], given["start_lr"], strict=True))
        missing = [e.name for e in suite.entries if e.name not in start_lrs]
        if missing:
            parser.error(f"--start-lrs has no start LR for {', '.join(missing)}")
        bad = {w: v for w, v in start_lrs.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            parser.error(f"--start-lrs must be positive finite LRs, got {bad}")
    peaks = None if summary is None else best_tuned(summary)["lr"]  # each tuned peak
    if peaks is not None and args.window is not None:
        missing = [e.name for e in suite.entries if e.name not in peaks.index]
        if missing:
            parser.error(f"--suite-results has no tuned schedule for {', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the design the rows of oracle.csv were run with: a rerun into the same folder
    # resumes it, and refuses another one
    design = {"range_start": args.range_start, "rise_factor": args.rise_factor,
              "start_lr": args.start_lr, "start_lrs": start_lrs}  # fmt: skip
    if (out / "design.json").is_file() and json.loads((out / "design.json").read_text()) != design:
        parser.error(
            f"{out} holds an oracle of another design ({out / 'design.json'}): give another --out"
        )
    atomic_write_json(out / "design.json", design)
    done = pd.read_csv(out / "oracle.csv") if (out / "oracle.csv").is_file() else None
    have = set() if done is None else set(map(tuple, done[COLUMNS[:4]].values.tolist()))
    rule = dataclasses.replace(
        RANGE_TEST_RULE, range_start=args.range_start, rise_factor=args.rise_factor
    )
    jobs = []
    for entry in suite.entries:
        folder = Path(args.suite_results or out) / entry.name  # where compare puts it
        folder.mkdir(parents=True, exist_ok=True)
        entry = with_inline_spec(entry, folder)
        start_lr = float(start_lrs.get(entry.name, args.start_lr))
        tried = stops
        if args.window is not None:
            tried = stops_near(stops, rule, start_lr, float(peaks[entry.name]), args.window)
        for seed in suite.protocol.eval_seeds:
            task = entry.run.task(seed, start_lr)
            jobs += [(entry.name, task, k, b, rule) for k in tried for b in backoffs
                     if (entry.name, k, b, seed) not in have]  # fmt: skip
    rows = [] if done is None else done.to_dict("records")
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            atomic_write_csv(out / "oracle.csv", pd.DataFrame(rows, columns=COLUMNS))
    table = pd.DataFrame(rows, columns=COLUMNS)
    # The score each workload ranks by (its metric, from the suite's summary): the test
    # loss, or the test error 1 - accuracy; lower is better.
    metrics = (
        {} if summary is None else dict(zip(summary["workload"], summary["metric"], strict=True))
    )
    table["score"] = [
        score(row.test_loss, row.test_accuracy, metrics.get(row.workload, "loss"))
        for row in table.itertuples()
    ]
    means = table.groupby(["workload", "stop", "backoff"])["score"].mean().reset_index()
    best = means.loc[means.groupby("workload")["score"].idxmin()].set_index("workload")
    # a best stop at the lowest (but not 0) or highest stop tried: more stops could do better
    tried = table.groupby("workload")["stop"].agg(["min", "max"]).reindex(best.index)
    at_edge = ((best["stop"] == tried["min"]) & (best["stop"] > 0)) | (best["stop"] == tried["max"])
    best["edge"] = np.where(at_edge, "yes", "")
    if summary is not None:
        tuned = best_tuned(summary)["mean"]
        best["ratio to best tuned"] = best["score"] / tuned.reindex(best.index)
    lines = ["# The range test's open-loop oracle", "", markdown_table(best.reset_index().round(4))]
    if "ratio to best tuned" in best:
        ratios = best["ratio to best tuned"]
        lines += ["", f"Median ratio {np.median(ratios):.4f}, worst {ratios.max():.4f}."]
        # one fixed (stop, back-off) for every workload: a rule that does not look
        fixed = means.assign(ratio=means["score"] / tuned.reindex(means["workload"]).to_numpy())
        fixed = fixed.groupby(["stop", "backoff"])["ratio"].agg(["median", "max", "count"])
        lines += [
            "",
            "Each stop held on every workload (ratios to the best tuned; count: workloads):",
            "",
            markdown_table(fixed.rename(columns={"max": "worst"}).reset_index().round(4)),
        ]
    atomic_write_text(out / "oracle.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
