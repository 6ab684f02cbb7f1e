"""Behaviour cloning before PPO: the policy starts as a copy of a fixed rule.

The rule (`RangeStopController` with the named controller's stop settings, on the
preset's action rule) drives the training environments for `episodes` episodes
(rounded up to a multiple of the environments: each one's first episodes). The
policy's mean action is then fitted to the rule's actions (mean squared error, in
action units) and the value function to the returns that followed (the sum of the
rewards from each observation on, discounted by PPO's gamma), on the observations as PPO
sees them: normalised by the statistics the episodes left in `VecNormalize`. The log
standard deviation stays as the preset sets it, so PPO explores around the rule from
its first update. Only finished episodes are kept.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from lrpilot.agents.controllers import RANGE_RULES, RangeStopController
from lrpilot.agents.train_config import TrainConfig

BATCH_SIZE = 256  # observations per gradient step of the fit


def rule_episodes(
    venv: VecNormalize, controllers: list[RangeStopController], per_env: int, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Drive `venv` (one controller per environment) until each environment has
    finished `per_env` episodes, keeping each one's first `per_env` (so short episodes
    are not favoured); their raw observations (n, obs), actions (n, 1), returns from
    each observation on (n,), and each episode's return."""
    raw_obs, actions, returns, episode_returns = [], [], [], []
    open_episodes = [([], [], []) for _ in controllers]  # observations, actions, rewards
    finished = [0] * len(controllers)
    venv.reset()  # SB3 resets an environment itself when its episode ends
    while min(finished) < per_env:
        observations = venv.get_original_obs()  # (n_envs, obs)
        chosen = np.stack([c.act(o) for c, o in zip(controllers, observations, strict=True)])
        _, rewards, dones, _ = venv.step(chosen)
        for k, episode in enumerate(open_episodes):
            episode[0].append(observations[k])
            episode[1].append(chosen[k])
            episode[2].append(float(rewards[k]))
            if dones[k] and finished[k] < per_env:
                to_go, total = [], 0.0
                for reward in reversed(episode[2]):
                    total = reward + gamma * total
                    to_go.append(total)
                raw_obs += episode[0]
                actions += episode[1]
                returns += to_go[::-1]
                episode_returns.append(total)
            if dones[k]:
                finished[k] += 1
                open_episodes[k] = ([], [], [])
    return (
        np.asarray(raw_obs, dtype=np.float32),
        np.asarray(actions, dtype=np.float32).reshape(len(actions), -1),
        np.asarray(returns, dtype=np.float32),
        episode_returns,
    )


def imitate(model: PPO, venv: VecNormalize, config: TrainConfig) -> dict:
    """Fit `model`'s policy to the rule `config.imitation` names; what it did, for the
    run folder's `imitation.json`."""
    settings = config.imitation
    start = time.perf_counter()
    _, stop = RANGE_RULES[settings.controller]
    controllers = [
        RangeStopController(rule=config.env.action, **stop) for _ in range(config.n_envs)
    ]
    per_env = -(-settings.episodes // config.n_envs)  # rounded up
    raw, actions, returns, episode_returns = rule_episodes(
        venv, controllers, per_env, config.ppo.gamma
    )
    observations = torch.as_tensor(venv.normalize_obs(raw), dtype=torch.float32)
    actions_t, returns_t = torch.as_tensor(actions), torch.as_tensor(returns)
    policy = model.policy
    policy.set_training_mode(True)
    trained = [p for name, p in policy.named_parameters() if name != "log_std"]
    optimizer = torch.optim.Adam(trained, lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)

    def losses(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared errors of the mean action and the value on `batch` (indices)."""
        latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(observations[batch]))
        action_error = policy.action_net(latent_pi) - actions_t[batch]
        value_error = policy.value_net(latent_vf).squeeze(-1) - returns_t[batch]
        return torch.mean(action_error**2), torch.mean(value_error**2)

    for _ in range(settings.epochs):
        order = torch.randperm(len(observations), generator=generator)
        for batch in order.split(BATCH_SIZE):
            action_loss, value_loss = losses(batch)
            optimizer.zero_grad()
            (action_loss + value_loss).backward()
            optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        action_loss, value_loss = losses(torch.arange(len(observations)))
    return {
        "controller": settings.controller,
        "episodes": len(episode_returns),
        "observations": len(observations),
        "rule_mean_return": float(np.mean(episode_returns)),
        "action_mse": float(action_loss),
        "value_mse": float(value_loss),
        "seconds": time.perf_counter() - start,
    }
