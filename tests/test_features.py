"""Observation features for losses of 0 (a memorised data set) and below, in the env
and in a training loop; and unchanged for positive losses."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from conftest import make_policy

from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.env import LRControlEnv, Task
from lrpilot.env.features import (
    FEATURE_CLIP,
    FEATURE_GROUPS,
    FEATURE_NAMES,
    ObservationBuilder,
    finite_clipped,
)
from lrpilot.lm.run import IntervalStats, RunParts, StepRun

STATS = IntervalStats(
    step=20,
    steps=20,
    lr=1e-3,
    lr_mean=1e-3,
    train_loss_mean=2.0,
    train_loss_std=0.1,
    train_loss_slope=-0.01,
    val_loss=2.2,
    grad_norm=0.5,
    update_ratio=1e-3,
    nonfinite=False,
    nonfinite_steps=0,
    tokens=0,
    seconds=0.0,
)


def feature(observation: np.ndarray, name: str) -> float:
    return float(observation[FEATURE_NAMES.index(name)])


def old_observation(builder: ObservationBuilder, stats: IntervalStats, lr: float) -> np.ndarray:
    """The formulas as they were before losses of 0 were handled (positive values)."""
    val, mean = stats.val_loss, stats.train_loss_mean
    best = min(builder.best_val_loss, val)
    return finite_clipped(
        [
            stats.step / builder.total_steps,
            math.log(lr / 1e-3),
            math.log(lr / builder.start_lr),
            math.log(val / builder.previous_val_loss),
            math.log(val / builder.initial_val_loss),
            math.log(val / best),
            stats.train_loss_slope * stats.steps / mean,
            stats.train_loss_std / mean,
            math.log(val / mean),
            math.log(stats.grad_norm),
            math.log(stats.grad_norm / builder.previous_grad_norm)
            if math.isfinite(builder.previous_grad_norm)
            else 0.0,
            math.log(stats.update_ratio),
            0.0,
        ]
    )


def test_positive_losses_give_exactly_the_features_they_gave():
    rng = np.random.default_rng(0)
    builder = ObservationBuilder(3e-3, 5.0, 400)
    for interval in range(1, 30):
        stats = replace(
            STATS,
            step=20 * interval,
            train_loss_mean=float(rng.uniform(1e-3, 6)),
            train_loss_std=float(rng.uniform(0, 1)),
            train_loss_slope=float(rng.normal(0, 0.05)),
            val_loss=float(rng.uniform(1e-3, 6)),
            grad_norm=float(rng.uniform(1e-2, 3)),
            update_ratio=float(rng.uniform(1e-4, 1e-2)),
        )
        lr = float(rng.uniform(1e-4, 1e-2))
        expected = old_observation(builder, stats, lr)
        assert np.array_equal(builder.update(stats, controller_lr=lr), expected)  # bit for bit


def test_losses_of_zero_are_defined_and_take_their_limits():
    builder = ObservationBuilder(1e-3, 2.0, 100)
    # The train loss reaches 0: validation against train loss is as large as it gets.
    first = builder.update(replace(STATS, train_loss_mean=0.0, train_loss_std=0.0), 1e-3)
    assert feature(first, "gen_gap") == FEATURE_CLIP
    assert feature(first, "train_noise_rel") == feature(first, "train_slope_rel") == 0.0
    # The validation loss reaches 0 after 2.2: the largest improvement there is.
    second = builder.update(replace(STATS, val_loss=0.0, train_loss_mean=0.0), 1e-3)
    assert feature(second, "log_val_rel_prev") == feature(second, "log_val_rel_init") == -10.0
    assert feature(second, "log_val_rel_best") == feature(second, "gen_gap") == 0.0  # 0 / 0
    # It stays at 0 (0 / 0: no change), then rises above its best of 0.
    third = builder.update(replace(STATS, val_loss=0.0, grad_norm=0.0), 1e-3)
    assert feature(third, "log_val_rel_prev") == feature(third, "log_val_rel_best") == 0.0
    assert feature(third, "log_grad_norm_change") == -FEATURE_CLIP
    fourth = builder.update(replace(STATS, val_loss=0.5), 1e-3)
    assert feature(fourth, "log_val_rel_prev") == feature(fourth, "log_val_rel_best") == 10.0
    assert feature(fourth, "log_grad_norm_change") == FEATURE_CLIP  # from a norm of 0
    for observation in (first, second, third, fourth):
        assert np.all(np.isfinite(observation))


def test_negative_losses_read_zero_in_every_loss_ratio():
    builder = ObservationBuilder(1e-3, 2.0, 100)
    builder.update(replace(STATS, val_loss=-1.0), 1e-3)
    observation = builder.update(replace(STATS, val_loss=-2.0, train_loss_mean=-1.5), 1e-3)
    assert [feature(observation, name) for name in FEATURE_GROUPS["loss"]] == [0.0] * 6


# -- in the env: a run that memorises its data --------------------------------------------------


def memorising_run(seed: int) -> RunParts:
    """A linear classifier on 8 separable points with a hinge loss, which reaches
    exactly 0 within a few steps; the validation loss stays above 0."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor([1.0, -1.0] * 4)
    x = 0.1 * torch.randn(8, 4, generator=generator)
    x[:, 0] = y * (1 + torch.rand(8, generator=generator))  # a margin along the first axis
    model = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, 0.0, 0.0, 0.0]]))

    def hinge_loss(_batch=None) -> torch.Tensor:
        return torch.clamp(1 - y * model(x).squeeze(1), min=0).mean()

    return RunParts(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        batches=iter(int, 1),  # the same full batch at every step
        loss=hinge_loss,
        validation_loss=lambda: float(hinge_loss()) + 0.1,
        test_loss=lambda: float(hinge_loss()) + 0.1,
    )


