"""The `lrpilot` command line: `run`, `train`, `replay`, `compare` and `demo`.

Bad input is reported as one line on stderr naming the problem and the value,
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lrpilot.errors import ConfigError
from lrpilot.processes import run_until_stopped


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    """Where the workers run: local processes, or Ray (extra `lrpilot[ray]`)."""
    p.add_argument(
        "--backend",
        choices=("process", "ray"),
        default="process",
        help="process: worker processes on this machine; ray: Ray actors/tasks (a local Ray "
        "instance, or the cluster at --address)",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster to join (`ray start --head` prints it)"
    )
    p.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="Ray: CPUs each worker reserves"
    )
    p.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="Ray: GPUs each worker reserves"
    )


def _backend(args: argparse.Namespace):
    """The Ray backend the flags ask for, or None for local processes."""
    if args.backend == "process":
        if args.address is not None:
            raise ConfigError("--address needs --backend ray")
        return None
    from lrpilot.ray_backend import RayBackend, import_ray

    backend = RayBackend(
        address=args.address,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )
    import_ray()  # a missing extra is reported before any work
    return backend


def _add_run(subparsers) -> None:
    from lrpilot.lm.schedules import SCHEDULE_NAMES

    p = subparsers.add_parser(
        "run",
        help="train one run under a fixed LR schedule",
        description="Train one run of a workload under a fixed LR schedule and write "
        "DIR/trace.csv (one row per evaluation interval; the test loss in the last row), "
        "DIR/config.json and DIR/summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--schedule", default="warmup_cosine", help=f"one of: {', '.join(SCHEDULE_NAMES)}"
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    _add_task_flags(p, device="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batches")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_run)


def _task(args: argparse.Namespace, seed: int, start_lr: float):
    """The run the task flags describe (`--workload` and its overrides)."""
    from lrpilot.env.tasks import Task

    return Task.of(
        args.workload,
        seed,
        total_steps=args.steps,
        eval_every=args.eval_every,
        start_lr=start_lr,
        corpus=args.corpus,
        batch_size=args.batch_size,
    )


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads <= 0:
            raise ConfigError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def _cmd_run(args: argparse.Namespace) -> int:
    from lrpilot.experiments.runs import RunConfig, run_schedule

    config = RunConfig(args.schedule, _task(args, args.seed, args.lr), device=args.device)
    _set_threads(args.threads)
    trace = run_schedule(config, args.out, progress=not args.quiet)
    last = trace.iloc[-1]
    print(
        f"final val_loss {last['val_loss']:.4f}, test_loss {last['test_loss']:.4f} "
        f"after {int(last['step'])} steps"
    )
    print(f"wrote {args.out}/trace.csv")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a PPO learning-rate controller",
        description="Train a PPO controller on LRControlEnv. A preset (a TOML file in "
        "experiments/presets/, or a path) sets PPO, the environment and its task distribution, "
        "and the evaluation tasks; flags override it. Writes DIR/config.toml, progress.csv, "
        "checkpoints/, policy/ (latest) and best/ (best on the evaluation tasks).",
    )
    from lrpilot.agents.train_config import DEFAULT_PRESET
    from lrpilot.presets import preset_names

    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"preset name ({', '.join(preset_names())}) or a TOML path (default: "
        f"{DEFAULT_PRESET}, which trained the shipped policy)",
    )
    p.add_argument(
        "--workload",
        default=None,
        help="train and evaluate on this workload instead of the preset's (a built-in name, a "
        ".toml file or FILE.py:FUNCTION)",
    )
    p.add_argument(
        "--timesteps", type=int, default=None, help="total env steps, i.e. intervals (preset's)"
    )
    p.add_argument(
        "--n-envs", type=int, default=None, help="environment processes, or Ray actors (preset's)"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of PPO and the task sampling (preset's)"
    )
    p.add_argument("--out", required=True, help="run folder (new, or the one to --resume)")
    _add_backend_flags(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (--timesteps may extend it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from lrpilot.agents.train_config import load_train_config
    from lrpilot.agents.training import resume, train

    if args.resume:
        if args.workload is not None:
            raise ConfigError("--workload applies to a new run; --resume keeps the run's own")
        policy = resume(
            args.out, timesteps=args.timesteps, progress=not args.quiet, backend=_backend(args)
        )
    else:
        config = load_train_config(
            args.preset,
            workload=args.workload,
            timesteps=args.timesteps,
            n_envs=args.n_envs,
            seed=args.seed,
        )
        policy = train(config, args.out, progress=not args.quiet, backend=_backend(args))
    done = policy.metadata["training"]["timesteps_done"]
    print(f"trained {done} timesteps; policy: {args.out}/policy/policy.safetensors")
    return 0


# -- list-valued flags ---------------------------------------------------------------------


def comma_list(kind: type, what: str):
    """An argparse type for comma-separated values: `comma_list(int, "integers")("1,2")`
    is [1, 2]; empty items are dropped."""

    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


int_list = comma_list(int, "integers")
float_list = comma_list(float, "numbers")
name_list = comma_list(str, "names")


def positive_int(text: str) -> int:
    """An argparse type for a count such as `--jobs`: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def named_policy(text: str) -> tuple[str, str]:
    """An argparse type for `NAME=PATH` (PATH: `default`, a policy file or a folder
    holding one), checked now so a missing policy fails before hours of work."""
    from lrpilot.agents.policy_file import resolve_policy_path  # torch: only when used

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    try:
        resolve_policy_path(path)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name, path


