"""Benchmark the Ray backend against local processes on the same comparison.

Runs one `lrpilot compare` (constant and WSD on a 3-point grid, 3 evaluation seeds,
the random controller; 400-step runs of the tiny model) in one process, alternately
with 2 worker processes and on a local Ray instance with 2 CPUs that starts and
stops inside the timed call, each into a fresh folder, in the order P R R P (so a
drift in the machine's speed cancels). Prints every wall time, the ratio of the
totals (target: Ray within 1.15x of processes) and checks that all results are equal.

    python experiments/benchmarks/bench_backends.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from lrpilot.experiments.compare import CompareConfig, compare
from lrpilot.ray_backend import RayBackend


def timed_compare(config: CompareConfig, out: Path, backend: RayBackend | None) -> float:
    start = time.perf_counter()
    compare(config, out, progress=False, backend=backend)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="LM steps per run")
    parser.add_argument("--workers", type=int, default=2, help="processes, and Ray CPUs")
    args = parser.parse_args()
    config = CompareConfig(
        schedules=("constant", "wsd"),
        controllers=("random",),
        steps=args.steps,
        eval_every=20,
        lr_grid=3,
        lr_range=(2e-3, 8e-3),
        tune_seeds=(0,),
        eval_seeds=(1, 2, 3),
        start_lrs=(1e-3,),
        jobs=args.workers,
    )
    order = ["processes", "ray", "ray", "processes"]
    walls: dict[str, list[float]] = {"processes": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = []
        for i, name in enumerate(order):
            out = Path(tmp) / f"{i}-{name}"
            backend = RayBackend(num_cpus=args.workers) if name == "ray" else None
            walls[name].append(timed_compare(config, out, backend))
            outputs.append(out)
        equal = all(
            _table(out, name).equals(_table(outputs[0], name))
            for out in outputs[1:]
            for name in ("results.csv", "summary.csv")
        )
        runs = len(list((outputs[0] / "runs").glob("*/run.json")))
    ratio = sum(walls["ray"]) / sum(walls["processes"])
    print(f"compare of {runs} runs of {args.steps} steps, {args.workers} workers, order P R R P")
    print("processes:", ", ".join(f"{w:.1f} s" for w in walls["processes"]))
    print("local Ray:", ", ".join(f"{w:.1f} s" for w in walls["ray"]), "(Ray start/stop included)")
    print(f"Ray / processes wall time (totals): {ratio:.3f} (target <= 1.15)")
    print(f"results equal: {equal}")
    if not equal:
        raise SystemExit("the backends' results differ")


def _table(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name).drop(columns="seconds", errors="ignore")


if __name__ == "__main__":
    main()
