"""Controller training with Stable-Baselines3 PPO: the run folder, checkpoints, resume.

The config is `lrpilot.agents.train_config.TrainConfig`; the environments, the PPO model
and the policy export are in `lrpilot.agents.ppo`; the periodic evaluation and the rule
for `best/` in `lrpilot.agents.evaluation`.

Run folder `DIR/`:

- `config.toml`: the resolved training config (preset plus flags);
- `progress.csv`: SB3's logger (a resumed run moves the previous one to
  `progress.1.csv`, `progress.2.csv`, ...); `tb/` TensorBoard logs when installed;
- `checkpoints/`: SB3 model and `VecNormalize` statistics every `checkpoint_every_timesteps`
  timesteps, and `latest.json` naming the newest (these are internal and pickled,
  like any SB3 checkpoint; share the policy files instead);
- `policy/policy.safetensors`: the latest policy; `best/policy.safetensors`: the best
  on the evaluation tasks, by `eval.select` (`best/best.json` says which evaluation);
  `evaluations.csv`: every evaluation; `evaluated/<timesteps>/policy.safetensors`: the
  policy of each evaluation, for a selection of one's own (a suite, say);
- `imitation.json`: the behaviour cloning before PPO, when the preset asks for it
  (`lrpilot.agents.imitation`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize
from tqdm.auto import tqdm

from lrpilot.agents.evaluation import evaluate_controller, is_new_best
from lrpilot.agents.imitation import imitate
from lrpilot.agents.policy_file import Policy
from lrpilot.agents.ppo import close_vec_env, export_policy, make_model, make_vec_env
from lrpilot.agents.train_config import TrainConfig, load_train_config
from lrpilot.env.lr_env import LRControlEnv
from lrpilot.errors import ConfigError
from lrpilot.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)
from lrpilot.ray_backend import RayBackend, ray_session

CONFIG_FILE = "config.toml"
CHECKPOINTS = "checkpoints"
EVALUATED = "evaluated"


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
    """Checkpoints every `checkpoint_every_timesteps` timesteps; evaluation and best policy every
    `eval_every_timesteps`.

    Both happen when a rollout starts, after PPO's update on the one before: the policy
    saved or evaluated at timestep t has learnt from all t timesteps (mid-rollout, it
    would be one update behind its label). The final policy is saved and evaluated by
    `_learn`.
    """

    def __init__(self, run: ControllerRun) -> None:
        super().__init__()
        self.run = run
        self.next_checkpoint = 0
        self.next_eval = 0

    def _next_multiple(self, every: int) -> int:
        """The first multiple of `every` after the current timestep (K envs step K at once)."""
        return (self.num_timesteps // every + 1) * every

    def _on_training_start(self) -> None:
        self.next_checkpoint = self._next_multiple(self.run.config.checkpoint_every_timesteps)
        self.next_eval = self._next_multiple(self.run.config.eval_every_timesteps)
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
            self.next_checkpoint = self._next_multiple(self.run.config.checkpoint_every_timesteps)
        if self.num_timesteps >= self.next_eval:
            self.run.evaluate(self.model)
            self.next_eval = self._next_multiple(self.run.config.eval_every_timesteps)


# -- the run folder ----------------------------------------------------------------------


class ControllerRun:
    """One controller-training run folder: start it, or resume it after a crash."""

    def __init__(self, config: TrainConfig, out: Path, backend: RayBackend | None = None) -> None:
        self.config = config
        self.out = out
        self.backend = backend  # None: local processes
        self.evaluations: list[dict[str, Any]] = []
        self.venv: VecNormalize | None = None
        self.eval_env = LRControlEnv(config.env)  # reused, so corpora load once per run
        self.seconds_before = 0.0  # training time of earlier sessions, to their last checkpoint
        self.session_start = time.perf_counter()  # this session's time counts from here

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
        policy.save(self.out / EVALUATED / str(result["timesteps"]))
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
        if self.config.imitation.controller:
            try:
                record = imitate(model, self.venv, self.config)
                atomic_write_json(self.out / "imitation.json", record)
                self.checkpoint(model)  # a resumed run starts from the copy of the rule
            except BaseException:
                close_vec_env(self.venv)
                raise
        return self._learn(model, progress)

    def resume(self, progress: bool = True) -> Policy:
        latest = self.latest_checkpoint()
        if latest is None:
            raise ConfigError(f"run folder has no checkpoint to resume from: {str(self.out)!r}")
        if (self.out / "evaluations.csv").is_file():
            evaluations = pd.read_csv(self.out / "evaluations.csv").to_dict("records")
            # those after the checkpoint were of a policy the resumed run does not continue
            self.evaluations = [e for e in evaluations if e["timesteps"] <= latest["timesteps"]]
        venv = make_vec_env(self.config, self.backend)
        self.seconds_before = latest["seconds"]
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
        try:
            if remaining > 0:
                model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False)
            policy = self.checkpoint(model)
            if not self.evaluations or self.evaluations[-1]["timesteps"] != model.num_timesteps:
                self.evaluate(model)
            model.logger.dump(model.num_timesteps)
        finally:
            assert self.venv is not None
            close_vec_env(self.venv)
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
        return ControllerRun(config, out, backend).start(progress)


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
    config = load_train_config(
        str(out / CONFIG_FILE), files_in_preset_folder=False, timesteps=timesteps
    )
    if timesteps is not None:
        atomic_write_text(out / CONFIG_FILE, tomli_w.dumps(config.to_dict()))
    with ray_session(backend):
        return ControllerRun(config, out, backend).resume(progress)
