"""Replay: a learned policy closed-loop on new runs, or a recorded LR trace open-loop.

Closed loop, the policy sees each interval's loss statistics and picks the next LR,
exactly as in training (`LRControlEnv` drives the run). Open loop, the LRs of a
recorded `trace.csv` are applied step by step whatever the losses do. Running both
on the same seeds tells whether the feedback mattered or only the shape of the LR
curve.

Each replayed run writes `seed_<s>/trace.csv` (the columns of `lrpilot run` plus
`action` and `reward`), `seed_<s>/summary.json` and `seed_<s>/plot.png`; the folder
gets `summary.csv`, one row per seed.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from lrpilot.agents.controllers import Controller
from lrpilot.agents.policy_file import Policy
from lrpilot.agents.rollout import run_episode
from lrpilot.agents.rule_policy import RulePolicy
from lrpilot.env.lr_env import EnvConfig, LRControlEnv
from lrpilot.env.rewards import interval_reward
from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError
from lrpilot.experiments.folders import claim_folder
from lrpilot.experiments.plots import plot_run
from lrpilot.experiments.runs import run_summary, train_intervals
from lrpilot.files import atomic_write_csv, atomic_write_json, ensure_writable_dir
from lrpilot.lm.byte_gpt import resolve_device
from lrpilot.lm.run import IntervalStats
from lrpilot.lm.trace import TRACE_COLUMNS

REPLAY_COLUMNS: tuple[str, ...] = (*TRACE_COLUMNS, "action", "reward")
LR_TRACE_COLUMNS = ("step", "lr")  # what an open-loop replay needs from a trace file


def policy_env_config(policy: Policy | RulePolicy, device: str = "cpu") -> EnvConfig:
    """The environment a policy was trained in: its action rule, feature set, masked
    features and reward (a policy file records how it was trained in `training.env`)."""
    # a policy file's metadata; a fixed rule (`RulePolicy`) has none: the defaults
    trained = getattr(policy, "metadata", {}).get("training", {}).get("env", {})
    defaults = EnvConfig()
    return EnvConfig(
        action=policy.action,
        feature_version=policy.feature_version,
        masked_features=policy.masked_features,
        history=policy.history,
        reward=trained.get("reward", defaults.reward),
        divergence_factor=trained.get("divergence_factor", defaults.divergence_factor),
        divergence_penalty=trained.get("divergence_penalty", defaults.divergence_penalty),
        device=device,
    )


def run_controller(
    controller: Controller,
    task: Task,
    env_config: EnvConfig,
    out_dir: Path | None = None,
) -> pd.DataFrame:
    """One closed-loop run of `task` under `controller`; its trace (REPLAY_COLUMNS).

    With `out_dir`, `trace.csv` is rewritten after every interval.
    """
    env = LRControlEnv(env_config)

    def save(rows: list[dict]) -> None:
        if out_dir is not None:
            atomic_write_csv(out_dir / "trace.csv", pd.DataFrame(rows, columns=REPLAY_COLUMNS))

    result = run_episode(env, controller, task, on_row=save, test=True)
    return pd.DataFrame(result.rows, columns=REPLAY_COLUMNS)


# -- open loop -----------------------------------------------------------------------------


def read_lr_trace(path: str | os.PathLike) -> pd.DataFrame:
    """A recorded trace (any `trace.csv` of lrpilot), checked for what replay needs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trace file not found: {str(path)!r}")
    try:
        trace = pd.read_csv(path)
    except OSError as exc:
        raise ConfigError(f"trace file cannot be read: {str(path)!r} ({exc.strerror})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"trace file is not a CSV table: {str(path)!r} ({exc})") from None
    missing = [c for c in LR_TRACE_COLUMNS if c not in trace.columns]
    if missing:
        raise ConfigError(
            f"trace file {str(path)!r} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, trace.columns))})"
        )
    steps = pd.to_numeric(trace["step"], errors="coerce")
    lrs = pd.to_numeric(trace["lr"], errors="coerce")
    intervals = steps > 0
    if not intervals.any() or steps.isna().any() or not steps.is_monotonic_increasing:
        raise ConfigError(f"trace file {str(path)!r}: 'step' must be increasing numbers")
    if lrs.isna().any() or not (lrs[intervals] > 0).all() or not lrs.map(math.isfinite).all():
        raise ConfigError(f"trace file {str(path)!r}: 'lr' must be positive finite numbers")
    return pd.DataFrame({"step": steps.astype(int), "lr": lrs.astype(float)})


def recorded_lr_function(trace: pd.DataFrame) -> Callable[[int], float]:
    """The LR of each step as recorded: constant over each recorded interval.

    Row `i > 0` of a trace covers the steps `(step_{i-1}, step_i]`; its `lr` is used
    for every step of that interval: exact for traces whose LR changes only between
    intervals (policies without a warmup or cooldown), an approximation inside a
    cooldown; a warmup within the first interval is not replayed at all (its last step
    trains at the full LR, which the whole interval then gets).
    """
    rows = trace[trace["step"] > 0]
    ends = rows["step"].tolist()  # the global step count at each interval's end
    lrs = rows["lr"].tolist()

    def lr_at(step: int) -> float:  # `step` is the count of steps taken so far
        return lrs[min(bisect.bisect_right(ends, step), len(lrs) - 1)]

    return lr_at


def check_covers(lr_trace: pd.DataFrame, task: Task) -> None:
    """A one-line error unless the recorded trace covers the task's whole budget."""
    covered = int(lr_trace["step"].iloc[-1])
    if task.steps > covered:
        raise ConfigError(
            f"the trace covers {covered} steps but the run asks for {task.steps}; "
            f"pass --steps {covered} or less"
        )


def run_open_loop(
    lr_trace: pd.DataFrame,
    task: Task,
    env_config: EnvConfig,
    out_dir: Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Train `task` at the recorded LRs; rewards as the environment would give them."""
    check_covers(lr_trace, task)
    run = task.make_run(env_config.device)
    num_intervals = task.num_intervals
    start_lr = float(lr_trace["lr"].iloc[0])  # row 0: the recorded start LR

    def reward_and_stop(interval: int, stats: IntervalStats, rows: list[dict]) -> bool:
        reward, diverged = interval_reward(
            env_config.reward,
            previous_loss=rows[-2]["val_loss"],
            loss=stats.val_loss if not stats.nonfinite else math.nan,
            initial_loss=rows[0]["val_loss"],
            interval=interval,
            num_intervals=num_intervals,
            divergence_factor=env_config.divergence_factor,
            divergence_penalty=env_config.divergence_penalty,
        )
        rows[-1] |= {"action": math.nan, "reward": reward}
        return diverged  # the environment ends a diverged run; so does its replay

    trace = train_intervals(
        run,
        task.steps,
        task.eval_every,
        recorded_lr_function(lr_trace),
        on_interval=reward_and_stop,
        first_row={"action": math.nan, "reward": 0.0, "lr": start_lr, "lr_mean": start_lr},
        out_dir=out_dir,
        progress=progress,
        desc=f"open loop, seed {task.seed}",
    )
    return trace[list(REPLAY_COLUMNS)]


# -- the replay command --------------------------------------------------------------------


def replay_summary(trace: pd.DataFrame, divergence_factor: float) -> dict:
    """`run_summary` plus the episode return."""
    summary = run_summary(trace, float(trace["seconds"].iloc[-1]), divergence_factor)
    summary["episode_return"] = float(trace["reward"].sum())
    return summary


def replay(
    tasks: Sequence[Task],
    out_dir: str | os.PathLike,
    *,
    policy: Policy | RulePolicy | None = None,
    lr_trace: pd.DataFrame | None = None,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
) -> pd.DataFrame:
    """Replay a policy (closed loop) or an LR trace (open loop) on each task, into
    `out_dir/seed_<s>/` (`seed_<s>-start_<lr>/` when the tasks start from several LRs).
    A folder that holds another experiment is refused unless `force`.

    Returns the per-seed summary table (also written to `out_dir/summary.csv`).
    """
    if (policy is None) == (lr_trace is None):
        raise ConfigError("give either a policy (closed loop) or an LR trace (open loop)")
    device = resolve_device(device).type  # an unusable device fails before any file
    for task in tasks if lr_trace is not None else ():
        check_covers(lr_trace, task)
    record = {"tasks": [task.to_dict() for task in tasks], "device": device}
    record["data_sha256"] = sorted({task.workload.digest() for task in tasks})
    if policy is not None:
        record["policy"] = policy.digest()
    else:
        record["lrs"] = lr_trace["lr"].tolist()
    out = ensure_writable_dir(out_dir)
    claim_folder(out, "replay", record, force)
    env_config = policy_env_config(policy, device) if policy else EnvConfig(device=device)
    mode = "closed loop" if policy else "open loop"
    rows = []
    several_starts = len({task.start_lr for task in tasks}) > 1
    for task in tasks:
        name = f"seed_{task.seed}" + (f"-start_{task.start_lr:g}" if several_starts else "")
        run_dir = ensure_writable_dir(out / name)
        start = time.perf_counter()
        if progress:
            print(f"replay ({mode}): seed {task.seed}, {task.steps} steps", flush=True)
        if policy is not None:
            trace = run_controller(policy, task, env_config, run_dir)
        else:
            trace = run_open_loop(lr_trace, task, env_config, run_dir, progress)
        summary = replay_summary(trace, env_config.divergence_factor)
        summary |= {"seconds": time.perf_counter() - start, "mode": mode, "task": task.to_dict()}
        atomic_write_json(run_dir / "summary.json", summary)
        title = f"{mode} replay, {task.workload.name}, seed {task.seed}"
        plot_run(trace, run_dir / "plot.png", title)
        rows.append(
            {"seed": task.seed, "start_lr": task.start_lr}
            | {k: summary[k] for k in ("final_val_loss", "test_loss", "test_accuracy")}
            | {k: summary[k] for k in ("scored_test_loss", "diverged")}
            | {"episode_return": summary["episode_return"], "steps": summary["steps"]}
        )
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "summary.csv", table)
    return table
