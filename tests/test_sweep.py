"""The rolled-back LR sweep: its LR path, the exact rollback, its place in the budget,
the `sweep` features, the settings' errors and the `sweepvalley` rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import drive_run_with_scheduler, make_policy

from lrpilot.agents.controllers import SWEEP_RULE, SweepValleyController, rule_digest
from lrpilot.agents.rollout import run_episode
from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.env import ActionRule, EnvConfig, LRControlEnv, TaskSpace
from lrpilot.env.features import (
    FEATURE_CLIP,
    FEATURE_NAMES,
    FEATURE_SETS,
    SWEEP_FEATURES,
    sweep_feature_values,
)
from lrpilot.errors import ConfigError
from lrpilot.experiments.replay import policy_env_config
from lrpilot.lm.run import StepRun
from lrpilot.lm.run_parts import RunParts
from lrpilot.lm.sweep import SweepResult, smoothed, sweep_lrs, valley_index
from lrpilot.settings import RunSettings

SPACE = TaskSpace(steps=(12,), eval_every=4, batch_size=8, start_lr=(1e-3, 1e-2))
SWEEP = ActionRule(mode="continuous", sweep_fraction=0.25)  # 3 of 12 steps


def small_run(seed: int = 0, steps: int = 40, skip: int = 0) -> StepRun:
    """A linear model with a batch norm (a buffer the sweep must put back), under Adam;
    `skip`: the run's batches start after the first `skip`."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
    )
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=generator)
    batches = [torch.randn(16, 5, generator=generator) for _ in range(steps)]

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(batch[:, :4]).squeeze(1), batch[:, 4])

    parts = RunParts(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        batches=batches[skip:],
        loss=loss,
        validation_loss=lambda: float(loss(batches[0])),
        test_loss=lambda: float(loss(batches[1])),
    )
    return StepRun(parts)


def test_the_lr_rises_geometrically_from_low_to_high_one_step_each():
    lrs = sweep_lrs(5, 2e-5, 2e-1)
    assert lrs == pytest.approx([2e-5, 2e-4, 2e-3, 2e-2, 2e-1], rel=1e-12)
    run = small_run()
    seen = []
    run.optimizer.register_step_pre_hook(
        lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"])
    )
    result = run.sweep(lrs)
    assert seen == lrs and list(result.lrs) == lrs  # every step trained at its LR
    with pytest.raises(ValueError, match="at least 2 steps"):
        sweep_lrs(1, 1e-5, 1e-1)


def test_the_rollback_restores_weights_buffers_and_optimizer_state_bitwise():
    run = small_run()
    run.train(3, 1e-2)  # the optimizer has state to put back
    before = [t.detach().clone() for t in [*run.model.parameters(), *run.model.buffers()]]
    state = run.optimizer.state_dict()
    saved = {k: {n: v.clone() for n, v in s.items()} for k, s in state["state"].items()}
    groups = [dict(g) for g in state["param_groups"]]
    result = run.sweep(sweep_lrs(6, 1e-4, 1.0))
    assert len(result.losses) == 6 and all(math.isfinite(v) for v in result.losses)
    after = [*run.model.parameters(), *run.model.buffers()]
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(after, before, strict=True))
    restored = run.optimizer.state_dict()
    assert restored["param_groups"] == groups
    assert restored["state"].keys() == saved.keys()
    for key, entries in saved.items():
        for name, value in entries.items():
            assert torch.equal(restored["state"][key][name], value), (key, name)


def test_the_sweep_consumes_its_batches_and_counts_its_steps():
    swept, after_four = small_run(), small_run(skip=4)
    swept.sweep(sweep_lrs(4, 1e-4, 1.0))
    assert swept.step == 4 and swept.tokens == 4 * 16
    # the next interval trains on the batches after the sweep's, from the start point
    assert swept.train(3, 1e-2).train_loss_mean == after_four.train(3, 1e-2).train_loss_mean


def test_the_sweep_steps_count_in_the_run_budget():
    env = LRControlEnv(EnvConfig(task_space=SPACE, action=SWEEP))
    _, info = env.reset(seed=0)
    assert info["step"] == 3 and env.sweep is not None and len(env.sweep.lrs) == 3
    trained, terminated = [], False
    while not terminated:
        _, _, terminated, _, info = env.step(np.zeros(1, dtype=np.float32))
        trained.append(env.last_stats.steps)
    # the first interval is the rest of the one the sweep ended in: the same grid
    assert trained == [1, 4, 4] and info["step"] == 12 and env.run.step == 12


