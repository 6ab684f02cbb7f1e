"""Choose a trained policy by the `validation` suite: the rule fixed in the preset
`prior_generalist` before training.

Each candidate policy runs every workload of the suite on its evaluation seeds from
one start LR (`--start-lr`, 1e-3: a policy on the LR prior does not read it), as
`lrpilot benchmark` runs a policy (the same `RunSpec`, the comparison's divergence
rule). Its score per workload is the workload's metric (the test loss, or the test
error 1 - accuracy), as a ratio to the best tuned schedule's mean in the suite's own
results (`--suite-results`, a finished `lrpilot benchmark --suite validation` folder).
The chosen candidate has the lowest median ratio over the workloads; a tie (medians
within 0.001) goes to the lower worst ratio, then to the candidate listed first. The
suite's fixed rules from the same start (`--rules`, e.g. `priorhold`) are listed beside
them from the suite's results, for the comparison the preset names.

    python experiments/studies/prior_generalist/select_policy.py --run runs/prior_generalist \\
        --suite-results runs/validation --jobs 2

The candidates are every `evaluated/<timesteps>/` policy of `--run` (in the order of
their timesteps) and any `--candidate NAME=PATH`. Writes `selection.csv` (one row per
candidate, workload and seed; a rerun reuses the rows of the same policy files) and
`selection.md` into `--out` (default: the run folder's `selection/`), with the suite's
inline workloads as files in its `workloads/`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from lrpilot.agents.policy_file import policy_from_bytes, resolve_policy_path
from lrpilot.errors import ConfigError
from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.run_cache import RunSpec, execute
from lrpilot.experiments.scoring import score, score_ratio
from lrpilot.experiments.suite import load_suite, with_inline_spec
from lrpilot.files import atomic_write_csv, atomic_write_text
from lrpilot.lm.trace import trace_accuracy, trace_scores
from lrpilot.processes import forkserver_context, init_worker

COLUMNS = ["candidate", "policy_sha256", "workload", "seed", "test_loss", "test_accuracy"]
TIE = 0.001  # medians this close are a tie, broken by the worst ratio


def one_run(job: tuple) -> dict:
    name, policy_bytes, spec, workload = job
    torch.set_num_threads(1)
    trace = execute(spec, policy_bytes)
    _, test_loss = trace_scores(trace)
    return {"candidate": name, "policy_sha256": spec.policy_sha256, "workload": workload,
            "seed": spec.seed, "test_loss": test_loss,
            "test_accuracy": trace_accuracy(trace)}  # fmt: skip


def candidates(run: str | None, named: list[str], rules: list[str], parser) -> dict[str, bytes]:
    """Each candidate's name and policy file bytes (checked now, not in a worker)."""
    found: dict[str, bytes] = {}
    if run is not None:
        folder = Path(run) / "evaluated"
        if not folder.is_dir():
            parser.error(f"--run has no evaluated/ folder of policies: {str(folder)!r}")
        steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        for t in steps:
            path = folder / str(t) / "policy.safetensors"
            if not path.is_file():
                parser.error(f"--run's evaluated/{t}/ holds no policy.safetensors")
            found[f"t{t}"] = path.read_bytes()
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--candidate must be NAME=PATH, got {item!r}")
        if name in found or name in rules:
            parser.error(f"--candidate {name!r} is named twice (or is one of --rules)")
        try:
            found[name] = resolve_policy_path(path).read_bytes()
        except ConfigError as error:
            parser.error(str(error))
    if not found:
        parser.error("no candidates: give --run (with evaluated/ policies) or --candidate")
    for name, data in found.items():
        policy_from_bytes(data, name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a training run folder: its evaluated/ policies compete")
    parser.add_argument("--candidate", action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--suite", default="validation", help="a suite name or TOML path")
    parser.add_argument("--suite-results", required=True, help="the suite's benchmark folder")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument("--rules", default="priorhold,priorstop", help="rules to list beside")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--out", help="folder for selection.csv and .md (default RUN/selection)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.out is None and args.run is None:
        parser.error("give --out (or --run, whose selection/ folder is the default)")
    rules = [r for r in args.rules.split(",") if r]
    found = candidates(args.run, args.candidate, rules, parser)
    suite = load_suite(args.suite)
    summary_path = Path(args.suite_results) / "summary.csv"
    if not summary_path.is_file():
        parser.error(f"--suite-results has no summary.csv: {str(summary_path)!r}")
    summary = pd.read_csv(summary_path)
    tuned = best_tuned(summary)["mean"]
    missing = [e.name for e in suite.entries if e.name not in tuned.index]
    if missing:
        parser.error(f"--suite-results has no tuned schedule for {', '.join(missing)}")
    out = Path(args.out or Path(args.run) / "selection")
    out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(out / "selection.csv") if (out / "selection.csv").is_file() else None
    have = set() if done is None else set(map(tuple, done[COLUMNS[1:4]].values.tolist()))
    jobs = []
    for name, data in found.items():
        digest = hashlib.sha256(data).hexdigest()
        for entry in suite.entries:
            (out / "workloads" / entry.name).mkdir(parents=True, exist_ok=True)
            entry = with_inline_spec(entry, out / "workloads" / entry.name)
            for seed in suite.protocol.eval_seeds:
                if (digest, entry.name, seed) in have:
                    continue
                task = entry.run.task(seed, args.start_lr)
                spec = RunSpec("policy", "policy", args.start_lr, seed, task.workload.to_dict(),
                               task.steps, task.eval_every, "cpu",
                               policy_sha256=digest)  # fmt: skip
                jobs.append((name, data, spec, entry.name))
    rows = [] if done is None else done.to_dict("records")
    context = forkserver_context("lrpilot.experiments.run_cache")
    with ProcessPoolExecutor(args.jobs, context, init_worker, (os.getpid(),)) as pool:
        for row in pool.map(one_run, jobs):
            rows.append(row)
            atomic_write_csv(out / "selection.csv", pd.DataFrame(rows, columns=COLUMNS))
    table = pd.DataFrame(rows, columns=COLUMNS)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in found.items()}
    workloads = [entry.name for entry in suite.entries]
    keep = [digests.get(c) == d and w in workloads for c, d, w in
            zip(table.candidate, table.policy_sha256, table.workload, strict=True)]  # fmt: skip
    table = table[keep]
    metrics = dict(zip(summary["workload"], summary["metric"], strict=True))
    table = table.assign(score=[score(r.test_loss, r.test_accuracy, metrics[r.workload])
                                for r in table.itertuples()])  # fmt: skip
    means = table.groupby(["candidate", "workload"], sort=False)["score"].mean().unstack()
    ratios = means.apply(
        lambda column: column.map(lambda value: score_ratio(value, tuned[column.name]))
    )
    for rule in rules:
        rows_of = summary[summary["label"] == f"{rule} (start {args.start_lr:.3g})"]
        if rows_of.empty:
            parser.error(f"--suite-results has no {rule!r} from {args.start_lr:g}")
        ratios.loc[rule] = rows_of.set_index("workload")["ratio_to_best"].reindex(ratios.columns)
    board = pd.DataFrame({"median": ratios.median(axis=1), "worst": ratios.max(axis=1)})
    board = pd.concat([board, ratios.round(4)], axis=1).reindex(list(found) + rules)
    learned = board.loc[list(found)]
    lowest = learned["median"].min()
    tied = learned[learned["median"] <= lowest + TIE]
    chosen = tied["worst"].idxmin()
    lines = [
        f"# Selection on `{suite.name}` (ratio of each workload's mean score to its best "
        f"tuned schedule; start {args.start_lr:g})",
        "",
        markdown_table(board.round(4).reset_index(names="candidate")),
        "",
        f"Chosen: **{chosen}** (median {board.loc[chosen, 'median']:.4f}, worst "
        f"{board.loc[chosen, 'worst']:.4f}): the lowest median, ties within {TIE} "
        "to the lower worst.",
    ]
    atomic_write_text(out / "selection.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
