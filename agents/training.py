"""Controller training with Stable-Baselines3 PPO: config, run folder, checkpoints, resume.

Run folder `DIR/`:

- `config.toml`: the resolved training config (preset plus flags);
- `progress.csv`: SB3's logger (a resumed run moves the previous one to
  `progress.1.csv`, `progress.2.csv`, ...); `tb/` TensorBoard logs when installed;
- `checkpoints/`: SB3 model and `VecNormalize` statistics every `checkpoint_every`
  timesteps, and `latest.json` naming the newest (these are internal and pickled,
  like any SB3 checkpoint; share the policy files instead);
- `policy/policy.safetensors`: the latest policy; `best/policy.safetensors`: the best
  on the evaluation tasks, by `eval.select` (`best/best.json` says which evaluation);
  `evaluations.csv`: every evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize
from tqdm.auto import tqdm

from lrpilot.agents.controllers import Controller
from lrpilot.agents.policy_file import Policy, policy_metadata
from lrpilot.agents.rollout import EpisodeResult, run_episode
from lrpilot.env.lr_env import EnvConfig, LRControlEnv
from lrpilot.env.tasks import Task, TaskSpace
from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)
from lrpilot.lm.trace import scored_final_loss
from lrpilot.presets import dataclass_from_dict, load_preset
from lrpilot.ray_backend import RayBackend, ray_session

CONFIG_FILE = "config.toml"
CHECKPOINTS = "checkpoints"


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


# How `best/` is chosen among the evaluations: the column of `evaluations.csv` to minimise.
SELECTION_COLUMNS = {
    "mean": "mean_final_val_loss",  # mean over all evaluation runs
    "worst_start_lr": "worst_start_lr_final_val_loss",  # worst start LR's mean over seeds
}


@dataclass(frozen=True)
class EvalSettings:
    """The fixed held-out tasks of the periodic evaluation: every seed x start LR, and
    how the best checkpoint is chosen from them (`select`, a key of SELECTION_COLUMNS)."""

    corpus: str = "pydoc"
    model: str = "tiny"
    total_steps: int = 400
    eval_every: int = 20
    batch_size: int = 64
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
        for task in self.tasks():  # TaskSpace checks every value
            TaskSpace.fixed(task)

    def tasks(self) -> list[Task]:
        return [
            Task(
                self.corpus,
                self.model,
                seed,
                self.total_steps,
                self.eval_every,
                lr,
                self.batch_size,
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
        env = dict(data.pop("env", {}))
        task_space = dataclass_from_dict(TaskSpace, env.pop("task_space", {}), "env.task_space")
        return dataclass_from_dict(
            cls,
            data
            | {
                "ppo": dataclass_from_dict(PPOSettings, data.get("ppo", {}), "ppo"),
                "env": dataclass_from_dict(EnvConfig, env | {"task_space": task_space}, "env"),
                "eval": dataclass_from_dict(EvalSettings, data.get("eval", {}), "eval"),
            },
            "top level",
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["env"]["task_space"] = {
            k: v for k, v in data["env"]["task_space"].items() if v is not None
        }
        return _tomlable(data)


def _tomlable(value):
    """Tuples to lists, recursively (TOML has arrays, not tuples)."""
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tomlable(v) for v in value]
    return value


def load_train_config(preset: str, **overrides) -> TrainConfig:
    """A preset, with top-level fields (timesteps, n_envs, seed, ...) overridden."""
    data = load_preset(preset)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


# -- environments -------------------------------------------------------------------------


def _make_env(env_config: EnvConfig) -> Monitor:
    torch.set_num_threads(1)  # one core per environment worker
    return Monitor(LRControlEnv(env_config))


def make_vec_env(config: TrainConfig, backend: RayBackend | None = None) -> VecEnv:
    """K environment processes (one in-process environment when K = 1), or K Ray actors
    with the Ray backend (Ray must be initialised: `ray_session`)."""
    factories = [functools.partial(_make_env, config.env)] * config.n_envs
    if backend is not None:
        from lrpilot.agents.ray_vec_env import RayVecEnv

        venv: VecEnv = RayVecEnv(factories, backend)
    elif config.n_envs == 1:
        venv: VecEnv = DummyVecEnv(factories)
    else:
        venv = SubprocVecEnv(factories, start_method="forkserver")
    venv.seed(config.seed)
    return venv


def make_model(config: TrainConfig, backend: RayBackend | None = None) -> tuple[PPO, VecNormalize]:
    """A fresh PPO model on K normalised environments, as the config says."""
    venv = VecNormalize(
        make_vec_env(config, backend), norm_obs=True, norm_reward=False, gamma=config.ppo.gamma
    )
    ppo = dataclasses.asdict(config.ppo)
    arch = list(ppo.pop("net_arch"))
    log_std_init = ppo.pop("log_std_init")  # used by Gaussian (continuous) policies only
    if ppo.pop("anneal_lr"):  # SB3 calls it with the fraction of training left, 1 -> 0
        ppo["learning_rate"] = LinearSchedule(ppo["learning_rate"], 0.0, end_fraction=1.0)
    model = PPO(
        "MlpPolicy",
        venv,
        policy_kwargs={
            "net_arch": {"pi": arch, "vf": arch},
            "activation_fn": torch.nn.Tanh,
            "log_std_init": log_std_init,
        },
        seed=config.seed,
        device="cpu",
        verbose=0,
        **ppo,
    )
    return model, venv


# -- policy export and evaluation ---------------------------------------------------------


def export_policy(model: PPO, venv: VecNormalize, config: TrainConfig) -> Policy:
    """The actor of an SB3 PPO model, with the observation statistics, as a safe `Policy`."""
    state = model.policy.state_dict()
    weights: dict[str, torch.Tensor] = {}
    linear = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    indices = [i for i, m in enumerate(model.policy.mlp_extractor.policy_net) if m in linear]
    for k, i in enumerate(indices):
        weights[f"hidden.{k}.weight"] = state[f"mlp_extractor.policy_net.{i}.weight"]
        weights[f"hidden.{k}.bias"] = state[f"mlp_extractor.policy_net.{i}.bias"]
    weights["output.weight"] = state["action_net.weight"]
    weights["output.bias"] = state["action_net.bias"]
    if config.env.action_mode == "continuous":
        weights["log_std"] = state["log_std"]
    rms = venv.obs_rms
    metadata = policy_metadata(
        action_mode=config.env.action_mode,
        factors=config.env.factors,
        continuous_max_factor=config.env.continuous_max_factor,
        lr_min=config.env.lr_min,
        lr_max=config.env.lr_max,
        factor_span=config.env.factor_span,
        first_action_max_factor=config.env.first_action_max_factor,
        cooldown_fraction=config.env.cooldown_fraction,
        warmup_fraction=config.env.warmup_fraction,
        masked_features=config.env.masked_features,
        hidden=list(config.ppo.net_arch),
        normalization={
            "mean": rms.mean.tolist(),
            "var": rms.var.tolist(),
            "epsilon": venv.epsilon,
            "clip_obs": venv.clip_obs,
        },
        training=config.to_dict() | {"timesteps_done": int(model.num_timesteps)},
    )
    return Policy({k: v.detach().cpu().clone() for k, v in weights.items()}, metadata)


def start_lr_column(start_lr: float) -> str:
    """The name of a start LR's mean final loss in an evaluation (`evaluations.csv`)."""
    return f"final_val_loss_start_{start_lr:g}"