def test_the_sweep_covers_the_rules_lr_range_whatever_the_start_lr():
    rule = ActionRule(mode="continuous", sweep_fraction=0.25, lr_min=1e-4, lr_max=1e-2)
    sweeps = []
    for start_lr in (1e-3, 5e-3):
        env = LRControlEnv(EnvConfig(task_space=SPACE, action=rule))
        task = dataclasses.replace(SPACE.sample(np.random.default_rng(0)), start_lr=start_lr)
        env.reset(options={"task": task})
        sweeps.append(env.sweep.lrs)
    assert sweeps[0] == sweeps[1] == pytest.approx((1e-4, 1e-3, 1e-2), rel=1e-12)


def test_the_sweep_features_have_their_golden_values_on_a_scripted_curve():
    result = SweepResult(lrs=tuple(sweep_lrs(5, 1e-4, 1.0)), losses=(4, 3, 2, 3, 100))
    # debiased EMA, beta 0.7: 1.2/0.3, 1.74/0.51, 1.818/0.657, 2.1726/0.7599, ...
    assert smoothed(list(result.losses))[:4] == pytest.approx([4, 3.411765, 2.767123, 2.859060])
    assert result.smoothed_losses[4] == math.inf  # 37.9 > 4 x 2.77: diverged
    assert valley_index([4.0, 3.411765, 2.767123, 2.859060]) == 0  # fastai: -1 + 1 + 0
    # the suggestion, 1e-4, from the reference LR 1e-3: log(0.1)
    expected = [0.0, -0.159065, -0.368486, -0.335801, FEATURE_CLIP, math.log(0.1)]
    values = sweep_feature_values(result, 4.0)
    assert list(values) == list(SWEEP_FEATURES)
    assert list(values.values()) == pytest.approx(expected, abs=1e-6)
    longer = SweepResult(
        lrs=tuple(sweep_lrs(9, 1e-4, 1.0)),
        losses=(4.0, 4.0, 3.8, 3.0, 2.2, 1.8, 2.0, 5.0, math.nan),
    )
    assert longer.suggested_lr == pytest.approx(1e-4 * 10**1.5)  # index 0 + 2 + 1 of 0..6
    values = sweep_feature_values(longer, 4.0)
    expected = [0.0, -0.023096, -0.266853, -0.499840, FEATURE_CLIP, math.log(10**0.5)]
    assert list(values.values()) == pytest.approx(expected, abs=1e-6)
    assert sweep_feature_values(None, 4.0) == dict.fromkeys(SWEEP_FEATURES, 0.0)


def test_the_first_observation_holds_the_sweep_and_zeros_without_one():
    sweep_at = [FEATURE_NAMES.index(name) for name in SWEEP_FEATURES]
    config = EnvConfig(task_space=SPACE, action=SWEEP, feature_version="v3")
    env = LRControlEnv(config)
    observation, _ = env.reset(seed=1)
    assert observation.shape == (len(FEATURE_SETS["v3"]),)
    expected = sweep_feature_values(env.sweep, env.initial_val_loss)
    np.testing.assert_allclose(observation[sweep_at], list(expected.values()), rtol=1e-6)
    assert observation[sweep_at].any()
    later, *_ = env.step(np.zeros(1, dtype=np.float32))
    np.testing.assert_array_equal(later[sweep_at], observation[sweep_at])  # held all run
    plain = LRControlEnv(EnvConfig(task_space=SPACE, feature_version="v3"))
    observation, info = plain.reset(seed=1)
    assert not observation[sweep_at].any() and info["step"] == 0


def test_same_seed_same_sweep():
    def swept(seed):
        env = LRControlEnv(EnvConfig(task_space=SPACE, action=SWEEP))
        env.reset(seed=seed)
        return env.sweep

    first, again = swept(3), swept(3)
    assert first.losses == again.losses and first.lrs == again.lrs


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sweep_fraction": 0.6}, "sweep_fraction must be in [0, 0.5], got 0.6"),
        (
            {"sweep_fraction": 0.04, "mode": "continuous", "range_start": 0.1},
            "sweep_fraction is a search of its own",
        ),
        ({"sweep_fraction": 0.04, "probe_intervals": 1}, "takes no range_start, probe or prior"),
    ],
)
def test_bad_sweep_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=None) as error:
        ActionRule(**settings)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1


def test_a_sweep_that_leaves_no_step_to_train_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="takes 2 of the run's 2 steps"):
        ActionRule(sweep_fraction=0.04).sweep_steps(2)
    assert ActionRule(sweep_fraction=0.04).sweep_steps(400) == 16
    assert ActionRule().sweep_steps(400) == 0


