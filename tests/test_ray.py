"""The Ray backend on a local Ray instance with 2 CPUs: same numbers as local processes,
and a worker killed mid-run is replaced or retried without losing finished work."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from conftest import make_policy  # noqa: E402
from test_experiments import small_compare  # noqa: E402

from lrpilot.agents.training import load_train_config, make_vec_env, train  # noqa: E402
from lrpilot.experiments.compare import RUNS_DIR, compare  # noqa: E402
from lrpilot.ray_backend import RayBackend  # noqa: E402

BACKEND = RayBackend()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module; each command uses it as it finds it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _rollout(venv, steps: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    venv.seed(5)
    observations, rewards, dones = [venv.reset()], [], []
    actions = np.random.default_rng(0).integers(5, size=(steps, venv.num_envs))
    for action in actions:  # crosses episode ends: the tiny preset's runs are 4 intervals
        observation, reward, done, _ = venv.step(action)
        observations.append(observation)
        rewards.append(reward)
        dones.append(done)
    venv.close()
    return np.array(observations), np.array(rewards), np.array(dones)


def test_ray_envs_give_the_same_observations_and_rewards_as_processes():
    config = load_train_config("tiny", n_envs=2)
    local = _rollout(make_vec_env(config))
    remote = _rollout(make_vec_env(config, BACKEND))
    assert local[2].sum() >= 4  # episodes ended and were reset automatically
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_killed_env_actor_is_replaced_and_stepping_goes_on():
    venv = make_vec_env(load_train_config("tiny", n_envs=2), BACKEND)
    venv.seed(1)
    venv.reset()
    venv.step(np.array([2, 2]))
    os.kill(venv.worker_pids()[1], signal.SIGKILL)
    time.sleep(0.5)
    _, rewards, dones, infos = venv.step(np.array([2, 2]))
    assert dones[1] and infos[1]["worker_restarted"] and rewards[1] == 0.0
    assert not infos[0].get("worker_restarted")
    for _ in range(4):  # the replacement runs whole episodes
        observation, _, _, infos = venv.step(np.array([2, 2]))
        assert np.isfinite(observation).all()
        assert not any(info.get("worker_restarted") for info in infos)
    venv.close()


def test_training_on_ray_writes_a_policy(tmp_path):
    config = load_train_config("tiny", n_envs=2, timesteps=64)
    policy = train(config, tmp_path, progress=False, backend=BACKEND)
    assert policy.metadata["training"]["timesteps_done"] >= 64
    assert (tmp_path / "policy" / "policy.safetensors").is_file()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    return make_policy(seed=3).save(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def on_processes(policy_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("processes")
    compare(small_compare(policy_file, jobs=2), out, progress=False)
    return out


def _same_outputs(a, b) -> None:
    for name in ("results.csv", "summary.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(a / name).drop(columns="seconds", errors="ignore"),
            pd.read_csv(b / name).drop(columns="seconds", errors="ignore"),
        )
    cached = sorted(p.relative_to(a) for p in (a / RUNS_DIR).glob("*/run.json"))
    assert cached == sorted(p.relative_to(b) for p in (b / RUNS_DIR).glob("*/run.json"))


def test_compare_on_ray_equals_processes(on_processes, policy_file, tmp_path):
    compare(small_compare(policy_file), tmp_path, progress=False, backend=BACKEND)
    _same_outputs(tmp_path, on_processes)


def test_a_killed_compare_worker_is_retried(on_processes, policy_file, tmp_path):
    error: list[BaseException] = []

    def run() -> None:
        try:
            compare(small_compare(policy_file), tmp_path, progress=False, backend=BACKEND)
        except BaseException as exc:  # reported by the main thread
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300  # a guard against a hang, not a speed check
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "ray::run_trace_csv"], capture_output=True)
        pids = found.stdout.split()
        if pids:
            killed = int(pids[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join()
    assert not error, error
    assert killed is not None, "no compare task was seen running"
    _same_outputs(tmp_path, on_processes)
