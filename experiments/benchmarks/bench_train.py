"""Benchmark controller training throughput.

Runs PPO on the `controller` preset's environments with `--n-envs 1` and `--n-envs 2`
in one process, one after the other, and prints env steps per second of each, the
speed-up (target >= 1.7 on 2 cores), and the share of wall time spent in PPO
updates and policy inference (target <= 5%).

    python experiments/benchmarks/bench_train.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import torch

from lrpilot.agents.ppo import make_model
from lrpilot.agents.train_config import DEFAULT_PRESET, load_train_config


def timed(function, totals: dict, key: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    return wrapper


def measure(preset: str, n_envs: int, steps_per_env: int) -> dict:
    config = load_train_config(preset, n_envs=n_envs)
    ppo = dataclasses.replace(config.ppo, n_steps=steps_per_env, batch_size=steps_per_env)
    model, venv = make_model(dataclasses.replace(config, ppo=ppo))
    totals = {"update": 0.0, "inference": 0.0}
    model.train = timed(model.train, totals, "update")
    model.policy.forward = timed(model.policy.forward, totals, "inference")
    timesteps = steps_per_env * n_envs  # exactly one rollout and one update
    start = time.perf_counter()
    model.learn(timesteps)
    wall = time.perf_counter() - start
    venv.close()
    return {
        "steps_per_second": timesteps / wall,
        "ppo_share": (totals["update"] + totals["inference"]) / wall,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="training preset")
    parser.add_argument("--steps-per-env", type=int, default=100, help="rollout length")
    args = parser.parse_args()
    torch.set_num_threads(1)
    one = measure(args.preset, 1, args.steps_per_env)
    two = measure(args.preset, 2, args.steps_per_env)
    print(f"n_envs=1: {one['steps_per_second']:.2f} env steps/s ({one['wall']:.1f} s)")
    print(f"n_envs=2: {two['steps_per_second']:.2f} env steps/s ({two['wall']:.1f} s)")
    speedup = two["steps_per_second"] / one["steps_per_second"]
    print(f"speed-up (target >= 1.7)                      {speedup:.2f}")
    print(f"PPO update + inference share, n_envs=1 (<= 5%) {100 * one['ppo_share']:.2f}%")
    print(f"PPO update + inference share, n_envs=2 (<= 5%) {100 * two['ppo_share']:.2f}%")


if __name__ == "__main__":
    main()