def evaluate_controller(
    controller: Controller, tasks: list[Task], env: LRControlEnv
) -> dict[str, Any]:
    """Final validation losses of `controller` over `tasks` (a diverged run counts at the
    divergence cap): the mean, the mean per start LR (`start_lr_column(lr)`) and the
    worst of those, how many runs diverged, and the mean return."""
    factor = env.config.divergence_factor
    results: list[EpisodeResult] = [run_episode(env, controller, task) for task in tasks]
    finals = pd.Series(
        [
            scored_final_loss(
                [row["val_loss"] for row in r.rows], [row["nonfinite"] for row in r.rows], factor
            )
            for r in results
        ]
    )
    by_start_lr = finals.groupby([task.start_lr for task in tasks], sort=False).mean()
    return {
        "mean_final_val_loss": float(finals.mean()),
        "worst_start_lr_final_val_loss": float(by_start_lr.max()),
        "diverged": sum(r.diverged for r in results),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        **{start_lr_column(lr): float(v) for lr, v in by_start_lr.items()},
    }


def is_new_best(result: dict[str, Any], earlier: list[dict[str, Any]], select: str) -> bool:
    """Whether evaluation `result` beats every `earlier` one by the rule `select`.

    An earlier evaluation without the rule's column (written before it existed) or with
    NaN there does not compete.
    """
    column = SELECTION_COLUMNS[select]
    scores = [e.get(column, math.nan) for e in earlier]
    return result[column] < min((v for v in scores if not math.isnan(v)), default=math.inf)


