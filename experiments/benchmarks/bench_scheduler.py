"""Benchmark what `PolicyScheduler` costs a training loop, on a 16.8M-parameter MLP.

The model is an MLP (1024 -> 4096 -> 1024 -> 4096 -> 1024, GELU; 16.8M parameters)
trained with AdamW on random data on the CPU, one torch thread. The baseline is the
same loop at a constant LR: it keeps each step's loss and evaluates a fixed
validation batch after every interval too, so the difference is the scheduler's own
work (its optimizer hooks: the gradient norm at every step, the sampled update
ratio at each interval's end; `step()`; `observe()` and the policy). Against the
baseline, with a target of at most 1% each:

- **time per step**: the two loops alternate in one process, one evaluation interval
  (20 steps and an evaluation) at a time, the first of each pair swapped every
  interval so neither gets the warmer cache; the figure is the median, over the pairs
  of intervals run back to back, of the ratio of their times. On a machine shared
  with other work that ratio moves by several percent either way from run to run
  (on the project's shared 2-core machine, interval times varied by 15%), so the
  script also times the scheduler's own calls inside the policy's loop (the median
  over intervals of their total, per step) and divides that by the baseline's time
  per step. Most of it is the gradient norm
  of every step, one read of all the gradients; a loop that clips its gradients has
  that norm already and can pass it (`observe(..., grad_norm=)` with
  `PolicyScheduler(..., measure_grad_norm=False)`), so the figure without it is
  printed too.
- **extra peak memory**, measured two ways:
  1. the bytes of every tensor the scheduler allocates: a `TorchDispatchMode` counts
     the new tensors (views and in-place results excluded) of every scheduler call
     (its two optimizer hooks, `step()`, `observe()`) over two intervals; the
     scheduler's extra memory at any moment is at most what it holds between calls
     (the update-ratio sample, during a step) plus the most one call allocates, and
     the figure is that sum over the baseline loop's peak RSS;
  2. peak RSS: each loop runs alone in a fresh subprocess (3 of each, alternating)
     and reports its peak resident set size, `VmHWM` of /proc/self/status
     (tracemalloc does not see torch's allocations, and on Linux `ru_maxrss` carries
     the parent's peak over exec); the figure compares the medians. The
     subprocesses run with `MALLOC_MMAP_THRESHOLD_=65536`, so that glibc maps every
     tensor of 64 KiB or more on its own and unmaps it when freed: otherwise the
     heap's reuse of freed memory hides or inflates tens of MiB at random. A third
     loop, with the exact update ratio (a copy of all 67 MB of weights at each
     interval's end, which `SampledUpdateRatio` avoids), shows the size of difference
     the measurement sees.

The rolled-back LR sweep (`ActionRule.sweep_fraction`, here `SWEEP_RULE`'s 4%) is
measured on the same model as a `StepRun` (`lrpilot.lm.run`): one run of
`intervals * interval-steps` steps without it, and one whose first 4% of those steps
are the sweep (snapshot, steps, restore) and the rest training. Printed as ratios to
the run without it: the sweep's own time (its steps included), the whole run's time,
and the peak RSS of each, measured as above in fresh processes over two intervals
(the snapshot holds one copy of the weights and of AdamW's two moments: three times
the weights' 67 MB).

    python experiments/benchmarks/bench_scheduler.py            # about 6 minutes on 2 cores
    python experiments/benchmarks/bench_scheduler.py --intervals 4 --memory-repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lrpilot.agents import load_policy, measurements
from lrpilot.agents.controllers import SWEEP_RULE
from lrpilot.agents.scheduler import UPDATE_RATIO_SAMPLE, PolicyScheduler
from lrpilot.lm.run import StepRun
from lrpilot.lm.run_parts import RunParts
from lrpilot.lm.sweep import sweep_lrs

LOOPS = ("constant", "policy", "policy_exact")  # the baseline, the default, a full copy
SWEEP_LOOPS = ("run", "run_sweep")  # a StepRun without and with the rolled-back sweep
# glibc serves every allocation of 64 KiB or more with its own mmap, and unmaps it when
# freed: peak RSS then follows the peak of live tensors, not the heap's reuse of them.
MALLOC_ENV = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}


def make_model(width: int, hidden: int) -> torch.nn.Module:
    layers = []
    for _block in range(2):
        layers += [torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width)]
        layers.append(torch.nn.GELU())
    return torch.nn.Sequential(*layers[:-1])


def make_loop(kind: str, args: argparse.Namespace, total_steps: int) -> Callable[[], None]:
    """One training loop of `kind`; calling what it returns trains one interval."""
    torch.manual_seed(0)
    model = make_model(args.width, args.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    x_val = torch.randn(args.batch_size, args.width, generator=generator)
    y_val = x_val.roll(1, dims=1)  # a target the model can learn

    @torch.no_grad()
    def evaluate() -> float:
        return float(torch.nn.functional.mse_loss(model(x_val), y_val))

    scheduler = None
    if kind != "constant":
        sample = None if kind == "policy_exact" else UPDATE_RATIO_SAMPLE
        scheduler = PolicyScheduler(
            optimizer,
            load_policy("tiny"),
            total_steps,
            args.interval_steps,
            initial_val_loss=evaluate(),
            update_ratio_sample=sample,
        )
    else:
        load_policy("tiny")  # the same modules and files in memory as the policy's loop

    def train_interval() -> None:
        losses = []
        for _step in range(args.interval_steps):
            x = torch.randn(args.batch_size, args.width, generator=generator)
            loss = torch.nn.functional.mse_loss(model(x), x.roll(1, dims=1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
        val_loss = evaluate()
        if scheduler is not None:
            scheduler.observe(losses, val_loss)
        else:
            float(torch.stack(losses).mean())  # what a loop logs: the same one sync

    train_interval.scheduler = scheduler
    return train_interval


def make_step_run(args: argparse.Namespace) -> StepRun:
    """The same model, data and optimizer as `make_loop`'s, as a `StepRun`."""
    torch.manual_seed(0)
    model = make_model(args.width, args.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    x_val = torch.randn(args.batch_size, args.width, generator=generator)

    def batches():
        while True:
            yield torch.randn(args.batch_size, args.width, generator=generator)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), x.roll(1, dims=1))

    def evaluate() -> float:
        return float(loss(x_val))

    parts = RunParts(model, optimizer, batches(), loss, evaluate, test_loss=evaluate)
    return StepRun(parts)


