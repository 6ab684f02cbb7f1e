import dataclasses
import math
import re
import warnings

import gymnasium
import numpy as np
import pytest
import torch

import lrpilot  # noqa: F401  (registers the environment)
from lrpilot.env import ActionRule, EnvConfig, LRControlEnv, TaskSpace
from lrpilot.env.actions import applied_lr
from lrpilot.env.features import FEATURE_GROUPS, FEATURE_NAMES, NUM_FEATURES
from lrpilot.env.rewards import REWARD_NAMES, divergence_reward, instant_reward
from lrpilot.errors import ConfigError
from lrpilot.lm.run_context import RunContext
from lrpilot.lm.schedules import schedule_curve
from lrpilot.settings import RunSettings

SPACE = TaskSpace(steps=(12,), eval_every=4, batch_size=8, start_lr=(1e-3, 1e-2))


ACTION_FIELDS = {f.name for f in dataclasses.fields(ActionRule)}


def make_env(**overrides) -> LRControlEnv:
    """An env on SPACE; overrides named like `ActionRule` fields go to its action rule."""
    action = {k: overrides.pop(k) for k in list(overrides) if k in ACTION_FIELDS}
    return LRControlEnv(EnvConfig(task_space=SPACE, action=ActionRule(**action)), **overrides)


def rollout(env, seed, actions):
    observation, _ = env.reset(seed=seed)
    observations, rewards = [observation], []
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        observations.append(observation)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.stack(observations), rewards, info


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_gymnasium_and_sb3_env_checkers_pass(mode):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check(make_env(mode=mode), skip_render_check=False)
        sb3_check(make_env(mode=mode), warn=False)


def test_registered_and_made_by_id():
    env = gymnasium.make(
        "lrpilot/LRControl-v0", task_space=SPACE, action=ActionRule(mode="continuous")
    )
    assert env.action_space.shape == (1,)
    observation, info = env.reset(seed=0)
    assert observation.shape == (NUM_FEATURES,) and info["step"] == 0


def test_same_seed_same_actions_same_everything():
    actions = [0, 4, 2]
    a = rollout(make_env(), 3, actions)
    b = rollout(make_env(), 3, actions)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    c = rollout(make_env(), 4, actions)
    assert c[2]["task"] != a[2]["task"]


def test_return_telescopes_to_log_initial_over_final_loss():
    observations, rewards, info = rollout(make_env(), 0, [2, 3, 1])
    assert len(rewards) == 3 and not info["diverged"]
    expected = math.log(info["initial_val_loss"] / info["val_loss"])
    assert sum(rewards) == pytest.approx(expected, abs=1e-6)
    assert observations[-1][FEATURE_NAMES.index("progress")] == pytest.approx(1.0)


def test_reset_observation_holds_the_start_lr_and_masked_features_read_zero():
    env = make_env(masked_features=("log_val_rel_init", "log_grad_norm"))
    observations, _, info = rollout(env, 0, [4, 0, 2])
    start_lr = info["task"].start_lr
    log_lr = FEATURE_NAMES.index("log_lr")
    assert observations[0][log_lr] == pytest.approx(math.log(start_lr / 1e-3), rel=1e-6)
    context = [FEATURE_NAMES.index(name) for name in FEATURE_GROUPS["context"]]
    assert np.count_nonzero(np.delete(observations[0], context)) == 1  # nothing trained yet
    assert np.all(observations[:, context] == observations[0, context])  # the run's sizes
    assert np.all(observations[0, context] != 0)
    for name in ("log_val_rel_init", "log_grad_norm"):
        assert not observations[:, FEATURE_NAMES.index(name)].any(), name
    unmasked = rollout(make_env(), 0, [4, 0, 2])[0]
    assert unmasked[1:, FEATURE_NAMES.index("log_grad_norm")].all()