# -- callbacks ----------------------------------------------------------------------------


class ProgressBarCallback(BaseCallback):
    """tqdm bar over timesteps, with episodes finished and the mean recent return."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.episodes = 0
        self.returns: list[float] = []

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, unit="step", desc="train")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.episodes += 1
                self.returns = [*self.returns[-19:], info["episode"]["r"]]
        if self.returns:
            self.bar.set_postfix(episodes=self.episodes, ret=f"{np.mean(self.returns):+.3f}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class CheckpointAndEvalCallback(BaseCallback):
    """Checkpoints every `checkpoint_every` timesteps; evaluation and best policy every
    `eval_every`.

    Both happen when a rollout starts, after PPO's update on the one before: the policy
    saved or evaluated at timestep t has learnt from all t timesteps (mid-rollout, it
    would be one update behind its label). The final policy is saved and evaluated by
    `_learn`.
    """

    def __init__(self, run: TrainingRun) -> None:
        super().__init__()
        self.run = run
        self.next_checkpoint = 0
        self.next_eval = 0

    def _next_multiple(self, every: int) -> int:
        """The first multiple of `every` after the current timestep (K envs step K at once)."""
        return (self.num_timesteps // every + 1) * every

    def _on_training_start(self) -> None:
        self.next_checkpoint = self._next_multiple(self.run.config.checkpoint_every)
        self.next_eval = self._next_multiple(self.run.config.eval_every)
        if not self.run.evaluations:  # a new run: measure the untrained policy too
            self.run.evaluate(self.model)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        # Checkpoints too wait for a rollout's start: mid-rollout, the timesteps since the
        # last update would be counted as done but lost with the rollout buffer, and a
        # resumed run would end up to one rollout past its `timesteps`.
        if self.num_timesteps >= self.next_checkpoint:
            self.run.checkpoint(self.model)
            self.next_checkpoint = self._next_multiple(self.run.config.checkpoint_every)
        if self.num_timesteps >= self.next_eval:
            self.run.evaluate(self.model)
            self.next_eval = self._next_multiple(self.run.config.eval_every)


# -- the training run ---------------------------------------------------------------------


class TrainingRun:
    """One run folder: start it, or resume it after a crash."""

    def __init__(self, config: TrainConfig, out: Path, backend: RayBackend | None = None) -> None:
        self.config = config
        self.out = out
        self.backend = backend  # None: local processes
        self.evaluations: list[dict[str, Any]] = []
        self.venv: VecNormalize | None = None
        self.eval_env = LRControlEnv(config.env)  # reused, so corpora load once per run
        self.seconds_before = 0.0  # training time of earlier sessions, to their last checkpoint
        self.session_start = time.perf_counter()

    def seconds(self) -> float:
        """Wall time spent training this run so far, over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.session_start

    # paths
    @property
    def checkpoints(self) -> Path:
        return self.out / CHECKPOINTS

    def latest_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoints / "latest.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def checkpoint(self, model: PPO) -> Policy:
        """Model and normalisation statistics, then `latest.json` (a crash at any point
        leaves the previous checkpoint intact), then `policy/`; returns the policy."""
        self.checkpoints.mkdir(exist_ok=True)
        steps = int(model.num_timesteps)
        model_path = self.checkpoints / f"model_{steps}.zip"
        norm_path = self.checkpoints / f"vecnormalize_{steps}.pkl"
        buffer = io.BytesIO()
        model.save(buffer)
        atomic_write_bytes(model_path, buffer.getvalue())
        assert self.venv is not None
        atomic_write_bytes(norm_path, pickle.dumps(self.venv))  # what VecNormalize.save writes
        previous = self.latest_checkpoint()
        atomic_write_json(
            self.checkpoints / "latest.json",
            {
                "timesteps": steps,
                "model": model_path.name,
                "vecnormalize": norm_path.name,
                "seconds": self.seconds(),
            },
        )
        if previous and previous["timesteps"] != steps:
            for name in (previous["model"], previous["vecnormalize"]):
                (self.checkpoints / name).unlink(missing_ok=True)
        policy = export_policy(model, self.venv, self.config)
        policy.save(self.out / "policy")
        return policy

    def evaluate(self, model: PPO) -> dict[str, Any]:
        assert self.venv is not None
        policy = export_policy(model, self.venv, self.config)
        result = evaluate_controller(policy, self.config.eval.tasks(), self.eval_env)
        result = {"timesteps": int(model.num_timesteps)} | result
        new_best = is_new_best(result, self.evaluations, self.config.eval.select)
        self.evaluations.append(result)
        atomic_write_csv(self.out / "evaluations.csv", pd.DataFrame(self.evaluations))
        if new_best:
            policy.save(self.out / "best")
            atomic_write_json(self.out / "best" / "best.json", result)
        model.logger.record("eval/mean_final_val_loss", result["mean_final_val_loss"])
        model.logger.record(
            "eval/worst_start_lr_final_val_loss", result["worst_start_lr_final_val_loss"]
        )
        model.logger.record("eval/diverged", result["diverged"])
        return result

    def _logger(self):
        formats = ["csv"]
        try:
            import tensorboard  # noqa: F401

            formats.append("tensorboard")
        except ImportError:
            pass
        existing = self.out / "progress.csv"
        if existing.exists():  # SB3's CSV logger truncates: keep the earlier part
            k = 1
            while (self.out / f"progress.{k}.csv").exists():
                k += 1
            existing.rename(self.out / f"progress.{k}.csv")
        return configure(str(self.out), formats)

    def start(self, progress: bool = True) -> Policy:
        self.out = ensure_writable_dir(self.out)
        atomic_write_text(self.out / CONFIG_FILE, tomli_w.dumps(self.config.to_dict()))
        model, self.venv = make_model(self.config, self.backend)
        return self._learn(model, progress)

    def resume(self, progress: bool = True) -> Policy:
        latest = self.latest_checkpoint()
        if latest is None:
            raise ConfigError(f"run folder has no checkpoint to resume from: {str(self.out)!r}")
        if (self.out / "evaluations.csv").is_file():
            self.evaluations = pd.read_csv(self.out / "evaluations.csv").to_dict("records")
        venv = make_vec_env(self.config, self.backend)
        self.seconds_before = latest.get("seconds", 0.0)  # absent in older run folders
        self.venv = VecNormalize.load(str(self.checkpoints / latest["vecnormalize"]), venv)
        model = PPO.load(self.checkpoints / latest["model"], env=self.venv, device="cpu")
        # PPO.load re-seeds with the original seed; draw new tasks and noise instead.
        model.set_random_seed(self.config.seed + int(model.num_timesteps))
        print(f"resuming {self.out} from timestep {latest['timesteps']}")
        return self._learn(model, progress)

    def _learn(self, model: PPO, progress: bool) -> Policy:
        model.set_logger(self._logger())
        remaining = self.config.timesteps - int(model.num_timesteps)
        callbacks: list[BaseCallback] = [CheckpointAndEvalCallback(self)]
        if progress:
            callbacks.append(ProgressBarCallback(self.config.timesteps))
        self.session_start = time.perf_counter()
        try:
            if remaining > 0:
                model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
            policy = self.checkpoint(model)
            if not self.evaluations or self.evaluations[-1]["timesteps"] != model.num_timesteps:
                self.evaluate(model)
            model.logger.dump(model.num_timesteps)
        finally:
            assert self.venv is not None
            self.venv.close()
        atomic_write_json(
            self.out / "training.json",
            {
                "timesteps": int(model.num_timesteps),
                "seconds_this_session": time.perf_counter() - self.session_start,
                "seconds": self.seconds(),
            },
        )
        return policy


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    progress: bool = True,
    backend: RayBackend | None = None,
) -> Policy:
    """Train a new controller into the run folder `out` (on Ray with a `backend`)."""
    out = Path(out)
    if (out / CHECKPOINTS / "latest.json").exists():
        raise ConfigError(f"{str(out)!r} already holds a training run; use --resume to continue it")
    with ray_session(backend):
        return TrainingRun(config, out, backend).start(progress)


def resume(
    out: str | os.PathLike,
    timesteps: int | None = None,
    progress: bool = True,
    backend: RayBackend | None = None,
) -> Policy:
    """Continue the training run in `out` from its last checkpoint."""
    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        raise ConfigError(f"not a training run folder (no {CONFIG_FILE}): {str(out)!r}")
    config = load_train_config(str(out / CONFIG_FILE), timesteps=timesteps)
    if timesteps is not None:
        atomic_write_text(out / CONFIG_FILE, tomli_w.dumps(config.to_dict()))
    with ray_session(backend):
        return TrainingRun(config, out, backend).resume(progress)
