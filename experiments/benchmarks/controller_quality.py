"""Benchmark the controller's quality against tuned schedules, on runs it never saw.

For each setting, one `lrpilot compare` (the same code, the same cache format):
constant, warmup+cosine and WSD (1-sqrt cooldown), each tuned on a 5-point peak-LR
grid on tuning seed 0 (widened one step at an edge), then run at their best peak on
evaluation seeds 1, 2, 3; the policy runs closed-loop on the same seeds from each
untuned start LR in 1e-4, 1e-3, 1e-2. Settings:

1. held-out seeds on the training corpus (`pydoc`, tiny model, 400 steps);
2. a held-out corpus (`pystdlib`, never seen in training);
3. a larger model (`small`) than training used (`tiny`);
4. a step budget twice the training one (800 steps; training used 200 and 400).

Printed and written to `experiments/results/controller_quality.{csv,md}`, per setting,
all on the test split (which the policy never observes), a diverged run scoring the cap:
- quality: the policy's mean test loss from 1e-3 / the best tuned schedule's (target
  <= 0.99);
- robustness: the policy's worst / best mean test loss over the three start LRs
  (target <= 1.02), beside the same ratio for a constant LR over its tuning grid;
- the same two ratios on the validation windows the policy observes (how the table
  was scored before there was a test split);
- cost: LM steps of one policy run against the best schedule's tuning grid plus its
  final run.

    python experiments/benchmarks/controller_quality.py --policy default --jobs 2

With `--warmups 0.05 0.1 0.2 0.3`, warmup+cosine and WSD are tuned over every (peak,
warmup) pair instead (4x their tuning runs, which the cost column counts), a stronger
baseline than the issue's peak-only grid; the table is then written as
`controller_quality_tuned_warmup.{csv,md}`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lrpilot.cli import positive_int
from lrpilot.errors import ConfigError
from lrpilot.experiments.compare import CompareConfig, compare
from lrpilot.experiments.report import write_result_table

SETTINGS = {
    "held-out seeds (pydoc, tiny, 400 steps)": {"workload": "tiny", "steps": 400},
    "held-out corpus (pystdlib)": {"workload": "tiny", "corpus": "pystdlib", "steps": 400},
    "larger model (small)": {"workload": "small", "steps": 400},
    "2x step budget (800 steps)": {"workload": "tiny", "steps": 800},
}
START_LRS = (1e-4, 1e-3, 1e-2)
COMPARISON_SEEDS = (1, 2, 3)  # the held-out LM seeds of the benchmark; they never choose
UNTUNED_START = 1e-3  # the start LR the quality figure uses
QUALITY_TARGET = 0.99  # policy from UNTUNED_START / best tuned schedule, at most
ROBUSTNESS_TARGET = 1.02  # policy's worst / best over START_LRS, at most
QUALITY = f"quality (policy / best, <= {QUALITY_TARGET})"  # the table's columns
ROBUSTNESS = f"policy worst / best over start LRs (<= {ROBUSTNESS_TARGET})"
VAL_QUALITY = "quality on the validation windows"
VAL_ROBUSTNESS = "robustness on the validation windows"


def short_name(setting: str) -> str:
    """'held-out seeds (pydoc, tiny, 400 steps)' -> 'held-out seeds'."""
    return setting.split(" (")[0]


def setting_folder(out: str | Path, setting: str) -> Path:
    """The compare folder of one setting under `out` (its runs are the cache)."""
    return Path(out) / short_name(setting).replace(" ", "_")


def compare_config(
    setting: dict,
    policy: str,
    eval_seeds: tuple[int, ...],
    jobs: int,
    warmups: tuple[float, ...] = (),
) -> CompareConfig:
    """The benchmark's comparison in one setting: its schedules, peak-LR grid (and warmups,
    if tuned) and seeds."""
    return CompareConfig(
        schedules=("constant", "warmup_cosine", "wsd"),
        policy=policy,
        eval_every=20,
        lr_grid=5,
        lr_range=(1e-3, 1.6e-2),
        warmups=tuple(warmups),
        tune_seeds=(0,),
        eval_seeds=tuple(eval_seeds),
        start_lrs=START_LRS,
        jobs=jobs,
        device="cpu",
        **setting,
    )


def measure(
    name: str,
    setting: dict,
    policy: str,
    eval_seeds: tuple[int, ...],
    jobs: int,
    out: str,
    quiet: bool,
    warmups: tuple[float, ...] = (),
) -> dict:
    """One setting's row of the table: `policy` against the tuned schedules (with
    `warmups` tuned too, if given) on `eval_seeds`, its compare runs kept (and reused)
    under `out`."""
    config = compare_config(setting, policy, eval_seeds, jobs, warmups)
    folder = setting_folder(out, name)
    start = time.perf_counter()
    summary = compare(config, folder, progress=not quiet).set_index("label")
    results = pd.read_csv(folder / "results.csv")
    best = summary[summary["note"].fillna("").str.startswith("reference")].iloc[0]
    policy = summary[summary["kind"] == "policy"]
    untuned = policy[policy["lr"] == UNTUNED_START].iloc[0]
    constant_grid = results[(results["method"] == "constant") & (results["phase"] == "tune")]
    constant_finals = constant_grid.groupby("peak_or_start_lr")["test_loss"].last()
    warmup = "" if pd.isna(best["warmup"]) else f", warmup {best['warmup']:.0%}"
    return {
        "setting": name,
        "best schedule": f"{best.name} @ {best['lr']:.3g}{warmup}",
        "best schedule loss": round(best["mean"], 4),
        "policy loss (start 1e-3)": round(untuned["mean"], 4),
        QUALITY: round(untuned["mean"] / best["mean"], 4),
        ROBUSTNESS: round(policy["mean"].max() / policy["mean"].min(), 4),
        VAL_QUALITY: round(untuned["val_mean"] / best["val_mean"], 4),
        VAL_ROBUSTNESS: round(policy["val_mean"].max() / policy["val_mean"].min(), 4),
        "constant worst / best over its grid": round(
            constant_finals.max() / constant_finals.min(), 4
        ),
        "policy LM steps per run": int(untuned["eval_steps"] / untuned["seeds"]),
        "best schedule LM steps (grid + final run)": int(
            best["tuning_steps"] + best["eval_steps"] / best["seeds"]
        ),
        "wins / losses vs best (start 1e-3)": f"{untuned['wins']} / {untuned['losses']}",
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policy",
        default="default",
        help="policy to measure: `default` (the shipped one), a policy file or a run folder",
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=2, help="LM runs in parallel (processes)"
    )
    parser.add_argument(
        "--eval-seeds",
        type=int,
        nargs="+",
        default=list(COMPARISON_SEEDS),
        help="LM seeds the policy and the tuned schedules are compared on (default: "
        + " ".join(map(str, COMPARISON_SEEDS))
        + ")",
    )
    parser.add_argument(
        "--settings",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4],
        choices=range(1, len(SETTINGS) + 1),
        metavar="N",
        help="which settings to measure, by number: "
        + "; ".join(f"{i} {name}" for i, name in enumerate(SETTINGS, 1)),
    )
    parser.add_argument(
        "--out",
        default="runs/controller_quality",
        help="folder of the compare runs, one per setting (a cache: reruns reuse its runs)",
    )
    parser.add_argument(
        "--results",
        default="experiments/results",
        help="folder for controller_quality.csv and .md (give another for an unshipped policy)",
    )
    parser.add_argument(
        "--warmups",
        type=float,
        nargs="+",
        default=[],
        help="warmup fractions to tune with the peak for warmup+cosine and WSD, e.g. "
        "0.05 0.1 0.2 0.3 (default: none, the issue's protocol: their own 5%%)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    names = list(SETTINGS)
    try:  # bad seeds or warmups: one line now, not a traceback after some settings ran
        compare_config(SETTINGS[names[0]], args.policy, args.eval_seeds, args.jobs, args.warmups)
    except ConfigError as error:
        parser.error(str(error))
    rows = [
        measure(
            names[i - 1],
            SETTINGS[names[i - 1]],
            policy=args.policy,
            eval_seeds=tuple(args.eval_seeds),
            jobs=args.jobs,
            out=args.out,
            quiet=args.quiet,
            warmups=tuple(args.warmups),
        )
        for i in args.settings
    ]
    command = (
        f"python experiments/benchmarks/controller_quality.py --policy {args.policy} "
        f"--jobs {args.jobs}"
    )
    if tuple(args.eval_seeds) != COMPARISON_SEEDS:
        command += " --eval-seeds " + " ".join(map(str, args.eval_seeds))
    if args.settings != [1, 2, 3, 4]:
        command += " --settings " + " ".join(map(str, args.settings))
    stem, title = "controller_quality", "Controller quality"
    if args.warmups:
        command += " --warmups " + " ".join(map(str, args.warmups))
        stem, title = f"{stem}_tuned_warmup", f"{title}, warmups tuned with the peak"
    text = write_result_table(args.results, stem, pd.DataFrame(rows), title, command)
    print(text)


if __name__ == "__main__":
    main()
