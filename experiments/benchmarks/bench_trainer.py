"""Benchmark the LM substrate.

1. Overhead: tokens/s of `Trainer.run_interval` against a minimal plain-PyTorch loop
   on the same model, data, batch, validation and thread count, in one process,
   measured in alternation; prints the ratio (target >= 0.97).
2. The `tiny` preset: wall time of a 400-step run with evaluation every 20 steps on
   one core (target <= 8 s), and the final validation loss of the best constant LR
   on a small grid (target <= 2.0 nats/byte on pydoc).

    python experiments/benchmarks/bench_trainer.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lrpilot.experiments.runs import RunConfig, run_schedule
from lrpilot.lm.corpus import load_corpus
from lrpilot.lm.model import GPT, next_byte_loss
from lrpilot.lm.trainer import Trainer


def plain_loop_tokens_per_second(trainer: Trainer, intervals: int, steps: int, lr: float) -> float:
    """The same training written as a bare loop: sample, forward, backward, clip, AdamW.

    It reuses the trainer's model, optimizer, batch sampler and validation windows, so both
    sides do exactly the same arithmetic; only the bookkeeping of `run_interval` is missing.
    """
    model: GPT = trainer.model
    optimizer = trainer.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    start = time.perf_counter()
    tokens = 0
    for _ in range(intervals):
        for _ in range(steps):
            inputs, targets = trainer.sample_batch()
            loss = next_byte_loss(model(inputs), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += inputs.numel()
        with torch.no_grad():
            model.eval()
            val = trainer._val_batch
            next_byte_loss(model(val[:, :-1]), val[:, 1:]).item()
            model.train()
    return tokens / (time.perf_counter() - start)


def trainer_tokens_per_second(trainer: Trainer, intervals: int, steps: int, lr: float) -> float:
    start = time.perf_counter()
    tokens = sum(trainer.run_interval(steps, lr).tokens for _ in range(intervals))
    return tokens / (time.perf_counter() - start)


def overhead(repeats: int, intervals: int, steps: int) -> None:
    corpus = load_corpus("pydoc")
    config = RunConfig(model="tiny", device="cpu").trainer_config()
    trainer = Trainer(corpus, config)
    trainer_tokens_per_second(trainer, 1, steps, 3e-3)  # warm-up
    ours, plain = [], []
    for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
        ours.append(trainer_tokens_per_second(trainer, intervals, steps, 3e-3))
        plain.append(plain_loop_tokens_per_second(trainer, intervals, steps, 3e-3))
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print(f"threads                      {torch.get_num_threads()}")
    print(f"Trainer.run_interval tokens/s {ours_median:10.0f}")
    print(f"plain PyTorch loop tokens/s   {plain_median:10.0f}")
    print(f"ratio (target >= 0.97)        {ours_median / plain_median:10.3f}")


def tiny_preset(lrs: list[float]) -> None:
    results = []
    for lr in lrs:
        config = RunConfig(schedule="constant", lr=lr, steps=400, eval_every=20, device="cpu")
        start = time.perf_counter()
        trace = run_schedule(config, progress=False)
        seconds = time.perf_counter() - start
        final = float(trace["val_loss"].iloc[-1])
        results.append((final, lr, seconds))
        print(f"tiny constant lr={lr:.0e}: final val_loss {final:.4f}, {seconds:.2f} s")
    best_loss, best_lr, _ = min(results, key=lambda r: r[0] if math.isfinite(r[0]) else math.inf)
    print(
        f"tiny 400-step run, one core, seconds (target <= 8) "
        f"{statistics.median(r[2] for r in results):.2f} (median)"
    )
    print(f"tiny best constant LR {best_lr:.0e}: val_loss (target <= 2.0) {best_loss:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating measurements")
    parser.add_argument("--intervals", type=int, default=5, help="intervals per measurement")
    parser.add_argument("--steps", type=int, default=20, help="steps per interval")
    parser.add_argument("--lrs", default="2e-3,3e-3,4e-3,6e-3", help="constant LRs for tiny")
    parser.add_argument("--skip-tiny", action="store_true", help="only the overhead ratio")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overhead(args.repeats, args.intervals, args.steps)
    if not args.skip_tiny:
        tiny_preset([float(x) for x in args.lrs.split(",")])


if __name__ == "__main__":
    main()
