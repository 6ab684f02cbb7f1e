"""The config of a controller training run: PPO, the environment, the evaluation tasks.

A preset TOML file (`experiments/presets/*.toml`, or a path) holds one `TrainConfig`:
top-level counts, then the tables `[ppo]`, `[env]` (with `[env.action]` and
`[env.task_space]`) and `[eval]` (with `[eval.run]`). The CLI's flags override its top-level fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpilot.agents.controllers import RANGE_RULES, RangeStopController
from lrpilot.config import (
    all_of,
    at_least,
    check_fields,
    distinct,
    each,
    from_dict,
    in_range,
    non_empty,
    non_negative,
    one_of,
    positive,
    read_toml,
    setting,
    to_dict,
    valid_seed,
)
from lrpilot.env.lr_env import EnvConfig
from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError
from lrpilot.lm.workloads import spec_in_folder
from lrpilot.settings import RunSettings

DEFAULT_PRESET = "controller"  # the preset that trained the shipped policy `tiny`


def discount(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@dataclass(frozen=True)
class PPOSettings:
    """Stable-Baselines3 PPO hyperparameters (see its documentation)."""

    learning_rate: float = setting(3e-4, help="Adam's learning rate", check=positive)
    n_steps: int = setting(200, help="rollout length per environment", check=at_least(2))
    batch_size: int = setting(100, help="minibatch size", check=at_least(2))
    n_epochs: int = setting(10, help="passes over each rollout", check=positive)
    gamma: float = setting(1.0, help="discount factor", check=discount)
    gae_lambda: float = setting(0.95, help="GAE's lambda", check=in_range(0, 1))
    clip_range: float = setting(0.2, help="PPO's clip range", check=positive)
    ent_coef: float = setting(0.01, help="entropy bonus", check=non_negative)
    vf_coef: float = setting(0.5, help="value loss weight", check=non_negative)
    max_grad_norm: float = setting(0.5, help="gradient clip", check=positive)
    net_arch: tuple[int, ...] = setting(
        (64, 64), help="hidden layer sizes", check=all_of(non_empty, each(positive))
    )
    anneal_lr: bool = setting(
        False,
        help="PPO's own learning rate falls linearly to 0 over the timesteps (as CleanRL's "
        "anneal_lr; the last update runs at 0), so the policy settles late in training",
    )
    log_std_init: float = setting(
        0.0,
        help="continuous actions: the initial log standard deviation of the Gaussian policy, "
        "in action units (SB3's default 0: std 1 over the action range [-1, 1])",
        check=in_range(-5, 2),
    )

    def __post_init__(self) -> None:
        check_fields(self)


def start_lr_column(start_lr: float) -> str:
    """The name of a start LR's mean final loss in an evaluation (`evaluations.csv`)."""
    return f"final_val_loss_start_{start_lr:g}"


# How `best/` is chosen among the evaluations: the column of `evaluations.csv` to minimise.
SELECTION_COLUMNS = {
    "mean": "mean_final_val_loss",  # mean over all evaluation runs
    "worst_start_lr": "worst_start_lr_final_val_loss",  # worst start LR's mean over seeds
}