def _add_task_flags(p: argparse.ArgumentParser, device: str = "cpu") -> None:
    """The flags that say which runs to make: the workload, and what to change in it."""
    from lrpilot.lm.workloads import BUILTIN_NAMES

    p.add_argument(
        "--workload",
        default="tiny",
        help=f"a built-in workload ({', '.join(BUILTIN_NAMES)}), a workload .toml file, or "
        "FILE.py:FUNCTION (a function of the seed returning lrpilot.RunParts)",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="replace the workload's corpus: pydoc, pystdlib, or a file or folder path",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per run (default: the workload's)"
    )
    p.add_argument(
        "--eval-every", type=int, default=None, help="steps per interval (default: the workload's)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="replace the workload's batch size")
    p.add_argument("--device", default=device, help="cpu, cuda, or auto (CUDA when present)")


def _add_replay(subparsers) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay a learned policy (closed loop) or a recorded LR trace (open loop)",
        description="Run a learned policy closed-loop on new runs of a workload, one per seed, "
        "or, with "
        "--trace, apply the LRs of a recorded trace.csv open-loop on the same runs (does the "
        "feedback matter, or only the shape?). Writes DIR/seed_<s>/trace.csv (the columns of "
        "`lrpilot run` plus action and reward), summary.json and plot.png, and "
        "DIR/summary.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="policy file or folder, or `default` (the shipped policy)")
    source.add_argument("--trace", help="a trace.csv (needs columns step and lr) to replay")
    _add_task_flags(p)
    p.add_argument(
        "--start-lr", type=float, default=1e-3, help="the policy's start LR (not used with --trace)"
    )
    p.add_argument("--seeds", type=int_list, default="1", help="comma-separated LM seeds")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from lrpilot.agents.policy_file import load_policy
    from lrpilot.experiments.replay import read_lr_trace, replay

    policy = load_policy(args.policy) if args.policy else None
    lr_trace = read_lr_trace(args.trace) if args.trace else None
    if not args.seeds:
        raise ConfigError("--seeds is empty: give at least one seed")
    start_lr = args.start_lr if lr_trace is None else float(lr_trace["lr"].iloc[-1])
    tasks = [_task(args, seed, start_lr) for seed in args.seeds]  # each value checked
    table = replay(
        tasks,
        args.out,
        policy=policy,
        lr_trace=lr_trace,
        device=args.device,
        progress=not args.quiet,
    )
    print(table.to_string(index=False))
    print(f"wrote {args.out}/summary.csv and {args.out}/seed_*/")
    return 0


def _add_compare(subparsers) -> None:
    from lrpilot.experiments.compare_config import CONTROLLERS, CompareConfig
    from lrpilot.lm.optimizers import TUNING_FREE
    from lrpilot.lm.schedules import SCHEDULE_NAMES

    d = CompareConfig()
    p = subparsers.add_parser(
        "compare",
        help="compare tuned fixed schedules with a learned policy on held-out seeds",
        description="Tune each fixed schedule's peak LR (and warmup) on a log-spaced grid "
        "(widened one step when the best lies on an edge) on the tuning seeds, run its best "
        "setting on the evaluation seeds, and run the policy closed-loop on the same "
        "evaluation seeds from untuned start LRs, and the tuning-free optimizers untuned. "
        "Runs are scored by their test loss. Every run is cached in DIR/runs/ by a hash of "
        "its config: run the same command again to resume. Writes DIR/results.csv, "
        "summary.csv, summary.md and PNG plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--policy",
        default=None,
        help="policy file or folder, or `default` (the shipped policy); optional",
    )
    p.add_argument(
        "--schedules",
        type=name_list,
        default=",".join(d.schedules),
        help=f"comma-separated, from: {', '.join(SCHEDULE_NAMES)}",
    )
    p.add_argument(
        "--controllers",
        type=name_list,
        default="",
        help=f"baseline controllers to add, from: {', '.join(CONTROLLERS)}",
    )
    p.add_argument(
        "--tuning-free",
        type=name_list,
        default="",
        help=f"tuning-free optimizers to add, run once per evaluation seed untuned, from: "
        f"{', '.join(TUNING_FREE)} (extra [tuningfree])",
    )
    _add_task_flags(p)
    p.add_argument("--lr-grid", type=int, default=d.lr_grid, help="peak LRs per schedule (>= 2)")
    p.add_argument(
        "--lr-range",
        type=float_list,
        default=",".join(map(str, d.lr_range)),
        help="LOW,HIGH ends of the log-spaced peak-LR grid",
    )
    p.add_argument(
        "--warmups",
        type=float_list,
        default=",".join(map(str, d.warmups)),
        help="warmup fractions tuned with the peak, for schedules with a warmup (every peak x "
        "warmup pair is a tuning run); empty: each schedule's own warmup (5%%)",
    )
    p.add_argument(
        "--tune-seeds", type=int_list, default=",".join(map(str, d.tune_seeds)), help="tuning seeds"
    )
    p.add_argument(
        "--eval-seeds",
        type=int_list,
        default=",".join(map(str, d.eval_seeds)),
        help="held-out seeds",
    )
    p.add_argument(
        "--start-lr",
        type=float_list,
        default=",".join(map(str, d.start_lrs)),
        help="untuned start LR(s) of the policy and controllers, comma-separated",
    )
    p.add_argument("--jobs", type=int, default=d.jobs, help="runs in parallel (--backend process)")
    p.add_argument("--out", required=True, help="comparison folder (its runs/ is the cache)")
    _add_backend_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from lrpilot.experiments.compare import CompareConfig, compare

    config = CompareConfig(
        schedules=tuple(args.schedules),
        policy=args.policy,
        controllers=tuple(args.controllers),
        tuning_free=tuple(args.tuning_free),
        workload=args.workload,
        corpus=args.corpus,
        steps=args.steps,
        eval_every=args.eval_every,
        batch_size=args.batch_size,
        lr_grid=args.lr_grid,
        lr_range=tuple(args.lr_range),
        warmups=tuple(args.warmups),
        tune_seeds=tuple(args.tune_seeds),
        eval_seeds=tuple(args.eval_seeds),
        start_lrs=tuple(args.start_lr),
        jobs=args.jobs,
        device=args.device,
    )
    compare(config, args.out, progress=not args.quiet, backend=_backend(args))
    print((Path(args.out) / "summary.md").read_text())
    return 0


def _add_benchmark(subparsers) -> None:
    from lrpilot.experiments.suite import suite_names

    p = subparsers.add_parser(
        "benchmark",
        help="run the comparison protocol over a suite of workloads",
        description="For every workload of a suite (a TOML file in experiments/suites/, or a "
        "path), tune the fixed schedules, then run the policy, the tuning-free optimizers and "
        "the tuned schedules on the evaluation seeds, as `lrpilot compare` does, into "
        "DIR/<workload>/ (a cache: run the same command again to resume). Writes "
        "DIR/summary.md, suite.csv, summary.csv, results.csv and performance_profile.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--suite", required=True, help=f"{', '.join(suite_names())}, or a TOML path")
    p.add_argument(
        "--policy",
        default="default",
        help="policy file or folder, or `default` (the shipped policy); `none` for no policy",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (--backend process)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA when present)")
    p.add_argument("--out", required=True, help="suite folder (one compare folder per workload)")
    _add_backend_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_benchmark)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from lrpilot.experiments.suite import load_suite, run_suite

    suite = load_suite(args.suite)
    policy = None if args.policy == "none" else args.policy
    if policy is not None:
        from lrpilot.agents.policy_file import load_policy

        load_policy(policy)  # a bad policy fails now, not after hours of tuning
    backend = _backend(args)
    run_suite(suite, args.out, policy, args.jobs, args.device, not args.quiet, backend)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a small controller and compare it with tuned schedules (~10 min)",
        description="Train a small PPO controller (preset `demo`: tiny model, 200-step runs on "
        "the built-in pydoc corpus) into DIR/controller, then compare it with constant, "
        "warmup+cosine and WSD, each tuned on a peak-LR grid, on held-out seeds, into "
        "DIR/compare, and print the summary table. Running it again reuses what is done.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="folder to write")
    p.add_argument("--jobs", type=int, default=2, help="comparison runs in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from lrpilot.experiments.demo import run_demo

    run_demo(args.out, jobs=args.jobs, progress=not args.quiet)
    print((Path(args.out) / "compare" / "summary.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="lrpilot",
        description="lrpilot learns to drive the learning rate of language-model training. "
        "Each subcommand has its own --help.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    _add_run(subparsers)
    _add_train(subparsers)
    _add_replay(subparsers)
    _add_compare(subparsers)
    _add_benchmark(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse's own errors and --help included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    try:
        if args.command in ("compare", "benchmark", "train", "demo"):
            return run_until_stopped(lambda: args.handler(args), args.command, args.out)
        return args.handler(args)
    except ConfigError as exc:
        print(f"lrpilot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrpilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
