"""Behaviour cloning before PPO, the policies kept at each evaluation, and presets that
name workload files of their own."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tomli_w

from lrpilot.agents import load_policy
from lrpilot.agents.controllers import PRIOR_HOLD, PRIOR_RANGE_RULE, RangeStopController
from lrpilot.agents.train_config import ImitationSettings, TrainConfig, load_train_config
from lrpilot.agents.training import train
from lrpilot.cli import main
from lrpilot.env import EnvConfig
from lrpilot.errors import ConfigError
from lrpilot.experiments.replay import policy_env_config, run_controller
from lrpilot.experiments.suite import load_suite
from lrpilot.settings import RunSettings


def cloning_config(**imitation) -> TrainConfig:
    """The tiny preset on the prior's range test, cloning `priorhold` before PPO."""
    config = load_train_config("tiny", timesteps=32)
    space = dataclasses.replace(config.env.task_space, steps=(60,), eval_every=10)
    env = dataclasses.replace(
        config.env, action=PRIOR_RANGE_RULE, feature_version="v3", task_space=space
    )
    evaluation = dataclasses.replace(
        config.eval, start_lrs=(1e-3,), run=dataclasses.replace(config.eval.run, steps=60)
    )
    settings = ImitationSettings(**({"controller": "priorhold", "episodes": 4} | imitation))
    return dataclasses.replace(config, env=env, eval=evaluation, imitation=settings)


@pytest.fixture(scope="module")
def cloned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imitation") / "run"
    train(cloning_config(epochs=150), out, progress=False)
    return out


def test_the_cloned_policy_sets_the_lrs_of_the_rule_it_copied(cloned_run):
    record = json.loads((cloned_run / "imitation.json").read_text())
    assert record["controller"] == "priorhold" and record["episodes"] == 4
    assert record["observations"] == 4 * 6 and record["action_mse"] < 0.01
    task = RunSettings("tiny", corpus="pydoc", steps=60, eval_every=10, batch_size=8).task(9, 1e-3)
    rule = run_controller(
        RangeStopController(rule=PRIOR_RANGE_RULE, **PRIOR_HOLD),
        task,
        EnvConfig(action=PRIOR_RANGE_RULE, feature_version="v3"),
    )
    cloned = load_policy(cloned_run / "evaluated" / "0")  # before any PPO update
    copy = run_controller(cloned, task, policy_env_config(cloned))
    ratios = copy["lr"].to_numpy() / rule["lr"].to_numpy()
    assert np.all(np.abs(np.log(ratios)) < np.log(1.25)), ratios  # the rule's rise, then hold
    assert rule["lr"].iloc[2] == pytest.approx(2.5 * rule["lr"].iloc[1])


def test_every_evaluation_keeps_its_policy(cloned_run):
    evaluations = pd.read_csv(cloned_run / "evaluations.csv")
    kept = sorted(int(p.name) for p in (cloned_run / "evaluated").iterdir())
    assert kept == sorted(evaluations["timesteps"]) and kept[0] == 0 and kept[-1] == 32
    last = load_policy(cloned_run / "evaluated" / "32")
    assert last.metadata["training"]["timesteps_done"] == 32


