"""The config of a controller training run: PPO, the environment, the evaluation tasks.

A preset TOML file (`experiments/presets/*.toml`, or a path) holds one `TrainConfig`:
top-level counts, then the tables `[ppo]`, `[env]` (with `[env.action]` and
`[env.task_space]`) and `[eval]`. The CLI's flags override its top-level fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lrpilot.env.actions import ActionRule
from lrpilot.env.lr_env import EnvConfig
from lrpilot.env.tasks import Task, TaskSpace
from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.presets import dataclass_from_dict, load_preset

DEFAULT_PRESET = "controller"  # the preset that trained the shipped policy


@dataclass(frozen=True)
class PPOSettings:
    """Stable-Baselines3 PPO hyperparameters (see its documentation)."""

    learning_rate: float = 3e-4
    n_steps: int = 200  # rollout length per environment
    batch_size: int = 100
    n_epochs: int = 10
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    # PPO's own learning rate falls linearly to 0 over `timesteps` (as CleanRL's
    # `anneal_lr`; here the last update runs at 0), so the policy settles instead of
    # drifting late in training.
    anneal_lr: bool = False
    # Continuous actions: the initial log standard deviation of the Gaussian policy, in
    # action units (SB3's default 0: std 1 over the action range [-1, 1]).
    log_std_init: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "net_arch", tuple(self.net_arch))
        if not self.net_arch or any(not isinstance(n, int) or n <= 0 for n in self.net_arch):
            raise ConfigError(f"ppo.net_arch must be positive layer sizes, got {self.net_arch!r}")
        if not isinstance(self.n_steps, int) or self.n_steps < 2:
            raise ConfigError(f"ppo.n_steps must be an integer >= 2, got {self.n_steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ConfigError(f"ppo.batch_size must be an integer >= 2, got {self.batch_size!r}")
        require_positive_int("ppo.n_epochs", self.n_epochs)
        log_std_init = self.log_std_init
        if isinstance(log_std_init, bool) or not (
            isinstance(log_std_init, (int, float)) and -5 <= log_std_init <= 2
        ):
            raise ConfigError(f"ppo.log_std_init must be in [-5, 2], got {self.log_std_init!r}")
        if not isinstance(self.anneal_lr, bool):
            raise ConfigError(f"ppo.anneal_lr must be true or false, got {self.anneal_lr!r}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError(
                f"ppo.gamma must be in (0, 1] and gae_lambda in [0, 1], "
                f"got {self.gamma!r}, {self.gae_lambda!r}"
            )


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
    how the best checkpoint is chosen from them (`select`, a key of SELECTION_COLUMNS)."""

    workload: str = "tiny"  # a workload spec, as `--workload` takes
    corpus: str | None = None  # replaces the workload's corpus
    batch_size: int | None = None  # replaces the workload's batch size
    total_steps: int = 400
    eval_every: int = 20
    seeds: tuple[int, ...] = (100001, 100002)
    start_lrs: tuple[float, ...] = (3e-4, 3e-3)
    select: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "start_lrs", tuple(self.start_lrs))
        if not self.seeds or not self.start_lrs:
            raise ConfigError("eval.seeds and eval.start_lrs must not be empty")
        if len({start_lr_column(lr) for lr in self.start_lrs}) != len(self.start_lrs):
            raise ConfigError(f"eval.start_lrs must differ in 6 digits, got {self.start_lrs!r}")
        if not isinstance(self.select, str) or self.select not in SELECTION_COLUMNS:
            raise ConfigError(
                f"eval.select must be one of {', '.join(SELECTION_COLUMNS)}, got {self.select!r}"
            )
        self.tasks()  # every value checked

    def tasks(self) -> list[Task]:
        return [
            Task.of(
                self.workload,
                seed,
                total_steps=self.total_steps,
                eval_every=self.eval_every,
                start_lr=lr,
                corpus=self.corpus,
                batch_size=self.batch_size,
            )
            for seed in self.seeds
            for lr in self.start_lrs
        ]


@dataclass(frozen=True)
class TrainConfig:
    """Everything `lrpilot train` needs; a preset TOML file holds one."""

    timesteps: int = 20000
    n_envs: int = 1
    seed: int = 0
    eval_every: int = 2000  # timesteps between evaluations
    checkpoint_every: int = 1000  # timesteps between checkpoints
    ppo: PPOSettings = field(default_factory=PPOSettings)
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        for name in ("timesteps", "n_envs", "eval_every", "checkpoint_every"):
            require_positive_int(name, getattr(self, name))
        require_seed(self.seed)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        return dataclass_from_dict(
            cls,
            data
            | {
                "ppo": dataclass_from_dict(PPOSettings, data.get("ppo", {}), "ppo"),
                "env": env_config_from_dict(data.get("env", {})),
                "eval": dataclass_from_dict(EvalSettings, data.get("eval", {}), "eval"),
            },
            "top level",
        )

    def to_dict(self) -> dict[str, Any]:
        return _tomlable(dataclasses.asdict(self))


def _tomlable(value):
    """Tuples to lists and unset (None) settings left out, recursively: TOML has arrays,
    not tuples, and no null."""
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_tomlable(v) for v in value]
    return value


def load_train_config(preset: str, workload: str | None = None, **overrides) -> TrainConfig:
    """A preset, with top-level fields (timesteps, n_envs, seed, ...) overridden.

    `workload` (a spec, as `--workload` takes) replaces the preset's training and
    evaluation workloads, with the workload's own corpus and batch size.
    """
    data = load_preset(preset)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if workload is not None:
        env = data.setdefault("env", {})
        env["task_space"] = env.get("task_space", {}) | {"workloads": [workload]}
        data["eval"] = data.get("eval", {}) | {"workload": workload}
        for table in (env["task_space"], data["eval"]):
            for key in ("corpora", "corpus", "batch_size", "vary"):
                table.pop(key, None)
    return TrainConfig.from_dict(data)


def env_config_from_dict(data: dict[str, Any]) -> EnvConfig:
    """The `[env]` table of a preset, with its `action` and `task_space` tables."""
    if not isinstance(data, dict):
        raise ConfigError(f"[env] must be a table, got {data!r}")
    env = dict(data)
    action = dataclass_from_dict(ActionRule, env.pop("action", {}), "env.action")
    task_space = dataclass_from_dict(TaskSpace, env.pop("task_space", {}), "env.task_space")
    return dataclass_from_dict(EnvConfig, env | {"action": action, "task_space": task_space}, "env")