def test_sweepvalley_sets_the_suggested_lr_then_holds_it():
    controller = SweepValleyController()
    config = EnvConfig(task_space=SPACE, action=controller.rule, feature_version="v3")
    env = LRControlEnv(config)
    task = SPACE.sample(np.random.default_rng(0))
    result = run_episode(env, controller, task)
    assert env.sweep.lrs[0] == 1e-5 and env.sweep.lrs[-1] == pytest.approx(1e-1)
    lrs = [row["lr"] for row in result.rows[1:]]
    assert lrs[0] == pytest.approx(env.sweep.suggested_lr, rel=1e-5) and lrs[0] != task.start_lr
    assert result.rows[-1]["step"] == task.steps
    assert rule_digest("sweepvalley") and rule_digest("sweepvalley") != rule_digest("rangestop")
    with pytest.raises(ConfigError, match="SweepValleyController needs"):
        SweepValleyController(ActionRule(mode="continuous"))
    assert SWEEP_RULE.sweep_fraction == 0.04


# -- in the user's loop: PolicyScheduler -----------------------------------------------------

TASK = RunSettings("tiny", steps=35, eval_every=10, batch_size=8).task(5, 3e-3)


def sweep_policy(fraction: float = 0.1, version: str = "v3"):
    """A continuous policy of feature set `version` whose rule sweeps `fraction` of the
    budget (10%: 4 of 35 steps) over its LR range, 1e-3 to 0.2."""
    policy = make_policy(
        seed=7,
        scale=3.0,
        action_mode="continuous",
        first_action_max_factor=100.0,
        cooldown_fraction=0.2,
        feature_version=version,
    )
    return policy.with_action(sweep_fraction=fraction)


@pytest.mark.parametrize(
    ("fraction", "sweep_steps", "ends", "version"),
    [
        (0.1, 4, [10, 20, 30, 35], "v3"),
        (0.4, 14, [20, 30, 35], "v3"),  # 14: the sweep passes step 10
        (0.1, 4, [10, 20, 30, 35], "v2"),  # a set without the sweep's features
    ],
)
def test_the_env_and_policy_scheduler_agree_on_the_sweep_and_the_run(
    fraction, sweep_steps, ends, version
):
    policy = sweep_policy(fraction, version)
    env = LRControlEnv(policy_env_config(policy))
    env_rows = run_episode(env, policy, TASK).rows[1:]
    env_lrs = [(row["lr"], row["lr_mean"]) for row in env_rows]
    assert len(env.sweep.lrs) == sweep_steps and [row["step"] for row in env_rows] == ends

    scheduler, lrs, observations = drive_run_with_scheduler(policy, TASK)
    observed = [step for step, _ in observations]
    # the sweep's end: its losses, as the env recorded them
    assert observations[0][1] == list(env.sweep.losses)
    assert observed == [sweep_steps, *ends]
    # the sweep's LR path, then the intervals' LRs, as the env's
    assert lrs[:sweep_steps] == pytest.approx(list(env.sweep.lrs), rel=1e-12)
    assert scheduler.controller.features.sweep_values == env.features.sweep_values
    assert any(env.features.sweep_values)
    chunks = np.split(np.array(lrs[sweep_steps:]), np.array(ends[:-1]) - sweep_steps)
    scheduler_lrs = [(chunk[-1], chunk.mean()) for chunk in chunks]
    np.testing.assert_allclose(scheduler_lrs, env_lrs, rtol=1e-12)


def test_the_loop_sweep_puts_the_parameters_and_optimizer_state_back():
    policy = sweep_policy()
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()  # state to put back
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state.items()}
    scheduler = PolicyScheduler(optimizer, policy, 35, 10, initial_val_loss=1.0, tokens_per_step=2)
    mid_sweep = scheduler.state_dict()
    with pytest.raises(ConfigError, match="saved during the policy's LR sweep"):
        other = torch.optim.AdamW(torch.nn.Linear(3, 1).parameters(), lr=1e-3)
        PolicyScheduler(other, policy, 35, 10).load_state_dict(mid_sweep)
    sweep_losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = model(torch.ones(2, 3)).pow(2).sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        sweep_losses.append(loss.item())
    with pytest.raises(ConfigError, match="each of its 4 steps, got 3"):
        scheduler.observe(sweep_losses[:3], 1.0)
    scheduler.observe(sweep_losses, 1.0)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            assert torch.equal(value, state[param][name]), name