def test_factor_span_draws_the_same_lr_curve_against_progress_for_any_budget():
    lr_at_progress = {}
    for total_steps, eval_every in ((12, 4), (24, 4), (24, 6)):
        space = TaskSpace(steps=(total_steps,), eval_every=eval_every, batch_size=8)
        task = space.sample(np.random.default_rng(0))
        env = LRControlEnv(EnvConfig(task_space=space, action=ActionRule(factor_span=0.25)))
        env.reset(seed=0, options={"task": task})
        curve = {}
        while env.interval < task.num_intervals:
            _, _, _, _, info = env.step(4)  # x2 per quarter of the budget
            curve[round(info["step"] / total_steps, 6)] = info["lr"] / task.start_lr
        lr_at_progress[(total_steps, eval_every)] = curve
        assert curve[1.0] == pytest.approx(2.0**4)
    reference = lr_at_progress[(12, 4)]
    for curve in lr_at_progress.values():
        for progress, ratio in curve.items():
            if progress in reference:
                # the LR of the interval ending at this progress, set at its start
                assert ratio == pytest.approx(reference[progress]), progress


def test_cooldown_cools_each_step_below_the_controller_lr_down_to_the_end():
    task = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)
    env = make_env(cooldown_fraction=0.5)  # cooldown over steps 6..11 of 12
    env.reset(seed=0, options={"task": task})
    log_lr = FEATURE_NAMES.index("log_lr")
    lrs = []
    for _ in range(3):
        observation, _, _, _, info = env.step(2)  # x1: the controller keeps 1e-3
        lrs.append((env.last_stats.lr, env.last_stats.lr_mean))
        # The observation shows the controller's LR, not the cooled one.
        assert info["lr"] == pytest.approx(1e-3)
        assert observation[log_lr] == pytest.approx(0.0, abs=1e-6)

    def cooled(step: int) -> float:
        return 1e-3 * (1 - math.sqrt(max(step - 6, 0) / 6))

    assert lrs[0] == pytest.approx((1e-3, 1e-3))  # steps 0-3: before the cooldown
    assert lrs[1] == pytest.approx((cooled(7), np.mean([cooled(s) for s in range(4, 8)])))
    assert lrs[2] == pytest.approx((cooled(11), np.mean([cooled(s) for s in range(8, 12)])))
    assert lrs[2][0] < 0.1 * 1e-3  # the last step trains at under a tenth of the LR


def test_warmup_ramps_each_step_up_to_the_controller_lr_over_the_first_steps():
    task = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)
    env = make_env(warmup_fraction=0.5, cooldown_fraction=0.25)  # steps 0..5, then 9..11
    env.reset(seed=0, options={"task": task})
    lrs = []
    for _ in range(3):
        _, _, _, _, info = env.step(2)  # x1: the controller keeps 1e-3
        lrs.append((env.last_stats.lr, env.last_stats.lr_mean))
        assert info["lr"] == pytest.approx(1e-3)  # the controller's LR, not the warmed one

    def applied(step: int) -> float:  # 1e-3 warmed up over 6 steps, cooled over the last 3
        return 1e-3 * min(1.0, (step + 1) / 6) * (1 - math.sqrt(max(step - 9, 0) / 3))

    assert lrs[0] == pytest.approx((applied(3), np.mean([applied(s) for s in range(4)])))
    assert lrs[0][0] == pytest.approx(1e-3 * 4 / 6)
    assert lrs[1] == pytest.approx((1e-3, np.mean([applied(s) for s in range(4, 8)])))
    assert lrs[2] == pytest.approx((applied(11), np.mean([applied(s) for s in range(8, 12)])))


def test_the_first_action_corrects_the_start_lr_in_full_and_later_ones_per_span():
    task = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)
    half = np.array([0.5], dtype=np.float32)
    for first_factor, expected_first in ((100.0, 1e-3 * 10), (0.0, 1e-3 * 2 ** (0.5 * 4 / 6))):
        env = make_env(mode="continuous", factor_span=0.5, first_action_max_factor=first_factor)
        env.reset(seed=0, options={"task": task})
        # a = 0.5: x100**0.5 = x10 in full, or without the setting x2**0.5 per half budget
        first_lr = env.step(half)[4]["lr"]
        assert first_lr == pytest.approx(expected_first)
        assert env.step(half)[4]["lr"] == pytest.approx(first_lr * 2 ** (0.5 * 4 / 6))


