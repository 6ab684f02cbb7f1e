"""Stable-Baselines3 PPO on `LRControlEnv`: vectorised environments, the model, and the
export of its actor as a safe `Policy` file."""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from lrpilot.agents.policy_file import Policy
from lrpilot.agents.policy_format import policy_metadata
from lrpilot.agents.train_config import TrainConfig
from lrpilot.env.lr_env import EnvConfig, LRControlEnv
from lrpilot.processes import forkserver_context, init_worker
from lrpilot.ray_backend import RayBackend


def _make_env(env_config: EnvConfig) -> Monitor:
    torch.set_num_threads(1)  # one core per environment worker
    return Monitor(LRControlEnv(env_config))


def _make_env_in_worker(env_config: EnvConfig, ancestor: int) -> Monitor:
    """`_make_env` in an environment process, which dies with the training process
    `ancestor` (`lrpilot.processes`)."""
    init_worker(ancestor)
    return _make_env(env_config)


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
        in_worker = functools.partial(_make_env_in_worker, config.env, os.getpid())
        context = forkserver_context("lrpilot.agents.ppo")
        venv = SubprocVecEnv([in_worker] * config.n_envs, context.get_start_method())
    venv.seed(config.seed)
    return venv


def close_vec_env(venv: VecEnv) -> None:
    """Close `venv`; environment processes already killed (a stopped command) are
    only reaped, without the messages they can no longer answer."""
    try:
        venv.close()
    except (EOFError, OSError):
        subprocesses = venv.unwrapped
        for process in getattr(subprocesses, "processes", []):
            process.kill()
            process.join()
        subprocesses.closed = True


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
    if config.env.action.mode == "continuous":
        weights["log_std"] = state["log_std"]
    rms = venv.obs_rms
    metadata = policy_metadata(
        action=config.env.action,
        masked_features=config.env.masked_features,
        history=config.env.history,
        feature_version=config.env.feature_version,
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