def test_imitation_needs_a_range_test_rule_and_a_known_controller(tmp_path, capsys):
    with pytest.raises(
        ConfigError, match="controller must be rangestop, priorstop, priorhold or empty"
    ):
        cloning_config(controller="plateau")
    config = cloning_config()
    no_range = dataclasses.replace(config.env.action, range_start=0.0)
    plain = dataclasses.replace(config.env, action=no_range)
    with pytest.raises(ConfigError, match="controller 'priorhold': RangeStopController needs"):
        dataclasses.replace(config, env=plain)
    masked = dataclasses.replace(config.env, masked_features=("log_val_rel_prev",))
    with pytest.raises(ConfigError, match=r"reads log_val_rel_prev, which .* masked_features"):
        dataclasses.replace(config, env=masked)
    preset = tmp_path / "bad.toml"
    preset.write_text(tomli_w.dumps(config.to_dict() | {"imitation": {"episodes": 0}}))
    assert main(["train", "--preset", str(preset), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "[imitation] episodes must be positive, got 0" in err and err.count("\n") == 1


def test_a_preset_names_workload_files_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "narrow.toml").write_text('family = "byte_gpt"\nn_embd = 32\n')
    data = load_train_config("tiny").to_dict()
    data["env"]["task_space"]["workloads"] = ["tiny", "workloads/narrow.toml"]
    data["eval"]["run"]["workload"] = "workloads/narrow.toml"
    (tmp_path / "preset.toml").write_text(tomli_w.dumps(data))
    monkeypatch.chdir(tmp_path / "workloads")  # not where the files are relative to
    config = load_train_config(str(tmp_path / "preset.toml"))
    narrow = str(tmp_path / "workloads" / "narrow.toml")
    assert config.env.task_space.workloads == ("tiny", narrow)
    assert config.eval.run.workload == narrow


def test_the_prior_generalist_preset_draws_both_families_on_its_own_corpora():
    config = load_train_config("prior_generalist")
    assert config.env.action == dataclasses.replace(PRIOR_RANGE_RULE, lr_min=1e-5, lr_max=0.1)
    assert config.imitation.controller == "priorhold"
    rng = np.random.default_rng(0)
    tasks = [config.env.task_space.sample(rng) for _ in range(40)]
    assert {t.workload.family for t in tasks} == {"byte_gpt", "text_classification"}
    corpora = {t.workload.corpus for t in tasks if t.workload.family == "byte_gpt"}
    suites = set()
    for suite in ("validation", "heldout"):
        for entry in load_suite(suite).entries:
            suites.add((entry.inline or {}).get("corpus") or entry.run.corpus or "pydoc")
    assert "pystdlib:tkinter" in suites and "pystdlib" in suites
    assert corpora and not corpora & suites
    # heldout's `pystdlib` reads the standard library's files up to encodings/
    assert all(corpus.split(":")[1] > "encodings" for corpus in corpora)
    assert all(t.num_intervals == 20 and 0.4 <= t.lr_scale <= 2.5 for t in tasks)


def test_compare_runs_a_policy_on_the_prior_once_for_every_start_lr(cloned_run):
    from lrpilot.experiments.compare import CompareConfig, prepare
    from lrpilot.experiments.compare_config import Protocol

    run = RunSettings(steps=20, eval_every=10, batch_size=8, device="cpu")
    protocol = Protocol(schedules=("constant",), lr_grid=2, lr_range=(1e-4, 1e-3), warmups=(),
                        tune_seeds=(0,), eval_seeds=(1,), start_lrs=(1e-4, 1e-3))  # fmt: skip
    prior = prepare(CompareConfig(run=run, protocol=protocol, policy=str(cloned_run / "policy")))
    shipped = prepare(CompareConfig(run=run, protocol=protocol, policy="tiny"))
    assert not prior.policy_reads_start_lr and shipped.policy_reads_start_lr


def test_a_relative_workload_flag_is_the_current_folders_and_resumes_as_written(
    tmp_path, monkeypatch
):
    """`--workload` is relative to where the command runs; the run folder's config.toml
    (absolute paths) loads back to the same config."""
    (tmp_path / "narrow.toml").write_text('family = "byte_gpt"\nn_embd = 32\n')
    monkeypatch.chdir(tmp_path)
    config = load_train_config("tiny", workload="narrow.toml")
    assert config.env.task_space.workloads == (str(tmp_path / "narrow.toml"),)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    monkeypatch.chdir(tmp_path / "run")
    again = load_train_config(str(tmp_path / "run" / "config.toml"), files_in_preset_folder=False)
    assert again == config


def test_each_environment_gives_its_first_episodes_whatever_their_lengths():
    """Two environments with budgets of 40 and 60 steps (4 and 6 intervals): each gives
    its first 2 episodes, so the longer ones are not crowded out by the shorter."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from lrpilot.agents.imitation import rule_episodes
    from lrpilot.env import LRControlEnv

    def env_of(steps: int):
        config = cloning_config().env
        space = dataclasses.replace(config.task_space, steps=(steps,))
        return lambda: LRControlEnv(dataclasses.replace(config, task_space=space))

    venv = VecNormalize(DummyVecEnv([env_of(40), env_of(60)]), norm_reward=False)
    venv.seed(0)
    controllers = [RangeStopController(rule=PRIOR_RANGE_RULE, **PRIOR_HOLD) for _ in range(2)]
    raw, actions, returns, episode_returns = rule_episodes(venv, controllers, 2, gamma=1.0)
    assert len(episode_returns) == 4 and len(raw) == 2 * 4 + 2 * 6 == len(actions)
    starts = np.flatnonzero(raw[:, 0] == 0.0)  # progress 0: each episode's first observation
    assert len(starts) == 4 and returns[starts] == pytest.approx(
        sorted(returns[starts], key=list(returns[starts]).index)
    )
    assert sorted(returns[starts]) == pytest.approx(sorted(episode_returns))