def test_a_probe_keeps_the_start_lr_and_the_wide_first_action_comes_after_it():
    task = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)
    env = make_env(
        mode="continuous", factor_span=0.5, first_action_max_factor=100.0, probe_intervals=1
    )
    env.reset(seed=0, options={"task": task})
    probe = env.step(np.array([1.0], dtype=np.float32))[4]  # ignored: the probe interval
    assert probe["lr"] == 1e-3
    assert env.last_stats.lr == 1e-3  # the probe trained at the start LR
    half = np.array([0.5], dtype=np.float32)
    first_lr = env.step(half)[4]["lr"]
    assert first_lr == pytest.approx(1e-2)  # the first action after the probe: x100**0.5
    assert env.step(half)[4]["lr"] == pytest.approx(first_lr * 2 ** (0.5 * 4 / 6))


def test_the_controllers_warmup_and_cooldown_are_wsds():
    wsd = schedule_curve("wsd", 1.0, 400, warmup=0.05, decay=0.2)
    steps = range(400)
    controlled = [
        applied_lr(
            1.0, s, total_steps=400, rule=ActionRule(cooldown_fraction=0.2, warmup_fraction=0.05)
        )
        for s in steps
    ]
    assert controlled == pytest.approx(wsd, rel=1e-12)


def test_actions_change_the_lr_multiplicatively_and_are_clipped():
    env = make_env(lr_min=1e-4, lr_max=2e-3)
    env.reset(
        seed=0,
        options={"task": RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)},
    )
    assert env.step(4)[4]["lr"] == pytest.approx(2e-3)  # x2
    assert env.step(4)[4]["lr"] == pytest.approx(2e-3)  # clipped at lr_max
    assert env.step(0)[4]["lr"] == pytest.approx(1e-3)  # x0.5
    continuous = make_env(mode="continuous")
    continuous.reset(
        seed=0,
        options={"task": RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)},
    )
    assert continuous.step(np.array([-1.0]))[4]["lr"] == pytest.approx(5e-4)
    wide = make_env(mode="continuous", continuous_max_factor=4.0)
    wide.reset(
        seed=0,
        options={"task": RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(0, 1e-3)},
    )
    assert wide.step(np.array([-1.0]))[4]["lr"] == pytest.approx(2.5e-4)  # x4**-1
    assert wide.step(np.array([0.5]))[4]["lr"] == pytest.approx(5e-4)  # x4**0.5


