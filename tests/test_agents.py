import dataclasses
import hashlib
import itertools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from conftest import make_policy

from lrpilot.agents import load_policy
from lrpilot.agents.controllers import (
    PlateauController,
    RandomController,
    ScheduleController,
    action_for_factor,
)
from lrpilot.agents.policy_file import POLICY_FILENAME, Policy
from lrpilot.agents.ppo import make_model
from lrpilot.agents.rollout import run_episode
from lrpilot.agents.train_config import load_train_config
from lrpilot.agents.training import resume, train
from lrpilot.cli import main
from lrpilot.env import EnvConfig, LRControlEnv
from lrpilot.env.actions import ActionRule, next_lr
from lrpilot.env.features import FEATURE_NAMES, NUM_FEATURES
from lrpilot.errors import ConfigError
from lrpilot.experiments.replay import policy_env_config
from lrpilot.settings import RunSettings

TASK = RunSettings("tiny", steps=40, eval_every=10, batch_size=8).task(5, 1e-3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny controller trained once for the whole module (a few hundred timesteps)."""
    out = tmp_path_factory.mktemp("train") / "run"
    config = load_train_config("tiny", timesteps=192)
    train(config, out, progress=False)
    return out


def test_training_writes_the_run_folder(trained_run):
    for name in ("config.toml", "progress.csv", "evaluations.csv", "training.json"):
        assert (trained_run / name).is_file(), name
    assert (trained_run / "policy" / POLICY_FILENAME).is_file()
    assert (trained_run / "best" / POLICY_FILENAME).is_file()
    latest = json.loads((trained_run / "checkpoints" / "latest.json").read_text())
    assert latest["timesteps"] == 192
    lines = (trained_run / "evaluations.csv").read_text().splitlines()
    assert lines[0].startswith("timesteps,mean_final_val_loss") and len(lines) >= 3
    # best/ is the first evaluation with the lowest mean (the tiny preset's rule).
    losses = [float(line.split(",")[1]) for line in lines[1:]]
    best = json.loads((trained_run / "best" / "best.json").read_text())
    assert best["timesteps"] == int(lines[1 + losses.index(min(losses))].split(",")[0])


def test_loaded_policy_drives_an_episode(trained_run):
    policy = load_policy(trained_run / "policy")
    assert policy.metadata["training"]["timesteps_done"] == 192
    env = LRControlEnv(EnvConfig())
    result = run_episode(env, policy, TASK)
    assert len(result.rows) == 5
    for row in result.rows[1:]:
        assert row["action"] in range(5)
        assert 1e-5 <= row["lr"] <= 1e-1
    assert np.isfinite(policy.normalize(env.features.initial())).all()


def test_policy_acts_like_the_sb3_model(trained_run):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    latest = json.loads((trained_run / "checkpoints" / "latest.json").read_text())
    model = PPO.load(trained_run / "checkpoints" / latest["model"], device="cpu")
    venv = VecNormalize.load(
        str(trained_run / "checkpoints" / latest["vecnormalize"]),
        DummyVecEnv([lambda: LRControlEnv(EnvConfig())]),
    )
    venv.training = False
    policy = load_policy(trained_run / "policy" / POLICY_FILENAME)
    rng = np.random.default_rng(0)
    for _ in range(50):
        observation = rng.normal(0, 1, size=NUM_FEATURES).astype(np.float32)
        expected, _ = model.predict(venv.normalize_obs(observation), deterministic=True)
        assert policy.act(observation) == int(expected)


def test_pickle_bearing_file_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "policy.safetensors"
    bad.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConfigError, match="not an lrpilot policy file"):
        load_policy(bad)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "torch.pt")
    with pytest.raises(ConfigError, match="not an lrpilot policy file"):
        load_policy(tmp_path / "torch.pt")
    assert not marker.exists()


def test_truncated_and_mismatched_files_are_refused(trained_run, tmp_path):
    data = (trained_run / "policy" / POLICY_FILENAME).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="corrupted, truncated"):
        load_policy(tmp_path / "cut.safetensors")
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "missing")
    policy = load_policy(trained_run / "policy")
    policy.metadata["feature_version"] = "v0"
    policy.save(tmp_path / "old")
    with pytest.raises(ConfigError, match="feature set 'v0'"):
        load_policy(tmp_path / "old")


def test_policy_file_keeps_its_action_rule(tmp_path):
    policy = make_policy(
        action_mode="continuous",
        factor_span=0.5,
        first_action_max_factor=100.0,
        cooldown_fraction=0.2,
        warmup_fraction=0.05,
    )
    loaded = load_policy(policy.save(tmp_path / "policy"))
    assert loaded.action == policy.action
    assert loaded.metadata["format_version"] == 4
    assert policy_env_config(loaded).action == policy.action  # replay and compare act alike
    half = np.array([0.5])
    assert loaded.next_lr(0.01, half, interval=0, interval_steps=10, total_steps=40) == (
        pytest.approx(0.1)  # the first action: x100**0.5 in full
    )
    assert loaded.next_lr(0.01, half, interval=1, interval_steps=10, total_steps=40) == (
        pytest.approx(0.01 * 2 ** (0.5 * 10 / 20))  # later ones: x2**0.5 per half budget
    )
    assert loaded.applied_lr(1e-3, 0, total_steps=100) == pytest.approx(1e-3 / 5)  # warmup
    assert loaded.applied_lr(1e-3, 50, total_steps=100) == 1e-3
    assert loaded.applied_lr(1e-3, 99, total_steps=100) < 1e-4  # cooldown


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 1}, "policy format version 1 is not supported"),
        ({"format_version": 2}, "policy format version 2 is not supported"),
        ({"format_version": 3}, "policy format version 3 is not supported"),
        ({"format_version": True}, "policy format version True is not supported"),
        ({"format_version": "4"}, "policy format version '4' is not supported"),
        ({"action": {"mode": "continuous"}}, "policy action table: missing continuous_max_factor"),
        ({"action": {"cooldown_fraction": 1.5}}, r"cooldown_fraction must be in \[0, 1\), got 1.5"),
        (
            {"action": {"warmup_fraction": 0.6, "cooldown_fraction": 0.6}},
            r"warmup_fraction \+ cooldown_fraction must be at most 1",
        ),
        ({"action": {"first_action_max_factor": 0.5}}, "first_action_max_factor must be 0"),
        (
            {"action": {"continuous_max_factor": 1.0}},
            "continuous_max_factor must be above 1, got 1.0",
        ),
        ({"action": {"speed": 2}}, "policy action table: missing nothing, unknown speed"),
        ({"action": {"probe_intervals": -1}}, "probe_intervals must not be negative, got -1"),
    ],
)
def test_a_policy_file_of_another_version_or_with_a_bad_action_is_refused(
    tmp_path, change, message
):
    policy = make_policy(action_mode="continuous")
    given = change.get("action", {})
    if "mode" in given:  # a whole table
        policy.metadata["action"] = given
    else:
        policy.metadata["action"] |= given
    policy.metadata |= {k: v for k, v in change.items() if k != "action"}
    path = policy.save(tmp_path / "p")  # written as it is, refused when read
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ("action", "probe_intervals", "policy action table: missing probe_intervals,"),
        ("observation", "history", "policy observation table: missing history,"),
        ("observation", "shape", "policy observation table: missing shape,"),
        ("network", "activation", "policy network table: missing activation,"),
        (None, "normalization", "policy metadata: missing normalization,"),
        (None, "training", "policy metadata: missing training,"),
    ],
)
def test_a_policy_file_missing_a_field_is_refused_naming_it(tmp_path, table, field, message):
    policy = make_policy(action_mode="continuous")
    del (policy.metadata[table] if table else policy.metadata)[field]
    path = policy.save(tmp_path / "p")  # written as it is, refused when read
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(repr(str(path)))


def test_the_shipped_policy_files_are_of_this_format():
    results = Path(__file__).parents[1].glob("experiments/results/*/policy")
    files = ["tiny", "prior_generalist", *results]
    assert len(files) >= 4
    for path in files:
        policy = load_policy(path)
        assert policy.metadata["format_version"] == 4
        assert all(torch.isfinite(tensor).all() for tensor in policy.weights.values())
    assert load_policy("tiny").action.probe_intervals == 0


def test_the_shipped_prior_generalist_is_the_candidate_measured_on_heldout():
    # experiments/studies/prior_generalist/heldout_h1/targets.md measured this file
    measured = Path(__file__).parents[1] / (
        "experiments/studies/prior_generalist/run_h1/evaluated/4000/policy.safetensors"
    )
    shipped, source = load_policy("prior_generalist"), load_policy(measured)
    assert hashlib.sha256(measured.read_bytes()).hexdigest().startswith("5a5b05ec1bf1")
    assert shipped.digest() == source.digest()  # the same weights and metadata ...
    # ... but the training record, whose workload paths are relative to the repository
    workloads = shipped.metadata["training"]["env"]["task_space"]["workloads"]
    assert not any(Path(w).is_absolute() for w in workloads)
    assert (shipped.feature_version, shipped.history) == ("v3", 1)


def test_a_policy_digest_covers_what_the_policy_does_not_how_it_was_trained():
    policy = make_policy()
    retrained = Policy(policy.weights, policy.metadata | {"training": {"seed": 99}})
    assert retrained.digest() == policy.digest()
    weights = dict(policy.weights) | {"output.bias": policy.weights["output.bias"] + 1e-6}
    assert Policy(weights, policy.metadata).digest() != policy.digest()
    other_rule = policy.metadata | {"action": policy.metadata["action"] | {"lr_max": 0.05}}
    assert Policy(policy.weights, other_rule).digest() != policy.digest()


def test_a_policy_file_with_tensors_no_layer_uses_is_refused():
    policy = make_policy()
    with pytest.raises(ConfigError, match=r"tensors no layer uses: \['extra.weight'\]"):
        Policy(policy.weights | {"extra.weight": torch.ones(1)}, policy.metadata)


def test_a_policy_with_another_action_setting_acts_the_same_and_cools_down_longer(tmp_path):
    policy = make_policy(cooldown_fraction=0.2, warmup_fraction=0.05)
    policy.metadata["training"] = {"env": {"reward": "log_improvement"}}
    variant = load_policy(policy.with_action(cooldown_fraction=0.3).save(tmp_path / "v"))
    assert (variant.action.cooldown_fraction, variant.action.warmup_fraction) == (0.3, 0.05)
    assert policy.action.cooldown_fraction == policy.metadata["action"]["cooldown_fraction"] == 0.2
    observation = np.linspace(-1, 1, policy.observation_size).astype(np.float32)
    assert np.array_equal(variant.act(observation), policy.act(observation))
    assert policy.applied_lr(1e-3, 75, total_steps=100) == 1e-3  # before its cooldown
    assert variant.applied_lr(1e-3, 75, total_steps=100) < 1e-3  # in the longer one
    assert variant.metadata["training"] == policy.metadata["training"]  # how it was trained
    with pytest.raises(ConfigError, match=r"cooldown_fraction must be in \[0, 1\), got 1.2"):
        policy.with_action(cooldown_fraction=1.2)


def test_a_continuous_range_sets_the_lr_in_the_env_as_in_the_file(tmp_path):
    policy = make_policy(action_mode="continuous").with_action(continuous_max_factor=4.0)
    wide = load_policy(policy.save(tmp_path / "wide"))
    # x4**-1 = x0.25 (no factor_span here)
    assert wide.next_lr(0.01, np.array([-1.0]), interval=1, interval_steps=10, total_steps=40) == (
        pytest.approx(0.0025)
    )
    # Replay and compare build the policy's env from the file: x4**a there too.
    env_config = policy_env_config(wide)
    rows = run_episode(LRControlEnv(env_config), wide, TASK).rows
    for previous, row in itertools.pairwise(rows):
        exponent = float(np.clip(np.asarray(row["action"]).reshape(-1)[0], -1, 1))
        expected = min(max(previous["lr"] * 4.0**exponent, wide.lr_min), wide.lr_max)
        assert row["lr"] == pytest.approx(expected)
    assert len({round(math.log(r["lr"] / p["lr"]), 6) for p, r in itertools.pairwise(rows)}) > 1


def test_continuous_training_uses_the_range_and_the_initial_std(tmp_path):
    config = load_train_config("tiny", timesteps=32, eval_every_timesteps=32)
    action = ActionRule(mode="continuous", continuous_max_factor=4.0, first_action_max_factor=10.0)
    env = dataclasses.replace(config.env, action=action)
    ppo = dataclasses.replace(config.ppo, log_std_init=-0.7)
    config = dataclasses.replace(config, env=env, ppo=ppo)
    model, venv = make_model(config)
    assert float(model.policy.log_std.detach()) == pytest.approx(-0.7)
    venv.close()
    policy = train(config, tmp_path / "run", progress=False)
    assert policy.action == action  # exported with the policy
    rule = dataclasses.replace(policy.action, factor_span=0.0)  # one factor in full
    assert next_lr(
        1e-3, np.array([1.0]), interval=1, interval_steps=1, total_steps=1, rule=rule
    ) == pytest.approx(4e-3)
    assert abs(float(policy.weights["log_std"]) + 0.7) < 0.1  # one PPO update away from it


def test_baseline_controllers_drive_the_env():
    rule = ActionRule(mode="continuous")
    env = LRControlEnv(EnvConfig(action=rule))
    cosine = ScheduleController("cosine", 40, rule=rule)
    lrs = [row["lr"] for row in run_episode(env, cosine, TASK).rows[1:]]
    # cosine at steps 0, 10, 20, then 30 (0.146) limited by the largest cut, x0.5 of 0.5
    expected = [1e-3 * f for f in (1.0, 0.8535534, 0.5, 0.25)]
    assert lrs == pytest.approx(expected, rel=1e-5)
    # With x4**a actions the same cosine is followed exactly.
    rule = ActionRule(mode="continuous", continuous_max_factor=4.0)
    env = LRControlEnv(EnvConfig(action=rule))
    cosine = ScheduleController("cosine", 40, rule=rule)
    lrs = [row["lr"] for row in run_episode(env, cosine, TASK).rows[1:]]
    expected = [1e-3 * f for f in (1.0, 0.8535534, 0.5, 0.1464466)]
    assert lrs == pytest.approx(expected, rel=1e-5)
    env = LRControlEnv(EnvConfig())
    random_rows = run_episode(env, RandomController(env.action_space, seed=1), TASK).rows
    assert all(0 <= row["action"] < 5 for row in random_rows[1:])
    plateau = PlateauController(patience=0)
    stalled = np.zeros(NUM_FEATURES, dtype=np.float32)
    stalled[FEATURE_NAMES.index("progress")] = 0.5  # mid-run, no improvement: cut the LR
    assert plateau.act(stalled) == 0
    improving = stalled.copy()
    improving[FEATURE_NAMES.index("log_val_rel_init")] = -0.05  # a new best
    assert plateau.act(improving) == 2


def test_train_cli_bad_input(tmp_path, capsys):
    cases = [
        (["train", "--preset", "nope", "--out", str(tmp_path / "a")], "unknown preset 'nope'"),
        (
            ["train", "--timesteps", "0", "--out", str(tmp_path / "b")],
            "timesteps must be positive, got 0",
        ),
        (["train", "--resume", "--out", str(tmp_path)], "not a training run folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_existing_run_is_not_overwritten(trained_run, capsys):
    before = (trained_run / "config.toml").read_text()
    assert main(["train", "--preset", "tiny", "--out", str(trained_run)]) == 2
    assert "use --resume" in capsys.readouterr().err
    assert (trained_run / "config.toml").read_text() == before


def test_resume_after_kill_9_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lrpilot.cli", "train", "--preset", "tiny"]
    process = subprocess.Popen(
        [*command, "--timesteps", "100000", "--quiet", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert process.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = json.loads(latest.read_text())["timesteps"]
    assert saved >= 64
    policy = resume(out, timesteps=saved + 64, progress=False)
    assert policy.metadata["training"]["timesteps_done"] == saved + 64
    assert (out / "progress.1.csv").exists()  # the killed session's log is kept
    # The killed session's time, to its last checkpoint, is counted in the run's cost.
    timing = json.loads((out / "training.json").read_text())
    assert timing["seconds"] > timing["seconds_this_session"] > 0
    with pytest.raises(ConfigError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.toml").write_text((out / "config.toml").read_text())
        resume(tmp_path / "empty", progress=False)


def test_checkpoints_wait_for_a_rollout_start(tmp_path, monkeypatch):
    """A checkpoint holds only timesteps PPO has learnt from, so resuming one ends the run
    at its `timesteps`; mid-rollout (48 of a 32-step rollout) that would not hold."""
    from lrpilot.agents.training import ControllerRun

    saved = []
    checkpoint = ControllerRun.checkpoint

    def recording_checkpoint(self, model):
        saved.append(int(model.num_timesteps))
        return checkpoint(self, model)

    monkeypatch.setattr(ControllerRun, "checkpoint", recording_checkpoint)
    config = load_train_config("tiny", timesteps=96, checkpoint_every_timesteps=48)  # rollout: 32
    train(config, tmp_path / "run", progress=False)
    assert saved == [64, 96]
    policy = resume(tmp_path / "run", timesteps=160, progress=False)
    assert saved == [64, 96, 160]  # next multiple of 48 after 96 is 144: rollout start 160
    assert policy.metadata["training"]["timesteps_done"] == 160


@pytest.mark.slow
def test_training_improves_on_the_untrained_policy(tmp_path):
    """Training measurably lowers the mean final validation loss on the eval tasks."""
    config = load_train_config("tiny", timesteps=3000)
    train(config, tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "evaluations.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in lines]
    assert min(losses[1:]) < losses[0] - 0.05


def test_loading_a_policy_needs_no_stable_baselines3(trained_run):
    code = (
        "import sys, numpy as np; from lrpilot.agents import load_policy; "
        f"p = load_policy({str(trained_run / 'policy')!r}); "
        f"p.act(np.zeros({NUM_FEATURES}, np.float32)); "
        "print('stable_baselines3' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_two_environment_processes_train(tmp_path):
    config = load_train_config("tiny", timesteps=64, n_envs=2, eval_every_timesteps=64)
    policy = train(config, tmp_path / "run", progress=False)
    assert policy.metadata["training"]["timesteps_done"] == 64
    assert policy.metadata["training"]["n_envs"] == 2


def test_bad_preset_values_are_one_line_errors(tmp_path, capsys):
    import tomli_w

    from lrpilot.config import read_toml

    cases = [
        ({"seed": -1}, "seed must be in [0, 2**32), got -1"),
        ({"ppo": {"net_arch": ["a"]}}, "[ppo] net_arch must be a list of integers, got ['a']"),
        ({"eval": {"run": {"steps": 0}}}, "[eval.run] steps must be positive, got 0"),
        ({"eval": {"select": "median"}}, "[eval] select must be one of mean, worst_start_lr"),
        ({"ppo": {"anneal_lr": "yes"}}, "[ppo] anneal_lr must be true or false, got 'yes'"),
        ({"ppo": {"log_std_init": 9}}, "[ppo] log_std_init must be in [-5, 2], got 9.0"),
        ({"ppo": {"log_std_init": True}}, "[ppo] log_std_init must be a number, got True"),
        (
            {"env": {"action": {"continuous_max_factor": 1}}},
            "[env.action] continuous_max_factor must be above 1, got 1.0",
        ),
        ({"env": {"task_space": {"eval_every": "20"}}}, "[env.task_space] eval_every must be"),
        ({"weight": 1}, "unknown key(s): weight"),
    ]
    for i, (change, message) in enumerate(cases):
        data, _ = read_toml("tiny", "preset", "presets")
        for key, value in change.items():
            if isinstance(value, dict) and key in data:
                for sub_key, sub_value in value.items():
                    if isinstance(sub_value, dict):
                        data[key][sub_key].update(sub_value)
                    else:
                        data[key][sub_key] = sub_value
            else:
                data[key] = value
        preset = tmp_path / f"bad{i}.toml"
        preset.write_text(tomli_w.dumps(data))
        assert main(["train", "--preset", str(preset), "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


class KeepLR:
    """Always asks for factor 1.0."""

    def act(self, observation):
        return action_for_factor(ActionRule(), 1.0)


def test_evaluation_reports_each_start_lr_and_the_worst():
    from lrpilot.agents.evaluation import evaluate_controller

    tasks = [dataclasses.replace(TASK, seed=s, start_lr=lr) for s in (5, 6) for lr in (1e-3, 3e-2)]
    env = LRControlEnv(EnvConfig())
    result = evaluate_controller(KeepLR(), tasks, env)
    assert result["diverged"] == 0  # so each run's final loss is its score
    finals = {t: run_episode(env, KeepLR(), t).final_val_loss for t in tasks}
    low = np.mean([v for t, v in finals.items() if t.start_lr == 1e-3])
    high = np.mean([v for t, v in finals.items() if t.start_lr == 3e-2])
    assert result["final_val_loss_start_0.001"] == pytest.approx(low)
    assert result["final_val_loss_start_0.03"] == pytest.approx(high)
    assert result["worst_start_lr_final_val_loss"] == pytest.approx(max(low, high))
    assert result["mean_final_val_loss"] == pytest.approx(np.mean(list(finals.values())))


def test_best_checkpoint_rule():
    from lrpilot.agents.evaluation import is_new_best

    earlier = [
        {"mean_final_val_loss": 2.0, "worst_start_lr_final_val_loss": 2.4},
        {"mean_final_val_loss": 2.2, "worst_start_lr_final_val_loss": 2.3},
    ]
    result = {"mean_final_val_loss": 2.1, "worst_start_lr_final_val_loss": 2.2}
    assert not is_new_best(result, earlier, "mean")
    assert is_new_best(result, earlier, "worst_start_lr")
    tie = result | {"worst_start_lr_final_val_loss": 2.3}
    assert not is_new_best(tie, earlier, "worst_start_lr")  # a tie keeps the earlier one
    # Evaluations from before the column existed (NaN when read back) do not compete.
    older = [{"mean_final_val_loss": 1.0, "worst_start_lr_final_val_loss": math.nan}]
    assert is_new_best(result, older, "worst_start_lr")
    assert is_new_best(result, [], "mean")


def test_annealed_ppo_learning_rate_falls_to_zero_across_a_resume(tmp_path):
    import pandas as pd

    out = tmp_path / "run"
    config = load_train_config("tiny", timesteps=128, eval_every_timesteps=128)
    config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, anneal_lr=True))
    train(config, out, progress=False)
    resume(out, timesteps=192, progress=False)  # restores the schedule from the checkpoint

    def logged(name: str) -> list[float]:
        return sorted(pd.read_csv(out / name)["train/learning_rate"].dropna())

    # One PPO update per rollout of 32 timesteps, at lr x (1 - timesteps done / total).
    lr = config.ppo.learning_rate
    assert logged("progress.1.csv") == pytest.approx(
        sorted(lr * (1 - t / 128) for t in (32, 64, 96, 128))
    )
    assert logged("progress.csv") == pytest.approx(sorted(lr * (1 - t / 192) for t in (160, 192)))


def test_episode_helpers_work_on_an_env_made_by_gymnasium_make():
    from lrpilot.agents.evaluation import evaluate_controller

    made = gymnasium.make("lrpilot/LRControl-v0")
    plain = LRControlEnv(EnvConfig())
    wrapped_rows = run_episode(made, KeepLR(), TASK).rows
    plain_rows = run_episode(plain, KeepLR(), TASK).rows
    assert len(wrapped_rows) == TASK.num_intervals + 1
    for wrapped, row in zip(wrapped_rows, plain_rows, strict=True):
        assert {k: v for k, v in wrapped.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in row.items() if k != "seconds"}, nan_ok=True
        )
    assert evaluate_controller(KeepLR(), [TASK], made) == evaluate_controller(
        KeepLR(), [TASK], plain
    )


def test_a_policy_with_a_history_trains_saves_and_replays(tmp_path):
    config = load_train_config("tiny", timesteps=64)
    config = dataclasses.replace(config, env=dataclasses.replace(config.env, history=2))
    train(config, tmp_path / "run", progress=False)
    policy = load_policy(tmp_path / "run" / "policy")
    assert policy.history == 2
    assert policy.metadata["observation"]["shape"] == [2 * NUM_FEATURES]
    env = LRControlEnv(policy_env_config(policy))
    assert env.observation_space.shape == (2 * NUM_FEATURES,)
    result = run_episode(env, policy, TASK)
    assert len(result.rows) == 5
    loaded = load_policy(policy.save(tmp_path / "copy"))
    observation = np.random.default_rng(0).normal(size=2 * NUM_FEATURES)
    assert loaded.act(observation) == policy.act(observation)
    assert policy.feature_version == "v3" and NUM_FEATURES == 23  # new training's set
    with pytest.raises(ConfigError, match="this policy takes 46 values"):
        policy.act(observation[:NUM_FEATURES])
    metadata = dict(policy.metadata, observation=dict(policy.metadata["observation"], shape=[13]))
    with pytest.raises(ConfigError, match="observation shape"):
        Policy(policy.weights, metadata)


def test_a_workload_flag_trains_that_workload_as_it_is():
    """`--workload` replaces a preset's workloads and drops the settings it varies, so
    the runs are that workload's own (the generalist preset varies width and batch)."""
    config = load_train_config("generalist", workload="small")
    assert config.env.task_space.workloads == ("small",)
    assert config.env.task_space.vary == {} and config.env.task_space.corpora is None
    assert config.env.task_space.lr_scale == (0.3, 10.0)  # the hidden scale stays