def run_with_sweep(args: argparse.Namespace, total_steps: int, sweep: bool) -> tuple[float, float]:
    """Seconds of the sweep (0 without one) and of the whole run of `total_steps`, its
    rest trained in intervals of `interval_steps` at the start LR."""
    run = make_step_run(args)
    sweep_steps = SWEEP_RULE.sweep_steps(total_steps) if sweep else 0
    start = time.perf_counter()
    if sweep_steps:
        run.sweep(sweep_lrs(sweep_steps, SWEEP_RULE.lr_min, SWEEP_RULE.lr_max))
    swept = time.perf_counter()
    while run.step < total_steps:
        run.train(min(args.interval_steps, total_steps - run.step), 1e-3)
    return swept - start, time.perf_counter() - start


def time_sweep(args: argparse.Namespace) -> dict[str, float]:
    """The sweep's seconds and the run's, with and without it (one warm-up run first)."""
    total_steps = args.intervals * args.interval_steps
    run_with_sweep(args, args.interval_steps, sweep=False)  # warm-up, not timed
    _, plain = run_with_sweep(args, total_steps, sweep=False)
    sweep, whole = run_with_sweep(args, total_steps, sweep=True)
    return {"plain": plain, "sweep": sweep, "whole": whole, "steps": total_steps}


def wrap_scheduler_calls(scheduler: PolicyScheduler, wrap: Callable) -> None:
    """Replace the scheduler's four calls (its two optimizer hooks, `step()` and
    `observe()`) by `wrap(call)`."""
    controller = scheduler.controller
    for name in ("_before_optimizer_step", "_after_optimizer_step"):
        setattr(controller, name, wrap(getattr(controller, name)))
    for name in ("step", "observe"):
        setattr(scheduler, name, wrap(getattr(scheduler, name)))