@dataclass(frozen=True)
class MemorisingWorkload:
    name: str = "memorising"
    steps: int = 40
    eval_every: int = 10

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        return StepRun(memorising_run(seed))

    def to_dict(self) -> dict:
        return {"family": "test", "name": self.name}

    def digest(self) -> str:
        return hashlib.sha256(b"memorising").hexdigest()


def test_the_env_observes_a_train_loss_of_zero():
    task = Task(MemorisingWorkload(), seed=0, total_steps=40, eval_every=10, start_lr=0.5)
    env = LRControlEnv()  # discrete actions: action 2 keeps the LR
    env.reset(seed=0, options={"task": task})
    gen_gaps = []
    for _ in range(task.num_intervals):
        observation, _reward, terminated, _truncated, _info = env.step(2)
        assert np.all(np.isfinite(observation))
        gen_gaps.append(feature(observation, "gen_gap"))
        if terminated:
            break
    assert env.unwrapped.last_stats.train_loss_mean == 0.0  # the data set is memorised
    assert gen_gaps[-1] == FEATURE_CLIP


def test_the_loop_observes_train_losses_of_zero():
    parts = memorising_run(0)
    scheduler = PolicyScheduler(parts.optimizer, make_policy(seed=1), 40, 10, initial_val_loss=1.0)
    for step in range(40):
        parts.optimizer.zero_grad()
        parts.loss().backward()
        parts.optimizer.step()
        scheduler.step()
        if (step + 1) % 10 == 0:
            # What a memorised set gives: every train loss 0 (the validation loss must
            # stay positive: the API refuses 0, tests/test_bad_input_api.py).
            scheduler.observe([0.0] * 10, 1e-3)
    assert scheduler.last_stats.train_loss_mean == 0.0
    assert all(np.isfinite(lr) and lr > 0 for lr in scheduler.get_last_lr())


def test_every_feature_is_in_exactly_one_group():
    grouped = [name for names in FEATURE_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(FEATURE_NAMES)
