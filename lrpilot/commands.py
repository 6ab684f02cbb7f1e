"""The options of each `lrpilot` command that are not settings of a run or a comparison
(those are `RunSettings`, `Protocol` and `BackendSettings`): one dataclass per command,
each field one flag, documented once. The CLI imports this module only for the command
it runs."""

from __future__ import annotations

from dataclasses import dataclass

from lrpilot.config import (
    all_of,
    check_fields,
    distinct,
    each,
    non_empty,
    one_of,
    positive,
    setting,
)
from lrpilot.config import valid_seed as seed_check
from lrpilot.lm.schedules import SCHEDULE_NAMES
from lrpilot.settings import device_name

OUT_HELP = "the folder to write"
QUIET_HELP = "no progress output"


@dataclass(frozen=True)
class Command:
    """What every command shares."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RunOptions(Command):
    """Train one run of a workload under a fixed LR schedule and write DIR/trace.csv
    (one row per evaluation interval; the test loss in the last row), DIR/config.json
    and DIR/summary.json."""

    out: str = setting(check=non_empty, help="run folder to write")
    schedule: str = setting(
        "warmup_cosine",
        help=f"the fixed LR schedule, one of: {', '.join(SCHEDULE_NAMES)}",
        check=one_of(SCHEDULE_NAMES),
    )
    lr: float = setting(3e-3, help="the peak learning rate", check=positive)
    seed: int = setting(0, help="seed of the weights and the batches", check=seed_check)
    threads: int | None = setting(
        None, help="torch CPU threads (default: all cores)", check=positive
    )
    force: bool = setting(False, help="replace the results of another experiment held in --out")
    quiet: bool = setting(False, help=QUIET_HELP)


@dataclass(frozen=True)
class TrainOptions(Command):
    """Train a PPO controller on LRControlEnv. A preset sets PPO, the environment and
    its task distribution, and the evaluation tasks; flags override it. Writes
    DIR/config.toml, progress.csv, checkpoints/, policy/ (latest) and best/ (best on the
    evaluation tasks)."""

    out: str = setting(check=non_empty, help="run folder: new, or the one to --resume")
    preset: str | None = setting(
        None,
        help="a preset (controller, generalist, prior_generalist, prior_generalist_h1, demo, "
        "tiny: TOML files in experiments/presets/) or a TOML path (default: controller, "
        "which trained the shipped learned policy `tiny`)",
    )
    workload: str | None = setting(
        None,
        help="train and evaluate on this workload instead of the preset's (a built-in name, "
        "a .toml file or FILE.py:FUNCTION)",
    )
    resume: bool = setting(
        False, help="continue the run in --out from its last checkpoint (--timesteps extends it)"
    )
    quiet: bool = setting(False, help=QUIET_HELP)


@dataclass(frozen=True)
class ReplayOptions(Command):
    """Run a learned policy closed-loop on new runs of a workload, one per seed and
    start LR, or, with --trace, apply the LRs of a recorded trace.csv open-loop on the
    same runs (does the feedback matter, or only the shape?). Writes DIR/seed_<s>/ (with
    several start LRs, DIR/seed_<s>-start_<lr>/): trace.csv (the columns of `lrpilot
    run` plus action and reward), summary.json and plot.png; and DIR/summary.csv."""

    out: str = setting(check=non_empty, help=OUT_HELP)
    policy: str | None = setting(
        None,
        help="a policy file or folder, `default` (the default controller, the rule "
        "priorhold), another fixed rule (priorstop, rangestop), or a shipped learned "
        "policy (tiny, prior_generalist)",
        check=non_empty,
    )
    trace: str | None = setting(
        None,
        help="instead of a policy, a trace.csv (columns step and lr) whose LRs are applied "
        "open-loop",
    )
    seeds: tuple[int, ...] = setting(
        (1,), help="LM seeds, one run each", check=all_of(non_empty, distinct, each(seed_check))
    )
    start_lrs: tuple[float, ...] = setting(
        (1e-3,),
        help="the policy's start LRs, one run each (not used with --trace)",
        check=all_of(non_empty, distinct, each(positive)),
    )
    force: bool = setting(False, help="replace the results of another experiment held in --out")
    quiet: bool = setting(False, help=QUIET_HELP)


@dataclass(frozen=True)
class CompareOptions(Command):
    """Tune each fixed schedule's peak LR (and warmup) on a log-spaced grid (widened one
    step when the best lies on an edge) on the tuning seeds, run its best setting on the
    evaluation seeds, and run the policy closed-loop on the same evaluation seeds from
    untuned start LRs, and the tuning-free optimizers untuned. Runs are scored by their
    test loss. Every run is cached in DIR/runs/ by a hash of its config: run the same
    command again to resume. Writes DIR/results.csv, summary.csv, summary.md,
    config.json and PNG plots."""

    out: str = setting(check=non_empty, help="comparison folder (its runs/ is the cache)")
    force: bool = setting(
        False, help="replace the results of another comparison held in --out (runs are kept)"
    )
    quiet: bool = setting(False, help=QUIET_HELP)


@dataclass(frozen=True)
class BenchmarkOptions(Command):
    """For every workload of a suite, tune the fixed schedules, then run the policy, the
    tuning-free optimizers and the tuned schedules on the evaluation seeds, as `lrpilot
    compare` does, into DIR/<workload>/ (a cache: run the same command again to resume).
    Writes DIR/summary.md, suite.csv, summary.csv, results.csv and
    performance_profile.png."""

    out: str = setting(check=non_empty, help="suite folder: one comparison folder per workload")
    suite: str = setting(
        help="a suite (quick, heldout, controller_quality, gpu, ...: TOML files in "
        "experiments/suites/) or a TOML path"
    )
    policy: str = setting(
        "default",
        help="a policy file or folder, `default` (the default controller, the rule "
        "priorhold), another fixed rule (priorstop, rangestop; a rule runs as that "
        "controller), a shipped learned policy (tiny, prior_generalist), or `none`",
        check=non_empty,
    )
    controllers: tuple[str, ...] | None = setting(
        None,
        help="baseline controllers to run on every workload, comma-separated (random, "
        "plateau, rangestop, priorstop, priorhold, sweepvalley), in place of the suite's "
        "own (default: the suite's)",
    )
    jobs: int = setting(1, help="runs in parallel (--backend process)", check=positive)
    device: str = setting(
        "auto", help="cpu, cuda, cuda:N, or auto (CUDA when present)", check=device_name
    )
    force: bool = setting(
        False, help="replace the results of another suite held in --out (runs are kept)"
    )
    quiet: bool = setting(False, help=QUIET_HELP)


@dataclass(frozen=True)
class DemoOptions(Command):
    """Train a small PPO controller (preset `demo`: tiny model, 200-step runs on the
    built-in pydoc corpus) into DIR/controller, then compare it with constant,
    warmup+cosine and WSD, each tuned on a peak-LR grid, on held-out seeds, into
    DIR/compare, and print the summary table. Running it again reuses what is done."""

    out: str = setting("runs/demo", help=OUT_HELP, check=non_empty)
    jobs: int = setting(2, help="comparison runs in parallel", check=positive)
    quiet: bool = setting(False, help=QUIET_HELP)
