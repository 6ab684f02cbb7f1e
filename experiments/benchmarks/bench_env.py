"""Benchmark the environment's overhead over the bare training run.

Times `LRControlEnv.step` against `TrainingRun.train` for the same interval of the
same task, alternating the two interval by interval in one process (the first of
each pair swapped every interval), and prints the
ratio of their median times (target >= 0.98: the env adds at most 2%).

    python experiments/benchmarks/bench_env.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lrpilot.env import EnvConfig, LRControlEnv
from lrpilot.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=3, help="runs of each kind")
    parser.add_argument("--steps", type=int, default=400, help="step budget of a run")
    parser.add_argument("--eval-every", type=int, default=20, help="steps per interval")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = RunSettings("tiny", steps=args.steps, eval_every=args.eval_every).task(0, 3e-3)
    env = LRControlEnv(EnvConfig())
    keep_lr = 2  # the discrete action x1

    env_times, bare_times = [], []
    for episode in range(args.episodes):
        env.reset(seed=episode, options={"task": task})
        run = task.make_run("cpu")
        run.evaluate()
        for interval in range(task.num_intervals):
            steps = task.interval_steps(interval)
            # Swap which goes first every interval, so neither gets the warmer cache.
            order = ("env", "bare") if interval % 2 == 0 else ("bare", "env")
            for kind in order:
                start = time.perf_counter()
                if kind == "env":
                    env.step(keep_lr)
                else:
                    run.train(steps, task.start_lr)
                (env_times if kind == "env" else bare_times).append(time.perf_counter() - start)
    env_median, bare_median = statistics.median(env_times), statistics.median(bare_times)
    print(f"intervals timed               {len(env_times)} of each")
    print(f"TrainingRun.train median s    {bare_median:.4f}")
    print(f"LRControlEnv.step median s    {env_median:.4f}")
    print(f"ratio (target >= 0.98)        {bare_median / env_median:.4f}")


if __name__ == "__main__":
    main()