@pytest.mark.parametrize(
    "bad, problem",
    [
        (1.0, "must be above 1"),
        (0.5, "must be above 1"),
        (math.inf, "must be a finite number"),
        ("4", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_continuous_max_factor_must_be_a_number_above_one(bad, problem):
    with pytest.raises(ConfigError) as error:
        ActionRule(continuous_max_factor=bad)
    assert str(error.value) == f"continuous_max_factor {problem}, got {bad!r}"


def test_a_task_space_draws_workloads_and_corpora_and_a_task_can_be_pinned():
    space = TaskSpace(workloads=("tiny", "small"), corpora=("pydoc", "pystdlib"), batch_size=8)
    rng = np.random.default_rng(0)
    drawn = [space.sample(rng).workload for _ in range(40)]
    assert {(w.name, w.corpus) for w in drawn} == {
        (name, corpus) for name in ("tiny", "small") for corpus in ("pydoc", "pystdlib")
    }
    assert {w.batch_size for w in drawn} == {8}
    task = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(11, 3e-3)
    env = LRControlEnv(EnvConfig(task_space=space))
    for seed in (0, 1):
        assert env.reset(seed=seed, options={"task": task})[1]["task"] == task


def test_every_reward_prefers_lower_loss():
    for name in REWARD_NAMES:
        for last in (False, True):
            better = instant_reward(name, previous_loss=3.0, loss=2.0, initial_loss=5.0, last=last)
            worse = instant_reward(name, previous_loss=3.0, loss=2.5, initial_loss=5.0, last=last)
            assert better >= worse
            if name != "final" or last:
                assert better > worse, (name, last)


def test_divergence_ends_the_episode_below_any_finished_return():
    env = make_env(divergence_factor=2.0, divergence_penalty=0.5)
    env.reset(seed=0)
    first_reward = env.step(2)[1]
    with torch.no_grad():
        env.run.model.ln_f.weight.fill_(float("nan"))
    observation, reward, terminated, truncated, info = env.step(2)
    assert terminated and not truncated and info["diverged"]
    assert np.isfinite(observation).all()
    assert first_reward + reward == pytest.approx(-math.log(2.0) - 0.5)
    with pytest.raises(RuntimeError, match="ended"):
        env.step(2)
    # A dense reward is charged the cap for every interval it no longer has to run.
    capped = divergence_reward(
        "neg_val_loss",
        previous_loss=3.0,
        initial_loss=5.0,
        divergence_factor=2.0,
        divergence_penalty=0.0,
        remaining_intervals=3,
    )
    assert capped == pytest.approx(-30.0)


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_fuzz_random_and_extreme_actions_stay_finite(mode):
    env = make_env(mode=mode, lr_min=1e-6, lr_max=10.0)
    highest = 4 if mode == "discrete" else np.array([1.0], dtype=np.float32)
    lowest = 0 if mode == "discrete" else np.array([-1.0], dtype=np.float32)
    env.action_space.seed(0)
    policies = {
        "random": lambda: env.action_space.sample(),
        "max": lambda: highest,
        "min": lambda: lowest,
    }
    for seed, (name, policy) in enumerate(policies.items()):
        observation, _ = env.reset(seed=seed)
        terminated = False
        while not terminated:
            assert np.isfinite(observation).all(), name
            assert env.observation_space.contains(observation), name
            observation, reward, terminated, _, _ = env.step(policy())
            assert math.isfinite(reward), name
        assert np.isfinite(observation).all(), name
    if mode == "continuous":
        env.reset(seed=0)
        assert np.isfinite(env.step(np.array([np.nan], dtype=np.float32))[0]).all()


def test_render_ansi_is_one_line_per_interval():
    env = make_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(2)
    line = env.render()
    assert "\n" not in line and "lr" in line and "val" in line and "reward" in line


def test_a_task_space_with_several_interval_lengths_draws_each_after_the_other_values():
    """A tuple of `eval_every` draws one more value, last: the first task of a space is
    the same as with one length, and every length turns up."""
    one = TaskSpace(steps=(40, 80), eval_every=10)
    several = TaskSpace(steps=(40, 80), eval_every=[5, 10])
    assert several.eval_every == (5, 10) and several.eval_every_choices == (5, 10)
    first_one = one.sample(np.random.default_rng(3))
    first_several = several.sample(np.random.default_rng(3))
    assert dataclasses.replace(first_several, eval_every=10) == first_one
    rng = np.random.default_rng(0)
    drawn = {several.sample(rng).eval_every for _ in range(40)}
    assert drawn == {5, 10}


def test_a_task_space_with_a_number_of_intervals_evaluates_every_budget_as_often():
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    per_budget = TaskSpace(steps=(200, 3000), num_intervals=20)
    fixed = TaskSpace(steps=(200, 3000), eval_every=10)
    for _ in range(6):  # the same draws, only the interval length differs
        task, plain = per_budget.sample(rng_a), fixed.sample(rng_b)
        assert task.eval_every == task.steps // 20 and task.num_intervals == 20
        assert dataclasses.replace(task, eval_every=10) == plain
    for settings, message in [
        ({"num_intervals": 20, "eval_every": 10}, "eval_every (10) and num_intervals (20): give"),
        ({"num_intervals": 300, "steps": (200, 400)}, "num_intervals (300) is more than the"),
        ({"num_intervals": 0}, "num_intervals must be positive, got 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TaskSpace(**settings)


def test_a_task_space_with_a_max_cost_draws_again_above_it():
    wide = {"steps": (200, 3000), "vary": {"n_embd": (32, 512), "batch_size": (8, 128)}}
    unbounded, bounded = TaskSpace(**wide), TaskSpace(**wide, max_cost=5e11)

    def cost(task) -> float:
        return task.workload.num_params() * task.workload.batch_size * 16 * task.steps

    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    drawn = [unbounded.sample(rng_a) for _ in range(30)]
    kept = [bounded.sample(rng_b) for _ in range(30)]
    assert max(map(cost, drawn)) > 5e11 >= max(map(cost, kept))  # tiny's block size: 16
    assert {t.workload.n_embd for t in kept} == {32, 512}  # the large width, when cheap
    # a bound above every task draws the same tasks as none
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    loose = TaskSpace(**wide, max_cost=1e15)
    assert [unbounded.sample(rng_a) for _ in range(5)] == [loose.sample(rng_b) for _ in range(5)]
    with pytest.raises(ConfigError, match=r"max_cost \(1e\+06\) is below the cheapest task"):
        TaskSpace(**wide, max_cost=1e6)
    classify = TaskSpace(workloads=("classify",), max_cost=1e15).sample(np.random.default_rng(0))
    assert classify.workload.step_cost() > 0  # the classifier's cost: its passages' bytes
    with pytest.raises(ConfigError, match="max_cost needs each workload's cost per step"):
        TaskSpace(workloads=("examples/custom_workload.py:make_run",), max_cost=1e12)


def test_a_task_space_gives_its_corpora_only_to_workloads_that_have_one():
    """The classifier has no corpus: a space of both families keeps its data and gives
    the byte GPT a drawn corpus."""
    space = TaskSpace(workloads=("tiny", "classify"), corpora=("pystdlib:json", "pystdlib:xml"))
    rng = np.random.default_rng(0)
    tasks = [space.sample(rng) for _ in range(12)]
    gpt = [t.workload for t in tasks if t.workload.family == "byte_gpt"]
    classifier = [t.workload for t in tasks if t.workload.family == "text_classification"]
    assert gpt and classifier
    assert {w.corpus for w in gpt} == {"pystdlib:json", "pystdlib:xml"}
    assert all(not hasattr(w, "corpus") for w in classifier)


def test_a_wide_task_space_varies_workload_settings_and_hides_an_lr_scale():
    """`vary` and `lr_scale` draw after every other value: the first task of a space
    without them is the same; every value of `vary` turns up, and the scale stays in
    its range."""
    plain = TaskSpace(steps=(40, 80), eval_every=10)
    wide = TaskSpace(
        steps=(40, 80),
        eval_every=10,
        vary={"n_layer": [1, 2], "n_embd": (32, 64)},
        lr_scale=(0.1, 10.0),
    )
    assert list(wide.vary) == ["n_embd", "n_layer"]  # drawn in the names' order
    same = TaskSpace(
        steps=[40, 80],
        eval_every=10,
        vary={"n_embd": [32, 64], "n_layer": [1, 2]},
        lr_scale=[0.1, 10.0],
    )
    assert same == wide and hash(same) == hash(wide) != hash(plain)  # frozen and hashable
    first_plain, first_wide = (space.sample(np.random.default_rng(3)) for space in (plain, wide))
    assert dataclasses.replace(first_wide, workload=first_plain.workload, lr_scale=1.0) == (
        first_plain
    )
    assert first_plain.lr_scale == 1.0
    rng = np.random.default_rng(0)
    tasks = [wide.sample(rng) for _ in range(40)]
    settings = {(t.workload.n_embd, t.workload.n_layer) for t in tasks}
    assert settings == {(32, 1), (32, 2), (64, 1), (64, 2)}
    scales = [t.lr_scale for t in tasks]
    assert all(0.1 <= scale <= 10.0 for scale in scales) and min(scales) < 0.5 < 2 < max(scales)


def test_a_hidden_lr_scale_trains_the_run_at_the_scaled_lr_and_shows_the_policy_its_own():
    """A task at start LR 1e-3 and scale 4 trains exactly as one at 4e-3 and scale 1;
    its observations differ only in the LR features, which show the policy's LR."""
    scaled = RunSettings("tiny", steps=12, eval_every=4, batch_size=8).task(5, 1e-3)
    scaled = dataclasses.replace(scaled, lr_scale=4.0)
    plain = dataclasses.replace(scaled, start_lr=4e-3, lr_scale=1.0)
    results = []
    for task in (scaled, plain):
        env = make_env(mode="continuous")
        observations = [env.reset(seed=0, options={"task": task})[0]]
        rows = []
        for action in ([0.5], [-0.3], [0.2]):
            observation, _, _, _, info = env.step(np.array(action, dtype=np.float32))
            observations.append(observation)
            rows.append((env.last_stats.lr, env.last_stats.val_loss, info["lr"]))
        results.append((np.stack(observations), rows))
    (scaled_obs, scaled_rows), (plain_obs, plain_rows) = results
    for (run_lr, val, policy_lr), (plain_run_lr, plain_val, plain_policy_lr) in zip(
        scaled_rows, plain_rows, strict=True
    ):
        assert run_lr == pytest.approx(plain_run_lr, rel=1e-12) and val == plain_val
        assert policy_lr == pytest.approx(run_lr / 4.0, rel=1e-12)
        assert plain_policy_lr == pytest.approx(plain_run_lr, rel=1e-12)
    lr_features = [FEATURE_NAMES.index("log_lr")]
    other = [i for i in range(NUM_FEATURES) if i not in lr_features]
    np.testing.assert_array_equal(scaled_obs[:, other], plain_obs[:, other])
    np.testing.assert_allclose(
        plain_obs[:, lr_features] - scaled_obs[:, lr_features], math.log(4.0), rtol=1e-5
    )


def test_a_history_stacks_the_last_observations_newest_first():
    env = make_env(history=3)
    assert env.observation_space.shape == (3 * NUM_FEATURES,)
    observations, _, _ = rollout(env, 0, [2, 0, 1])
    n = NUM_FEATURES
    single, _, _ = rollout(make_env(), 0, [2, 0, 1])
    np.testing.assert_array_equal(observations[:, :n], single)  # the newest: as without
    assert not observations[0, n:].any()  # nothing before the start
    for t in range(1, len(observations)):
        np.testing.assert_array_equal(observations[t, n : 2 * n], single[t - 1])
        if t >= 2:
            np.testing.assert_array_equal(observations[t, 2 * n :], single[t - 2])
        else:
            assert not observations[t, 2 * n :].any()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TaskSpace(vary={"n_embd": []}), "vary.n_embd must not be empty"),
        (lambda: TaskSpace(vary={"n_embd": [64, 30]}), "n_embd"),
        (lambda: TaskSpace(vary={"depth": [1]}), "has no setting depth"),
        (
            lambda: TaskSpace(lr_scale=(2.0, 1.0)),
            "lr_scale must be a range LOW,HIGH with 0 < LOW <= HIGH, got 2.0,1.0",
        ),
        (lambda: TaskSpace(vary={"steps": [100]}), "vary.steps: the space's own steps sets it"),
        (
            lambda: TaskSpace(batch_size=8, vary={"batch_size": [16]}),
            "vary.batch_size and batch_size: give one",
        ),
        (lambda: EnvConfig(history=0), "history must be a whole number of evaluations >= 1"),
        (lambda: TaskSpace(steps=(10,), eval_every=20), "eval_every (20)"),
        (lambda: TaskSpace(steps=(10,), eval_every=[5, 20]), "eval_every (20)"),
        (lambda: TaskSpace(eval_every=[]), "eval_every must not be empty"),
        (lambda: TaskSpace(eval_every=[10, 0]), "eval_every has 0, which must be positive"),
        (lambda: TaskSpace(corpora=()), "corpora must not be empty"),
        (lambda: TaskSpace(workloads=()), "workloads must not be empty"),
        (lambda: TaskSpace(workloads=("huge",)), "unknown workload 'huge'"),
        (
            lambda: TaskSpace(workloads=("classify",), corpora=("pydoc",)),
            "corpora ['pydoc']: none of the workloads ['classify'] has a corpus",
        ),
        (lambda: RunSettings("tiny", steps=10, eval_every=20).task(0, 1e-3), "eval_every (20)"),
        (lambda: RunSettings("tiny").task(0, 0.0), "start_lr must be positive, got 0.0"),
        (lambda: TaskSpace(start_lr=(1e-2, 1e-3)), "start_lr"),
        (lambda: ActionRule(lr_min=1e-2, lr_max=1e-3), "lr_min=0.01"),
        (
            lambda: EnvConfig(reward="accuracy"),
            "reward must be one of log_improvement, neg_val_loss, final, got 'accuracy'",
        ),
        (
            lambda: ActionRule(mode="binary"),
            "mode must be one of discrete, continuous, got 'binary'",
        ),
        (lambda: ActionRule(factors=(1.0, -2.0)), "factors has -2.0, which must be positive"),
        (lambda: EnvConfig(action="continuous"), "action must be a table, got 'continuous'"),
        (lambda: LRControlEnv(gamma=0.9), "unknown environment setting"),
        (lambda: ActionRule(factor_span=2.0), "factor_span must be in [0, 1], got 2.0"),
        (lambda: ActionRule(cooldown_fraction=1.0), "cooldown_fraction must be in [0, 1), got"),
        (lambda: ActionRule(warmup_fraction=-0.1), "warmup_fraction must be in [0, 1), got -0.1"),
        (lambda: ActionRule(warmup_fraction=True), "warmup_fraction must be a number, got True"),
        (
            lambda: ActionRule(warmup_fraction=0.5, cooldown_fraction=0.6),
            "warmup_fraction + cooldown_fraction must be at most 1, got 0.5 + 0.6",
        ),
        (lambda: EnvConfig(masked_features=("lr",)), "unknown feature(s) to mask: 'lr'"),
        (lambda: ActionRule(probe_intervals=-1), "probe_intervals must not be negative, got -1"),
        (lambda: ActionRule(probe_intervals=1.5), "probe_intervals must be an integer, got 1.5"),
        (
            lambda: ActionRule(first_action_max_factor=10.0),
            "first_action_max_factor needs continuous actions, got action mode 'discrete'",
        ),
        (
            lambda: ActionRule(mode="continuous", first_action_max_factor=1.0),
            "first_action_max_factor must be 0 (off) or a number > 1, got 1.0",
        ),
        (
            lambda: ActionRule(mode="continuous", first_action_max_factor=True),
            "first_action_max_factor must be a number, got True",
        ),
    ],
)
def test_bad_configuration_raises_value_error_naming_field_and_value(make, message):
    with pytest.raises(ValueError, match=None) as error:
        make()
    assert isinstance(error.value, ConfigError)
    assert message in str(error.value)


def test_the_log_rewards_are_defined_for_a_loss_of_zero():
    def reward(previous, loss, name="log_improvement"):
        return instant_reward(name, previous_loss=previous, loss=loss, initial_loss=2.0, last=True)

    assert reward(2.0, 1.0) == math.log(2.0) - math.log(1.0)  # positive losses: the plain rule
    assert reward(2.0, 0.0) == 10.0  # a drop to 0: the features' clip
    assert reward(0.0, 0.0) == 0.0 and reward(0.0, 1.0) == -10.0
    assert reward(-1.0, 0.5) == 0.0  # a negative loss has no log
    assert reward(1.0, 0.0, "final") == 10.0  # from L_0 = 2 to 0


def test_the_online_range_test_starts_low_rises_bounded_and_moves_down_freely():
    rule = ActionRule(mode="continuous", continuous_max_factor=4.0, range_start=0.1)
    env = LRControlEnv(EnvConfig(action=rule))
    env.reset(
        options={"task": RunSettings("tiny", steps=60, eval_every=10, batch_size=8).task(0, 1e-3)}
    )
    actions = (1.0, 1.0, 1.0, 0.5, 0.0, -1.0)  # the first is not read: the test starts low
    lrs = [env.step(np.array([a]))[4]["lr"] for a in actions]
    expected = [
        1e-4,
        2.5e-4,
        6.25e-4,
        6.25e-4 * 2.5**0.5,
        6.25e-4 * 2.5**0.5,
        6.25e-4 * 2.5**0.5 / 4,
    ]
    assert lrs == pytest.approx(expected)  # up by at most x2.5 an interval, down by up to x4


def test_a_prior_of_the_runs_sizes_replaces_the_start_lr():
    context = RunContext(params=4_000_000, mean_fan_in=256.0, tokens_per_step=500)
    rule = ActionRule(prior_lr=0.01, prior_fan_in_power=-1.0, prior_budget_power=-0.5)
    # 0.01 x (256 / 64)**-1 x (4000 / 1000)**-0.5; the parameters and tokens have power 0
    assert rule.start_lr(3e-2, context, 4000) == pytest.approx(0.01 / 4 / 2, rel=1e-12)
    assert dataclasses.replace(rule, prior_lr=1.0).start_lr(3e-2, context, 4000) == 0.1  # clipped
    assert ActionRule().start_lr(3e-2, None, 4000) == 3e-2  # no prior: the start LR
    assert ActionRule().start_lr(1.0, None, 4000) == 0.1  # ... clipped
    with pytest.raises(ConfigError, match="needs the run's context"):
        rule.start_lr(3e-2, None, 4000)

    # In the env, a range test from the prior is the same run whatever the start LR.
    rule = dataclasses.replace(rule, mode="continuous", range_start=0.3, cooldown_fraction=0.2)
    settings = RunSettings("tiny", steps=40, eval_every=10, batch_size=8)
    traces = []
    for start_lr in (1e-5, 1e-1):
        env = LRControlEnv(EnvConfig(action=rule))
        env.reset(options={"task": settings.task(0, start_lr)})
        traces.append([env.step(np.array([1.0]))[4]["lr"] for _ in range(4)])
    assert traces[0] == traces[1]
    prior = rule.start_lr(1.0, settings.task(0, 1.0).make_run("cpu").context(), 40)
    assert traces[0][0] == pytest.approx(0.3 * prior) and traces[0][1] == pytest.approx(
        0.75 * prior
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prior_lr": -1e-3}, "prior_lr must not be negative, got -0.001"),
        ({"prior_fan_in_power": -1.0}, "prior_fan_in_power need a prior_lr > 0"),
        ({"prior_lr": 1e-3, "sweep_fraction": 0.05}, "sweep_fraction is a search of its own"),
        ({"range_start": 0.1}, "range_start needs continuous actions"),
        ({"mode": "continuous", "range_start": 0.1, "probe_intervals": 1}, "without a probe"),
        ({"mode": "continuous", "range_start": 1.5}, "range_start must be in [0, 1), got 1.5"),
        ({"mode": "continuous", "rise_factor": 1.0}, "rise_factor must be above 1, got 1.0"),
    ],
)
def test_bad_range_test_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError) as error:
        ActionRule(**settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_range_stop_rule_rises_until_the_gain_fades_then_backs_off_and_holds():
    from lrpilot.agents.controllers import RANGE_TEST_RULE, RangeStopController
    from lrpilot.env.features import FEATURE_NAMES, NUM_FEATURES

    def observation(progress: float, gain: float) -> np.ndarray:
        values = np.zeros(NUM_FEATURES, dtype=np.float32)
        values[FEATURE_NAMES.index("progress")] = progress
        values[FEATURE_NAMES.index("log_val_rel_prev")] = -gain  # log(L_t / L_{t-1})
        return values

    def factors(controller, gains) -> list[float]:
        out = []
        for t, gain in enumerate(gains):
            action = controller.act(observation(t / 10, gain))
            exponent = float(np.asarray(action).reshape(-1)[0])
            rule = controller.rule
            out.append(
                (rule.rise_factor if exponent > 0 else rule.continuous_max_factor) ** exponent
            )
        return out

    controller = RangeStopController(stop_fraction=0.3, backoff=2.0)
    gains = (0.0, 0.5, 0.4, 0.1, 0.6)  # the 4th is under 30% of the best: stop
    assert factors(controller, gains) == pytest.approx([2.5, 2.5, 2.5, 0.5, 1.0])  # then holds
    controller.act(observation(0.0, 0.0))  # a new episode rises again
    assert controller.rising
    # at most one rise (priorhold), whatever the gains; a first interval that loses stops
    holder = RangeStopController(stop_fraction=0.0, max_rises=1, rule=RANGE_TEST_RULE)
    assert factors(holder, gains) == pytest.approx([2.5, 2.5, 1.0, 1.0, 1.0])
    assert factors(holder, (0.0, -0.1, 0.5)) == pytest.approx([2.5, 1.0, 1.0])
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="max_rises must be a whole number"):
            RangeStopController(max_rises=bad)


def test_a_rules_settings_are_part_of_its_runs_cache_key(monkeypatch):
    from lrpilot.agents import controllers

    before = controllers.rule_digest("rangestop")
    assert before and controllers.rule_digest("plateau") == ""  # plateau's keys stay as they were
    monkeypatch.setitem(controllers.RANGE_STOP, "backoff", 3.0)
    assert controllers.rule_digest("rangestop") != before
