"""Is tuned WSD a weak baseline only because of its 5% warmup? A check on validation seeds.

`controller_quality.py` tunes each schedule's peak LR on a 5-point grid, with the warmup
fixed at 5% of the run. On 400-step runs the policy's lead over WSD forms in the first
quarter of the run, where the two start their plateaus differently (README, "Controller
quality"). This script tunes WSD's peak again, on the same grid and tuning seed 0, for
longer warmups too, and compares each with the policy from 1e-3 on the validation seeds
100001-100003, in the four settings of the benchmark. The comparison seeds 1, 2, 3 are
not used. A fair choice of warmup is made on the tuning seed: its loss is in the table.

The policy's mean final loss comes from `controller_quality.measure` (its compare runs are
cached under `--out`, the folder `select_policy.py` uses). With a 5% warmup the figures
must equal that comparison's WSD row: a check that this script trains as it does.

Written to `experiments/results/warmup_check.{csv,md}` and printed:

    python experiments/benchmarks/warmup_check.py --jobs 2
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat

import numpy as np
import pandas as pd
import torch

from lrpilot.cli import positive_int
from lrpilot.experiments.benchmarks.controller_quality import (
    SETTINGS,
    compare_config,
    measure,
    short_name,
)
from lrpilot.experiments.benchmarks.select_policy import VALIDATION_SEEDS
from lrpilot.experiments.report import write_result_table
from lrpilot.experiments.runs import RunConfig, run_schedule
from lrpilot.lm.trace import scored_final_loss

WARMUPS = (0.05, 0.1, 0.2, 0.3)  # fractions of the run; 0.05 is the benchmark's


def wsd_final_loss(setting: str, warmup: float, peak: float, seed: int) -> float:
    """Final validation loss (diverged runs scored as in every comparison) of one WSD run,
    on one torch thread as in `compare`'s workers."""
    torch.set_num_threads(1)
    config = RunConfig(schedule="wsd", lr=peak, seed=seed, device="cpu", **SETTINGS[setting])
    trace = run_schedule(config, progress=False, warmup=warmup)
    return scored_final_loss(trace["val_loss"].tolist(), trace["nonfinite"].tolist())


def tuned_wsd(setting: str, warmup: float, policy_loss: float, pool: ProcessPoolExecutor) -> dict:
    """WSD with `warmup`, its peak tuned on the benchmark's peak-LR grid and tuning seed:
    the peak, its loss there, its mean final loss on the validation seeds, and the
    policy's mean final loss over it."""
    benchmark = compare_config(SETTINGS[setting], "default", VALIDATION_SEEDS, jobs=1)
    grid, tuning_seed = benchmark.grid(), benchmark.tune_seeds[0]
    tuning = list(
        pool.map(wsd_final_loss, repeat(setting), repeat(warmup), grid, repeat(tuning_seed))
    )
    peak = grid[int(np.argmin(tuning))]  # unlike the benchmark, no widening at an edge
    finals = pool.map(
        wsd_final_loss, repeat(setting), repeat(warmup), repeat(peak), VALIDATION_SEEDS
    )
    loss = float(np.mean(list(finals)))
    return {
        "tuned peak": round(peak, 4),
        "peak on a grid edge": peak in (grid[0], grid[-1]),
        f"WSD loss on tuning seed {tuning_seed}": round(min(tuning), 4),
        "WSD mean final loss": round(loss, 4),
        "policy (start 1e-3)": policy_loss,
        "policy / WSD": round(policy_loss / loss, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="default", help="policy to compare with")
    parser.add_argument(
        "--jobs", type=positive_int, default=2, help="LM runs in parallel (processes)"
    )
    parser.add_argument(
        "--out",
        default="runs/policy_selection",
        help="compare folder of the policy's validation runs (a cache; select_policy.py's)",
    )
    parser.add_argument(
        "--results", default="experiments/results", help="folder for warmup_check.csv and .md"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for setting in SETTINGS:
            reference = measure(
                setting,
                SETTINGS[setting],
                policy=args.policy,
                eval_seeds=VALIDATION_SEEDS,
                jobs=args.jobs,
                out=args.out,
                quiet=True,
            )
            policy_loss = float(reference["policy loss (start 1e-3)"])
            for warmup in WARMUPS:
                wsd = tuned_wsd(setting, warmup, policy_loss, pool)
                rows.append({"setting": short_name(setting), "WSD warmup": warmup} | wsd)
                print(rows[-1])
    minutes = (time.perf_counter() - start) / 60
    command = (
        f"python experiments/benchmarks/warmup_check.py --policy {args.policy} --jobs {args.jobs}"
    )
    text = write_result_table(
        args.results,
        "warmup_check",
        pd.DataFrame(rows),
        "Tuned WSD with longer warmups (validation seeds)",
        command,
        footer=f"{minutes:.1f} min",
    )
    print(text)


if __name__ == "__main__":
    main()
