"""`RayVecEnv`: a Stable-Baselines3 `VecEnv` whose environments live in Ray actors.

It behaves like `SubprocVecEnv` (same seeding, auto-reset and info keys, so the same
seeds give the same observations and rewards), but each environment is an actor with
its own CPU/GPU resources, placed by Ray anywhere on a cluster: K can exceed one
machine's cores.

An actor whose process dies is replaced: the new one starts a fresh episode, and the
step that failed reports the old episode as ended (`done`, `TimeLimit.truncated`,
`worker_restarted` in its info), so PPO goes on. After `MAX_RETRIES` replacements of
one environment the error is raised.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from lrpilot.ray_backend import MAX_RETRIES, RayBackend, import_ray


class EnvWorker:
    """One environment inside a Ray actor; the commands of SB3's subprocess worker."""

    def __init__(self, env_fn: Callable[[], gym.Env]) -> None:
        self.env = env_fn()

    def pid(self) -> int:
        return os.getpid()

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        return self.env.observation_space, self.env.action_space

    def reset(self, seed: int | None, options: dict | None):
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict = {}
        if done:
            info["terminal_observation"] = observation
            observation, reset_info = self.env.reset()
        return observation, reward, done, info, reset_info

    def env_method(self, name: str, args: tuple, kwargs: dict):
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def get_attr(self, name: str):
        return self.env.get_wrapper_attr(name)

    def has_attr(self, name: str) -> bool:
        try:
            self.env.get_wrapper_attr(name)
        except AttributeError:
            return False
        return True

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        return is_wrapped(self.env, wrapper_class)

    def close(self) -> None:
        self.env.close()


class RayVecEnv(VecEnv):
    """K environments in Ray actors (Ray must be initialised: see `ray_session`)."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]], backend: RayBackend) -> None:
        self.ray = import_ray()
        self.env_fns = env_fns
        self.actor_class = self.ray.remote(EnvWorker).options(**backend.options(), max_restarts=0)
        self.actors = [self.actor_class.remote(fn) for fn in env_fns]
        self.restarts = [0] * len(env_fns)
        self.last_seeds: list[int | None] = [None] * len(env_fns)
        self.last_obs: list[Any] = [None] * len(env_fns)
        self.pending: list[Any] = []
        self.closed = False
        observation_space, action_space = self.ray.get(self.actors[0].spaces.remote())
        super().__init__(len(env_fns), observation_space, action_space)

    # -- stepping --------------------------------------------------------------------------

    def reset(self):
        refs = [
            actor.reset.remote(self._seeds[i], self._options[i])
            for i, actor in enumerate(self.actors)
        ]
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self.last_seeds[i] = seed  # a replaced actor derives its seed from it
        results = [self._get(i, ref, self._replace) for i, ref in enumerate(refs)]
        observations, self.reset_infos = zip(*results, strict=True)
        self._reset_seeds()
        self._reset_options()
        self.last_obs = list(observations)
        return np.stack(observations)

    def step_async(self, actions: np.ndarray) -> None:
        self.pending = [actor.step.remote(a) for actor, a in zip(self.actors, actions, strict=True)]

    def step_wait(self) -> VecEnvStepReturn:
        results = [self._get(i, ref, self._ended_by_failure) for i, ref in enumerate(self.pending)]
        self.pending = []
        observations, rewards, dones, infos, self.reset_infos = zip(*results, strict=True)
        self.last_obs = list(observations)
        return np.stack(observations), np.stack(rewards), np.stack(dones), list(infos)

    # -- failures --------------------------------------------------------------------------

    def _get(self, index: int, ref, on_failure: Callable[[int], Any]):
        """The result of `ref`, or, if the actor died, `on_failure(index)`."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            return on_failure(index)

    def _replace(self, index: int):
        """A new actor for environment `index`, reset; returns (observation, reset_info)."""
        self.restarts[index] += 1
        if self.restarts[index] > MAX_RETRIES:
            raise RuntimeError(
                f"environment {index}'s Ray actor died {self.restarts[index]} times; giving up"
            )
        with contextlib.suppress(Exception):  # it may be gone already, or only unreachable
            self.ray.kill(self.actors[index])
        self.actors[index] = self.actor_class.remote(self.env_fns[index])
        base = self.last_seeds[index]
        seed = None if base is None else base + 1_000_003 * self.restarts[index]  # a new stream
        return self._get(index, self.actors[index].reset.remote(seed, None), self._replace)

    def _ended_by_failure(self, index: int):
        """A step whose actor died: the episode ends there, a new one begins."""
        observation, reset_info = self._replace(index)
        info = {
            "TimeLimit.truncated": True,
            "terminal_observation": self.last_obs[index],
            "worker_restarted": True,
        }
        return observation, 0.0, True, info, reset_info

    # -- the rest of the VecEnv interface ---------------------------------------------------

    def _targets(self, indices: VecEnvIndices) -> list[Any]:
        return [self.actors[i] for i in self._get_indices(indices)]

    def close(self) -> None:
        if self.closed:
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):  # close what can be closed, kill them all
                self.ray.get(actor.close.remote())
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.closed = True

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self.ray.get([a.get_attr.remote(attr_name) for a in self._targets(indices)])

    def has_attr(self, attr_name: str) -> bool:
        return all(self.ray.get([a.has_attr.remote(attr_name) for a in self.actors]))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self.ray.get([a.set_attr.remote(attr_name, value) for a in self._targets(indices)])

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        return self.ray.get(
            [
                a.env_method.remote(method_name, method_args, method_kwargs)
                for a in self._targets(indices)
            ]
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return self.ray.get([a.is_wrapped.remote(wrapper_class) for a in self._targets(indices)])

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def worker_pids(self) -> list[int]:
        """The process id of each environment's actor (to watch, or to kill in tests)."""
        return self.ray.get([a.pid.remote() for a in self.actors])