def time_loops(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per step of the constant-LR and the policy loops, alternating; and
    of the time inside the scheduler's calls, and inside its gradient norm."""
    total_steps = (args.intervals + 1) * args.interval_steps
    loops = {kind: make_loop(kind, args, total_steps) for kind in ("constant", "policy")}
    inside = {"inside": 0.0, "grad_norm": 0.0}  # seconds in this interval

    def timed(call, into: str = "inside"):
        def timed_call(*call_args, **call_kwargs):
            start = time.perf_counter()
            try:
                return call(*call_args, **call_kwargs)
            finally:
                inside[into] += time.perf_counter() - start

        return timed_call

    wrap_scheduler_calls(loops["policy"].scheduler, timed)
    # The pre-step hook's gradient norm (what a loop that clips can pass instead).
    measurements.total_norm = timed(measurements.total_norm, "grad_norm")
    for loop in loops.values():
        loop()  # warm-up interval, not timed
    times: dict[str, list[float]] = {kind: [] for kind in (*loops, *inside)}
    for interval in range(args.intervals):
        order = ("constant", "policy") if interval % 2 == 0 else ("policy", "constant")
        for kind in order:
            inside.update(inside=0.0, grad_norm=0.0)
            start = time.perf_counter()
            loops[kind]()
            times[kind].append((time.perf_counter() - start) / args.interval_steps)
            if kind == "policy":
                for part, seconds in inside.items():
                    times[part].append(seconds / args.interval_steps)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    # Each pair of intervals ran back to back, under the same load from other work.
    pairs = zip(times["policy"], times["constant"], strict=True)
    medians["paired_ratio"] = statistics.median(policy / constant for policy, constant in pairs)
    return medians


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM, of this address space only."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB (Linux)


def peak_rss_of_one_loop(args: argparse.Namespace) -> None:
    """The subprocess: train two intervals of one loop, print the peak RSS as JSON."""
    if args.memory_loop in SWEEP_LOOPS:
        run_with_sweep(args, 2 * args.interval_steps, sweep=args.memory_loop == "run_sweep")
    else:
        loop = make_loop(args.memory_loop, args, total_steps=2 * args.interval_steps)
        loop()
        loop()
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


class CountNewTensors(TorchDispatchMode):
    """Adds up the bytes of the new tensors the operations under it create."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in inputs:  # not a view, nor an in-place result
                    self.bytes += storage.nbytes()
        return result


def scheduler_allocations(args: argparse.Namespace) -> tuple[int, int]:
    """Over two intervals of the policy loop: the most bytes one scheduler call
    allocates, and the most the update-ratio estimator holds between calls."""
    loop = make_loop("policy", args, total_steps=2 * args.interval_steps)
    scheduler = loop.scheduler
    controller = scheduler.controller
    most_in_one_call, most_held = 0, 0

    def counted(method):
        def call(*call_args, **call_kwargs):
            nonlocal most_in_one_call, most_held
            with CountNewTensors() as counter:
                result = method(*call_args, **call_kwargs)
            most_in_one_call = max(most_in_one_call, counter.bytes)
            held = [*controller.update_ratio_estimator._values_before]
            held += [i for i in controller.update_ratio_estimator._indices if i is not None]
            most_held = max(most_held, sum(t.numel() * t.element_size() for t in held))
            return result

        return call

    wrap_scheduler_calls(scheduler, counted)
    loop()
    loop()
    return most_in_one_call, most_held


def peak_rss_of_loops(args: argparse.Namespace) -> dict[str, float]:
    """Median peak RSS of each loop, each run alone in fresh processes, alternating."""
    loops = (*LOOPS, *SWEEP_LOOPS)
    peaks: dict[str, list[int]] = {kind: [] for kind in loops}
    for repeat in range(args.memory_repeats):
        order = loops if repeat % 2 == 0 else tuple(reversed(loops))
        for kind in order:
            command = [sys.executable, __file__, "--memory-loop", kind]
            command += ["--interval-steps", str(args.interval_steps)]
            command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            command += ["--width", str(args.width), "--hidden", str(args.hidden)]
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, env=MALLOC_ENV
            ).stdout
            peaks[kind].append(json.loads(output.splitlines()[-1])["peak_rss_bytes"])
    return {kind: statistics.median(values) for kind, values in peaks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", type=int, default=10, help="timed intervals per loop")
    parser.add_argument("--interval-steps", type=int, default=20, help="steps per interval")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=1024, help="the MLP's input and output")
    parser.add_argument("--hidden", type=int, default=4096, help="its hidden width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--memory-repeats", type=int, default=3, help="processes per loop")
    parser.add_argument("--memory-loop", choices=(*LOOPS, *SWEEP_LOOPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_loop:
        peak_rss_of_one_loop(args)
        return

    model = make_model(args.width, args.hidden)
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    # Memory first: the subprocesses start while this process is still small.
    peaks = peak_rss_of_loops(args)
    most_in_one_call, most_held = scheduler_allocations(args)
    step_seconds = time_loops(args)
    sweep_seconds = time_sweep(args)

    time_overhead = step_seconds["paired_ratio"] - 1
    inside_overhead = step_seconds["inside"] / step_seconds["constant"]
    without_norm = step_seconds["inside"] - step_seconds["grad_norm"]
    without_norm_overhead = without_norm / step_seconds["constant"]
    allocated_overhead = (most_held + most_in_one_call) / peaks["constant"]
    rss_overhead = peaks["policy"] / peaks["constant"] - 1
    exact_overhead = peaks["policy_exact"] / peaks["constant"] - 1
    mib = 2**20
    print(f"model                                 MLP, {parameters / 1e6:.1f}M parameters")
    print(f"batch, threads                        {args.batch_size}, {args.threads}")
    print(f"timed intervals of {args.interval_steps} steps           {args.intervals} of each loop")
    print(f"constant LR, s per step (median)      {step_seconds['constant']:.4f}")
    print(f"PolicyScheduler, s per step           {step_seconds['policy']:.4f}")
    print(f"time overhead, paired (<= 1%)         {100 * time_overhead:+.2f}%")
    print(f"  in the scheduler's calls, s/step    {step_seconds['inside']:.5f}")
    print(f"  time overhead, measured inside      {100 * inside_overhead:+.2f}%")
    print(f"  of which the gradient norm, s/step  {step_seconds['grad_norm']:.5f}")
    print(f"  overhead without it (see below)     {100 * without_norm_overhead:+.2f}%")
    print(f"scheduler tensors: held during a step {most_held:,} bytes")
    print(f"  allocated by one call, at most      {most_in_one_call:,} bytes")
    print(f"  a full copy of the weights          {weight_bytes:,} bytes")
    print(f"constant LR, peak RSS MiB (median)    {peaks['constant'] / mib:.1f}")
    print(f"memory overhead, counted (<= 1%)      {100 * allocated_overhead:+.3f}%")
    print(f"PolicyScheduler, peak RSS MiB         {peaks['policy'] / mib:.1f}")
    print(f"memory overhead, RSS (<= 1%)          {100 * rss_overhead:+.2f}%")
    print(f"  with a full copy, peak RSS MiB      {peaks['policy_exact'] / mib:.1f}")
    print(f"  with a full copy, RSS overhead      {100 * exact_overhead:+.2f}%")
    print(f"peak RSS processes per loop           {args.memory_repeats}")
    print(f"rolled-back sweep: run of             {sweep_seconds['steps']} steps, 4% swept")
    print(f"  run without it, s                   {sweep_seconds['plain']:.2f}")
    plain = sweep_seconds["plain"]
    print(f"  the sweep's time / that run         {sweep_seconds['sweep'] / plain:.4f}")
    print(f"  run with it / without it, time      {sweep_seconds['whole'] / plain:.4f}")
    print(f"  run with it / without it, peak RSS  {peaks['run_sweep'] / peaks['run']:.4f}")
    print(f"  peak RSS without it, MiB            {peaks['run'] / mib:.1f}")


if __name__ == "__main__":
    main()
