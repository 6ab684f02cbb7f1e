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
    with pytest.raises(ConfigError, match="RangeStopController needs an action rule with range"):
        dataclasses.replace(config, env=plain)
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
    validation_and_heldout = {"pydoc", "pystdlib", "pystdlib:email", "pystdlib:json"}
    assert corpora and not corpora & validation_and_heldout
    assert all(t.num_intervals == 20 and 0.4 <= t.lr_scale <= 2.5 for t in tasks)


def test_compare_runs_a_policy_on_the_prior_once_for_every_start_lr(cloned_run):
    from lrpilot.experiments.compare import CompareConfig, prepare
    from lrpilot.experiments.compare_config import Protocol

    run = RunSettings(steps=20, eval_every=10, batch_size=8, device="cpu")
    protocol = Protocol(schedules=("constant",), lr_grid=2, lr_range=(1e-4, 1e-3), warmups=(),
                        tune_seeds=(0,), eval_seeds=(1,), start_lrs=(1e-4, 1e-3))  # fmt: skip
    prior = prepare(CompareConfig(run=run, protocol=protocol, policy=str(cloned_run / "policy")))
    shipped = prepare(CompareConfig(run=run, protocol=protocol, policy="default"))
    assert not prior.policy_reads_start_lr and shipped.policy_reads_start_lr
