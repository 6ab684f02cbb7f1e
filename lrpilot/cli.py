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


def _parser(name: str, options: type) -> OneLineParser:
    """The parser of one command, described by its options' docstring, with their flags."""
    parser = OneLineParser(prog=f"lrpilot {name}", description=options.__doc__, allow_abbrev=False)
    add_flags(parser, options)
    return parser


def _until_stopped(command: str, out: str, work: Callable[[], None]) -> int:
    """Run `work` with SIGTERM and SIGINT turned into a clean stop (`lrpilot.processes`)."""
    from lrpilot.processes import run_until_stopped

    def call() -> int:
        work()
        return 0

    return run_until_stopped(call, command, out)


def _run(argv: list[str]) -> int:
    from lrpilot.commands import RunOptions
    from lrpilot.settings import RunSettings

    p = _parser("run", RunOptions)
    add_flags(p, RunSettings)
    args = p.parse_args(argv)
    options, run = build(RunOptions, args), build(RunSettings, args)
    from lrpilot.experiments.runs import RunConfig, run_schedule

    config = RunConfig(options.schedule, run.task(options.seed, options.lr), device=run.device)
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    trace = run_schedule(config, options.out, not options.quiet, force=options.force)
    last = trace.iloc[-1]
    print(
        f"final val_loss {last['val_loss']:.4f}, test_loss {last['test_loss']:.4f} "
        f"after {int(last['step'])} steps"
    )
    print(f"wrote {options.out}/trace.csv")
    return 0


def _train(argv: list[str]) -> int:
    from lrpilot.agents.train_config import DEFAULT_PRESET, TrainConfig, load_train_config
    from lrpilot.commands import TrainOptions
    from lrpilot.settings import BackendSettings

    p = _parser("train", TrainOptions)
    add_flags(p, TrainConfig, only=("timesteps", "n_envs", "seed"), default_is="the preset's")
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, backend = build(TrainOptions, args), build(BackendSettings, args).make()
    from lrpilot.agents.training import resume, train

    progress, overrides = not options.quiet, {"n_envs": args.n_envs, "seed": args.seed}
    new_run = {"preset": options.preset, "workload": options.workload} | overrides
    if options.resume and any(value is not None for value in new_run.values()):
        given = [name for name, value in new_run.items() if value is not None]
        raise ConfigError(f"{', '.join(given)}: for a new run; --resume keeps the run's own")
    preset, timesteps = options.preset or DEFAULT_PRESET, args.timesteps

    def work() -> None:
        if options.resume:
            policy = resume(options.out, timesteps=timesteps, progress=progress, backend=backend)
        else:
            config = load_train_config(preset, options.workload, timesteps=timesteps, **overrides)
            policy = train(config, options.out, progress=progress, backend=backend)
        done = policy.metadata["training"]["timesteps_done"]
        print(f"trained {done} timesteps; policy: {options.out}/policy/policy.safetensors")

    return _until_stopped("train", options.out, work)


def _replay(argv: list[str]) -> int:
    from lrpilot.commands import ReplayOptions
    from lrpilot.settings import RunSettings

    p = _parser("replay", ReplayOptions)
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
    how = {"device": run.device, "progress": not options.quiet, "force": options.force}
    table = replay(tasks, options.out, policy=policy, lr_trace=lr_trace, **how)
    print(table.to_string(index=False))
    print(f"wrote {options.out}/summary.csv and {options.out}/seed_*/")
    return 0


def _compare(argv: list[str]) -> int:
    from lrpilot.commands import CompareOptions
    from lrpilot.experiments.compare_config import CompareConfig
    from lrpilot.settings import BackendSettings

    p = _parser("compare", CompareOptions)
    add_flags(p, CompareConfig)
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, config = build(CompareOptions, args), build(CompareConfig, args)
    backend = build(BackendSettings, args).make()
    from lrpilot.experiments.compare import compare

    def work() -> None:
        compare(
            config, options.out, progress=not options.quiet, backend=backend, force=options.force
        )
        print((Path(options.out) / "summary.md").read_text())

    return _until_stopped("compare", options.out, work)


def _benchmark(argv: list[str]) -> int:
    from lrpilot.commands import BenchmarkOptions
    from lrpilot.settings import BackendSettings

    p = _parser("benchmark", BenchmarkOptions)
    add_flags(p, BackendSettings)
    args = p.parse_args(argv)
    options, backend = build(BenchmarkOptions, args), build(BackendSettings, args).make()
    from lrpilot.experiments.suite import load_suite, run_suite

    suite = load_suite(options.suite)
    suite = suite if options.controllers is None else suite.with_controllers(options.controllers)
    policy = None if options.policy == "none" else options.policy  # checked by run_suite

    def work() -> None:
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

    return _until_stopped("benchmark", options.out, work)


def _demo(argv: list[str]) -> int:
    from lrpilot.commands import DemoOptions

    p = _parser("demo", DemoOptions)
    options = build(DemoOptions, p.parse_args(argv))
    from lrpilot.experiments.demo import run_demo

    def work() -> None:
        run_demo(options.out, jobs=options.jobs, progress=not options.quiet)
        print((Path(options.out) / "compare" / "summary.md").read_text())

    return _until_stopped("demo", options.out, work)


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