@dataclass(frozen=True)
class EvalSettings:
    """The fixed held-out tasks of the periodic evaluation: every seed x start LR, and
    how the best checkpoint is chosen from them."""

    run: RunSettings = setting(
        RunSettings(steps=400, eval_every=20, device="cpu"), help="the evaluation run"
    )
    seeds: tuple[int, ...] = setting(
        (100001, 100002),
        help="evaluation seeds",
        check=all_of(non_empty, distinct, each(valid_seed)),
    )
    start_lrs: tuple[float, ...] = setting(
        (3e-4, 3e-3), help="start LRs", check=all_of(non_empty, each(positive))
    )
    select: str = setting(
        "mean",
        help=f"how best/ is chosen: {', '.join(SELECTION_COLUMNS)}",
        check=one_of(tuple(SELECTION_COLUMNS)),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if len({start_lr_column(lr) for lr in self.start_lrs}) != len(self.start_lrs):
            raise ConfigError(f"start_lrs must differ in 6 digits, got {self.start_lrs!r}")
        self.tasks()  # every value checked

    def tasks(self) -> list[Task]:
        return [self.run.task(seed, lr) for seed in self.seeds for lr in self.start_lrs]


@dataclass(frozen=True)
class ImitationSettings:
    """Behaviour cloning before PPO (`lrpilot.agents.imitation`): the policy starts as a
    copy of a fixed rule on the range test, so PPO's first rollouts are as safe as the
    rule and training only has to improve on it."""

    controller: str = setting(
        "",
        help=f"the range-test rule to imitate ({', '.join(RANGE_RULES)}), with its stop "
        "settings on the preset's action rule; empty: no imitation",
        check=lambda name: (
            None
            if name in ("", *RANGE_RULES)
            else f"must be {', '.join(RANGE_RULES)} or empty (none)"
        ),
    )
    episodes: int = setting(
        32, help="episodes the rule drives (rounded up to a multiple of n_envs)", check=positive
    )
    epochs: int = setting(200, help="passes over the rule's observations", check=positive)
    learning_rate: float = setting(1e-3, help="Adam's learning rate of the fit", check=positive)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `lrpilot train` needs; a preset TOML file holds one."""

    timesteps: int = setting(20000, help="total env steps (intervals) of PPO", check=positive)
    n_envs: int = setting(1, help="environment processes, or Ray actors", check=positive)
    seed: int = setting(0, help="seed of PPO and the task sampling", check=valid_seed)
    eval_every_timesteps: int = setting(
        2000, help="PPO timesteps between evaluations on the eval tasks", check=positive
    )
    checkpoint_every_timesteps: int = setting(
        1000, help="PPO timesteps between checkpoints", check=positive
    )
    ppo: PPOSettings = setting(PPOSettings(), help="PPO's hyperparameters")
    env: EnvConfig = setting(EnvConfig(), help="the environment and its tasks")
    eval: EvalSettings = setting(EvalSettings(), help="the evaluation tasks")
    imitation: ImitationSettings = setting(
        ImitationSettings(), help="behaviour cloning of a fixed rule before PPO"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.imitation.controller:
            name = self.imitation.controller
            read = [f for f in RangeStopController.READS if f in self.env.masked_features]
            if read:
                raise ConfigError(
                    f"[imitation] controller {name!r} reads {', '.join(read)}, which "
                    "[env] masked_features hides from it"
                )
            _, settings = RANGE_RULES[name]
            try:
                RangeStopController(rule=self.env.action, **settings)
            except ConfigError as exc:
                raise ConfigError(f"[imitation] controller {name!r}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> TrainConfig:
        """A config from a preset's tables (`source` names the preset in errors)."""
        return from_dict(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_train_config(
    preset: str, workload: str | None = None, files_in_preset_folder: bool = True, **overrides
) -> TrainConfig:
    """A preset, with top-level fields (timesteps, n_envs, seed, ...) overridden.

    A workload file named in the preset (`.toml`, `FILE.py:FUNCTION`) is relative to
    the preset's folder, as in suites (`files_in_preset_folder=False`: to the current
    one, as in a run folder's `config.toml`, which training writes). `workload` (a spec,
    as `--workload` takes, relative to the current folder) replaces the preset's training
    and evaluation workloads, with the workload's own corpus and batch size.
    """
    data, folder = read_toml(preset, "preset", "presets")
    folder = folder if files_in_preset_folder else Path.cwd()
    env, evaluation = data.get("env"), data.get("eval")
    space = env.get("task_space") if isinstance(env, dict) else None
    if isinstance(space, dict) and isinstance(space.get("workloads"), list):
        space["workloads"] = [spec_in_folder(spec, folder) for spec in space["workloads"]]
    run = evaluation.get("run") if isinstance(evaluation, dict) else None
    if isinstance(run, dict) and "workload" in run:
        run["workload"] = spec_in_folder(run["workload"], folder)
    workload = spec_in_folder(workload, Path.cwd())
    data.update({k: v for k, v in overrides.items() if v is not None})
    if workload is not None:
        env = data.setdefault("env", {})
        env["task_space"] = env.get("task_space", {}) | {"workloads": [workload]}
        evaluation = data.setdefault("eval", {})
        evaluation["run"] = evaluation.get("run", {}) | {"workload": workload}
        for table in (env["task_space"], evaluation["run"]):
            for key in ("corpora", "corpus", "batch_size", "vary"):
                table.pop(key, None)
    return TrainConfig.from_dict(data, f"preset {preset!r}")
