"""Benchmark every workload family: lrpilot's training loop against a plain PyTorch loop,
and the cost of the test loss.

For each family (the built-in `tiny` byte GPT, `classify`, the Hugging Face causal LM
when `transformers` is installed, and the user workload of
`examples/custom_workload.py`), on one torch thread, in one process:

1. throughput: tokens (or examples) per second of `TrainingRun.train` against a plain
   loop over the same model, optimizer, batches and loss (zero_grad, backward,
   gradient clipping, step), both evaluating the validation loss after every interval;
   the two alternate interval by interval, the first of each pair swapped every time,
   and the ratio of their medians is printed (target >= 0.97);
2. the test loss's share of a run: the seconds of `test()` (the median of three calls)
   over those of a whole run of the workload's budget plus `test()` (target <= 5%).

    python experiments/benchmarks/bench_workloads.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from lrpilot.lm.run import StepRun
from lrpilot.lm.workloads import load_workload

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {
    "byte_gpt (tiny)": "tiny",
    "text_classification (classify)": "classify",
    "hf_causal_lm (gpt2)": str(ROOT / "examples" / "workloads" / "hf_causal_lm.toml"),
    "python (examples/custom_workload.py)": f"{ROOT / 'examples' / 'custom_workload.py'}:make_run",
}


def plain_interval(run: StepRun, steps: int, lr: float) -> int:
    """`steps` steps of a plain PyTorch loop over the run's parts; the items consumed."""
    parts, items = run.parts, 0
    params = run.params
    clip = parts.grad_clip if parts.grad_clip is not None else math.inf
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    for _ in range(steps):
        batch = next(run._batches)
        loss = parts.loss(batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        run.optimizer.step()
        items += run._items_in(batch)
    run.evaluate()  # as train() does after every interval
    return items


def throughput(spec: str, intervals: int, lr: float) -> tuple[float, float]:
    """Median items/s of `train` and of the plain loop, alternated interval by interval."""
    workload = load_workload(spec)
    run = workload.make_run(0, "cpu")
    steps = workload.eval_every
    run.train(steps, lr)  # warm-up
    plain_interval(run, steps, lr)
    ours, plain = [], []
    for interval in range(intervals):
        order = ("ours", "plain") if interval % 2 == 0 else ("plain", "ours")
        for kind in order:
            start = time.perf_counter()
            if kind == "ours":
                items = run.train(steps, lr).tokens
            else:
                items = plain_interval(run, steps, lr)
            (ours if kind == "ours" else plain).append(items / (time.perf_counter() - start))
    return statistics.median(ours), statistics.median(plain)


def test_share(spec: str, lr: float) -> tuple[float, float, int]:
    """Seconds of a whole run of the workload's budget, of its `test()`, and its items."""
    workload = load_workload(spec)
    run = workload.make_run(0, "cpu")
    start = time.perf_counter()
    for _ in range(workload.steps // workload.eval_every):
        run.train(workload.eval_every, lr)
    training = time.perf_counter() - start
    times = []
    for _ in range(3):  # the median of three: one slow call is the machine, not the test
        run.train(1, lr)  # a new step, so no workload can reuse its last score
        start = time.perf_counter()
        result = run.test()
        times.append(time.perf_counter() - start)
    return training, statistics.median(times), result.items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", type=int, default=10, help="timed intervals of each")
    parser.add_argument("--lr", type=float, default=1e-3, help="constant LR of the runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'family':38} {'ours items/s':>13} {'plain items/s':>14} {'ratio':>6} "
        f"{'run s':>7} {'test s':>7} {'test share':>10} {'test items':>10}"
    )
    for name, spec in FAMILIES.items():
        try:
            load_workload(spec).make_run(0, "cpu")
        except Exception as error:  # an optional extra not installed: say so, go on
            print(f"{name:38} skipped: {error}")
            continue
        ours, plain = throughput(spec, args.intervals, args.lr)
        training, testing, items = test_share(spec, args.lr)
        share = testing / (training + testing)
        print(
            f"{name:38} {ours:13.0f} {plain:14.0f} {ours / plain:6.3f} "
            f"{training:7.2f} {testing:7.3f} {share:10.2%} {items:10d}"
        )
    print("targets: ratio >= 0.97, test share <= 5%")


if __name__ == "__main__":
    main()
