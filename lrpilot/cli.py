"""The `lrpilot` command line: `lrpilot run ...` (more subcommands arrive with their issues).

Bad input is reported as one line on stderr naming the problem and the value,
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lrpilot.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_run(subparsers) -> None:
    from lrpilot.experiments.runs import RunConfig
    from lrpilot.lm.model import MODEL_PRESETS
    from lrpilot.lm.schedules import SCHEDULE_NAMES

    d = RunConfig()
    p = subparsers.add_parser(
        "run",
        help="train one LM run under a fixed LR schedule",
        description="Train one byte-level GPT run under a fixed LR schedule and write "
        "DIR/trace.csv (one row per evaluation interval), DIR/config.json and "
        "DIR/summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--schedule", default=d.schedule, help=f"one of: {', '.join(SCHEDULE_NAMES)}")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in the run")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps per interval")
    p.add_argument("--corpus", default=d.corpus, help="pydoc, pystdlib, or a file or folder path")
    p.add_argument("--model", default=d.model, help=f"one of: {', '.join(MODEL_PRESETS)}")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights and batches")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_run)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads <= 0:
            raise ConfigError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def _cmd_run(args: argparse.Namespace) -> int:
    from lrpilot.experiments.runs import RunConfig, run_schedule

    config = RunConfig(
        schedule=args.schedule,
        lr=args.lr,
        steps=args.steps,
        eval_every=args.eval_every,
        corpus=args.corpus,
        model=args.model,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    _set_threads(args.threads)
    trace = run_schedule(config, args.out, progress=not args.quiet)
    last = trace.iloc[-1]
    print(f"final val_loss {last['val_loss']:.4f} nats/byte after {int(last['step'])} steps")
    print(f"wrote {args.out}/trace.csv")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a PPO learning-rate controller",
        description="Train a PPO controller on LRControlEnv. A preset (a TOML file in "
        "experiments/presets/, or a path) sets PPO, the task distribution and the evaluation "
        "tasks; flags override it. Writes DIR/config.toml, progress.csv, checkpoints/, "
        "policy/ (latest) and best/ (best on the evaluation tasks).",
    )
    from lrpilot.presets import preset_names

    p.add_argument(
        "--preset",
        default="default",
        help=f"preset name ({', '.join(preset_names())}) or a TOML path (default: default)",
    )
    p.add_argument(
        "--timesteps", type=int, default=None, help="total env steps, i.e. intervals (preset's)"
    )
    p.add_argument("--n-envs", type=int, default=None, help="environment processes (preset's)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of PPO and the task sampling (preset's)"
    )
    p.add_argument("--out", required=True, help="run folder (new, or the one to --resume)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (--timesteps may extend it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from lrpilot.agents.training import load_train_config, resume, train

    if args.resume:
        policy = resume(args.out, timesteps=args.timesteps, progress=not args.quiet)
    else:
        config = load_train_config(
            args.preset, timesteps=args.timesteps, n_envs=args.n_envs, seed=args.seed
        )
        policy = train(config, args.out, progress=not args.quiet)
    done = policy.metadata["training"]["timesteps_done"]
    print(f"trained {done} timesteps; policy: {args.out}/policy/policy.safetensors")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse's own errors and --help included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"lrpilot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrpilot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
