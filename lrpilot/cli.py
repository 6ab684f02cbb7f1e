"""The `lrpilot` command line: `run`, `train`, `replay`, `compare`, `benchmark`, `demo`.

Each command's flags are built from settings dataclasses (`lrpilot.flags`), so an
option is documented once, in its dataclass, and means the same in every command.
Only the chosen command's modules are imported: `lrpilot --help` needs no torch.
Bad input is one line on stderr naming the problem and the value, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lrpilot.errors import ConfigError
from lrpilot.flags import add_flags, build

COMMANDS = {
    "run": "train one run under a fixed LR schedule",
    "train": "train a PPO learning-rate controller",
    "replay": "replay a learned policy (closed loop) or a recorded LR trace (open loop)",
    "compare": "compare tuned fixed schedules with a learned policy on held-out seeds",
    "benchmark": "run the comparison protocol over a suite of workloads",
    "demo": "train a small controller and compare it with tuned schedules (~10 min)",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser(name: str, description: str) -> OneLineParser:
    return OneLineParser(prog=f"lrpilot {name}", description=description)


def _run(argv: list[str]) -> int:
    from lrpilot.commands import RunOptions
    from lrpilot.settings import RunSettings

    p = _parser(
        "run",
        "Train one run of a workload under a fixed LR schedule and write DIR/trace.csv (one "
        "row per evaluation interval; the test loss in the last row), DIR/config.json and "
        "DIR/summary.json.",
    )
    add_flags(p, RunOptions)
    add_flags(p, RunSettings)
    args = p.parse_args(argv)
    options, run = build(RunOptions, args), build(RunSettings, args)
    from lrpilot.experiments.runs import RunConfig, run_schedule

    config = RunConfig(options.schedule, run.task(options.seed, options.lr), device=run.device)
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    trace = run_schedule(config, options.out, progress=not options.quiet)
    last = trace.iloc[-1]
    print(
        f"final val_loss {last['val_loss']:.4f}, test_loss {last['test_loss']:.4f} "
        f"after {int(last['step'])} steps"
    )
    print(f"wrote {options.out}/trace.csv")
    return 0


def _train(argv: list[str]) -> int:
    from lrpilot.agents.train_config import TrainConfig, load_train_config
    from lrpilot.commands import TrainOptions
    from lrpilot.settings import BackendSettings

    p = _parser(
        "train",
        "Train a PPO controller on LRControlEnv. A preset sets PPO, the environment and its "
        "task distribution, and the evaluation tasks; flags override it. Writes "
        "DIR/config.toml, progress.csv, checkpoints/, policy/ (latest) and best/ (best on the "
        "evaluation tasks).",
    )
    add_flags(p, TrainOptions)
    add_flags(p, TrainConfig, only=("timesteps", "n_envs", "seed"), default_is="the preset's")
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, backend = build(TrainOptions, args), build(BackendSettings, args).make()
    from lrpilot.agents.training import resume, train

    progress = not options.quiet
    if options.resume:
        if options.workload is not None:
            raise ConfigError("--workload applies to a new run; --resume keeps the run's own")
        policy = resume(options.out, timesteps=args.timesteps, progress=progress, backend=backend)
    else:
        overrides = {"timesteps": args.timesteps, "n_envs": args.n_envs, "seed": args.seed}
        config = load_train_config(options.preset, workload=options.workload, **overrides)
        policy = train(config, options.out, progress=progress, backend=backend)
    done = policy.metadata["training"]["timesteps_done"]
    print(f"trained {done} timesteps; policy: {options.out}/policy/policy.safetensors")
    return 0


def _replay(argv: list[str]) -> int:
    from lrpilot.commands import ReplayOptions
    from lrpilot.settings import RunSettings

    p = _parser(
        "replay",
        "Run a learned policy closed-loop on new runs of a workload, one per seed and start "
        "LR, or, with --trace, apply the LRs of a recorded trace.csv open-loop on the same "
        "runs (does the feedback matter, or only the shape?). Writes DIR/seed_<s>/ (with "
        "several start LRs, DIR/seed_<s>-start_<lr>/): trace.csv (the columns of `lrpilot "
        "run` plus action and reward), summary.json and plot.png; and DIR/summary.csv.",
    )
    add_flags(p, ReplayOptions)
    add_flags(p, RunSettings)
    args = p.parse_args(argv)
    options, run = build(ReplayOptions, args), build(RunSettings, args)
    if (options.policy is None) == (options.trace is None):
        raise ConfigError("give one of --policy (closed loop) or --trace (open loop)")
    from lrpilot.agents.policy_file import load_policy
    from lrpilot.experiments.replay import read_lr_trace, replay

    policy = load_policy(options.policy) if options.policy else None
    lr_trace = read_lr_trace(options.trace) if options.trace else None
    start_lrs = options.start_lrs if lr_trace is None else (float(lr_trace["lr"].iloc[-1]),)
    tasks = [run.task(seed, lr) for lr in start_lrs for seed in options.seeds]
    progress = not options.quiet
    table = replay(
        tasks, options.out, policy=policy, lr_trace=lr_trace, device=run.device, progress=progress
    )
    print(table.to_string(index=False))
    print(f"wrote {options.out}/summary.csv and {options.out}/seed_*/")
    return 0


def _compare(argv: list[str]) -> int:
    from lrpilot.commands import CompareOptions
    from lrpilot.experiments.compare_config import CompareConfig
    from lrpilot.settings import BackendSettings

    p = _parser(
        "compare",
        "Tune each fixed schedule's peak LR (and warmup) on a log-spaced grid (widened one "
        "step when the best lies on an edge) on the tuning seeds, run its best setting on the "
        "evaluation seeds, and run the policy closed-loop on the same evaluation seeds from "
        "untuned start LRs, and the tuning-free optimizers untuned. Runs are scored by their "
        "test loss. Every run is cached in DIR/runs/ by a hash of its config: run the same "
        "command again to resume. Writes DIR/results.csv, summary.csv, summary.md, "
        "config.json and PNG plots.",
    )
    add_flags(p, CompareOptions)
    add_flags(p, CompareConfig)
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, config = build(CompareOptions, args), build(CompareConfig, args)
    backend = build(BackendSettings, args).make()
    from lrpilot.experiments.compare import compare

    compare(config, options.out, progress=not options.quiet, backend=backend, force=options.force)
    print((Path(options.out) / "summary.md").read_text())
    return 0


def _benchmark(argv: list[str]) -> int:
    from lrpilot.commands import BenchmarkOptions
    from lrpilot.settings import BackendSettings

    p = _parser(
        "benchmark",
        "For every workload of a suite, tune the fixed schedules, then run the policy, the "
        "tuning-free optimizers and the tuned schedules on the evaluation seeds, as `lrpilot "
        "compare` does, into DIR/<workload>/ (a cache: run the same command again to "
        "resume). Writes DIR/summary.md, suite.csv, summary.csv, results.csv and "
        "performance_profile.png.",
    )
    add_flags(p, BenchmarkOptions)
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, backend = build(BenchmarkOptions, args), build(BackendSettings, args).make()
    from lrpilot.experiments.suite import load_suite, run_suite

    suite = load_suite(options.suite)
    policy = None if options.policy == "none" else options.policy
    if policy is not None:
        from lrpilot.agents.policy_file import load_policy

        load_policy(policy)  # a bad policy fails now, not after hours of tuning
    run_suite(
        suite,
        options.out,
        policy,
        options.jobs,
        options.device,
        not options.quiet,
        backend,
        force=options.force,
    )
    print((Path(options.out) / "summary.md").read_text())
    return 0


def _demo(argv: list[str]) -> int:
    from lrpilot.commands import DemoOptions

    p = _parser(
        "demo",
        "Train a small PPO controller (preset `demo`: tiny model, 200-step runs on the "
        "built-in pydoc corpus) into DIR/controller, then compare it with constant, "
        "warmup+cosine and WSD, each tuned on a peak-LR grid, on held-out seeds, into "
        "DIR/compare, and print the summary table. Running it again reuses what is done.",
    )
    add_flags(p, DemoOptions)
    options = build(DemoOptions, p.parse_args(argv))
    from lrpilot.experiments.demo import run_demo

    run_demo(options.out, jobs=options.jobs, progress=not options.quiet)
    print((Path(options.out) / "compare" / "summary.md").read_text())
    return 0


HANDLERS: dict[str, Callable[[list[str]], int]] = {
    "run": _run,
    "train": _train,
    "replay": _replay,
    "compare": _compare,
    "benchmark": _benchmark,
    "demo": _demo,
}


def build_parser() -> OneLineParser:
    """The top-level parser: the list of commands (each has its own --help)."""
    parser = OneLineParser(
        prog="lrpilot",
        description="lrpilot learns to drive the learning rate of language-model training. "
        "Each command has its own --help.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse's own errors and --help included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command not in HANDLERS:
            build_parser().parse_args(argv)  # --help, or a one-line usage error
            return 2
        return HANDLERS[command](argv[1:])
    except SystemExit as exc:  # --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    except ConfigError as exc:
        print(f"lrpilot {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrpilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
