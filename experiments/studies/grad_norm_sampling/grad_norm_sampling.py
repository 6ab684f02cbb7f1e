"""Whether the shipped policy can tell a cheaper gradient norm from the exact one.

`PolicyController` reads every gradient once per step for the mean gradient norm of
an interval: most of its time overhead (see `bench_scheduler.py`). Two cheaper
estimates of that mean are tried here, on the `tiny` workload (seed 5, batch 8,
40 steps, intervals of 10, start LR 3e-3) driven by the shipped policy through
`PolicyScheduler`:

- `every_2nd_step`: the norm of every second step of each interval;
- `sampled_elements`: every step's norm estimated from 4,096 elements per tensor
  (drawn once, from a fixed seed; smaller tensors whole), as `SampledUpdateRatio`
  samples the weights.

For each, the script prints the largest relative difference from the exact run in
the intervals' mean gradient norms and in the per-step LR path. (Both runs start
alike; once the LRs differ the two runs differ too, so the LR figure includes that.)

    python experiments/studies/grad_norm_sampling/grad_norm_sampling.py        # about 4 seconds
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from lrpilot.agents import load_policy
from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.settings import RunSettings

TASK = RunSettings("tiny", batch_size=8, steps=40, eval_every=10).task(5, 3e-3)
SAMPLE = 4096


def sampled_norm(grads: list[torch.Tensor], indices: list[torch.Tensor | None]) -> float:
    """The 2-norm of `grads` from the elements at `indices` (None: the whole tensor)."""
    total = 0.0
    for grad, index in zip(grads, indices, strict=True):
        flat = grad.reshape(-1)
        if index is None:
            total += float(flat.pow(2).sum())
        else:
            total += float(flat[index].pow(2).sum()) * flat.numel() / index.numel()
    return math.sqrt(total)


def drive(estimate: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-step LRs and per-interval mean gradient norms of one run with `estimate`."""
    run = TASK.make_run("cpu")
    scheduler = PolicyScheduler(
        run.optimizer, load_policy("tiny"), TASK.steps, TASK.eval_every,
        initial_val_loss=run.evaluate(), measure_grad_norm=False,
    )  # fmt: skip
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(0)
    indices = [
        torch.randint(p.numel(), (SAMPLE,), generator=generator) if p.numel() > SAMPLE else None
        for p in params
    ]
    lrs, interval_norms, norms, losses = [], [], [], []
    for step in range(1, TASK.steps + 1):
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.model.train()
        loss = run.parts.loss(next(run._batches))
        loss.backward()
        if estimate == "sampled_elements":
            norm = sampled_norm([p.grad for p in params], indices)
        exact = torch.nn.utils.clip_grad_norm_(params, run.parts.grad_clip).item()
        if estimate == "exact" or (estimate == "every_2nd_step" and step % 2 == 0):
            norms.append(exact)
        elif estimate == "sampled_elements":
            norms.append(norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.detach())
        if step % TASK.eval_every == 0:
            scheduler.observe(losses, run.evaluate(), grad_norm=float(np.mean(norms)))
            interval_norms.append(scheduler.last_stats.grad_norm)
            losses, norms = [], []
    return np.array(lrs), np.array(interval_norms)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(1)
    exact_lrs, exact_norms = drive("exact")
    print(f"{'estimate':<18} {'mean grad norm, max diff':>25} {'LR path, max diff':>18}")
    for estimate in ("every_2nd_step", "sampled_elements"):
        lrs, norms = drive(estimate)
        norm_diff = np.abs(norms / exact_norms - 1).max()
        lr_diff = np.abs(lrs / exact_lrs - 1).max()
        print(f"{estimate:<18} {norm_diff:>25.1%} {lr_diff:>18.1%}")


if __name__ == "__main__":
    main()
