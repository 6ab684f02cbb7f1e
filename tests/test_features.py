"""Observation features: their values on a hand-made run, and losses of 0 (a memorised
data set) and below, in the env and in a training loop."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from conftest import make_policy

from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.env import LRControlEnv, Task
from lrpilot.env.features import (
    FEATURE_CLIP,
    FEATURE_GROUPS,
    FEATURE_NAMES,
    FEATURE_SETS,
    ObservationBuilder,
)
from lrpilot.errors import ConfigError
from lrpilot.lm.run import IntervalStats, StepRun
from lrpilot.lm.run_context import RunContext
from lrpilot.lm.run_parts import RunParts

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


# Three intervals of a 100-step run that starts at LR 2e-3 from a validation loss of 4.0:
# the run improves, then its validation loss goes back up above its best.
INTERVALS = (
    (
        replace(STATS, train_loss_mean=3.0, train_loss_std=0.3, val_loss=3.2, grad_norm=2.0),
        2e-3,
    ),
    (
        replace(
            STATS,
            step=40,
            train_loss_mean=2.5,
            train_loss_std=0.5,
            train_loss_slope=-0.005,
            val_loss=2.4,
            grad_norm=1.0,
            update_ratio=2e-3,
            nonfinite_steps=2,
        ),
        4e-3,
    ),
    (
        replace(
            STATS,
            step=60,
            train_loss_mean=2.2,
            train_loss_std=0.11,
            train_loss_slope=0.002,
            val_loss=2.6,
            grad_norm=4.0,
            update_ratio=5e-4,
        ),
        1e-3,
    ),
)
# The run's sizes, and the context features they give (constant over the run).
CONTEXT = RunContext(params=250_000, mean_fan_in=96.0, tokens_per_step=512)
EXPECTED_CONTEXT = {
    "log_params": -1.386294,  # log(250_000 / 1e6)
    "log_fan_in": 0.4054651,  # log(96 / 64)
    "log_tokens_per_step": -0.6694307,  # log(512 / 1e3)
    "log_budget": -2.302585,  # log(100 / 1e3)
}
# The features of each interval, computed once and checked against the formulas of
# `env/features.py` (the comments).
EXPECTED_V2 = (
    {
        "progress": 0.2,  # 20 / 100
        "log_lr": 0.6931472,  # log(2e-3 / 1e-3)
        "log_lr_rel_start": 0.0,
        "log_val_rel_prev": -0.2231435,  # log(3.2 / 4.0)
        "log_val_rel_init": -0.2231435,
        "log_val_rel_best": 0.0,  # 3.2 is the best so far
        "train_slope_rel": -0.06666667,  # -0.01 * 20 / 3.0
        "train_noise_rel": 0.1,  # 0.3 / 3.0
        "gen_gap": 0.06453852,  # log(3.2 / 3.0)
        "log_grad_norm": 0.6931472,  # log(2.0)
        "log_grad_norm_change": 0.0,  # no previous norm
        "log_update_ratio": -6.907755,  # log(1e-3)
        "nonfinite_fraction": 0.0,
    },
    {
        "progress": 0.4,
        "log_lr": 1.386294,  # log(4e-3 / 1e-3)
        "log_lr_rel_start": 0.6931472,  # log(4e-3 / 2e-3)
        "log_val_rel_prev": -0.2876821,  # log(2.4 / 3.2)
        "log_val_rel_init": -0.5108256,  # log(2.4 / 4.0)
        "log_val_rel_best": 0.0,
        "train_slope_rel": -0.04,  # -0.005 * 20 / 2.5
        "train_noise_rel": 0.2,  # 0.5 / 2.5
        "gen_gap": -0.04082200,  # log(2.4 / 2.5)
        "log_grad_norm": 0.0,
        "log_grad_norm_change": -0.6931472,  # log(1.0 / 2.0)
        "log_update_ratio": -6.214608,  # log(2e-3)
        "nonfinite_fraction": 0.1,  # 2 / 20
    },
    {
        "progress": 0.6,
        "log_lr": 0.0,
        "log_lr_rel_start": -0.6931472,  # log(1e-3 / 2e-3)
        "log_val_rel_prev": 0.08004271,  # log(2.6 / 2.4)
        "log_val_rel_init": -0.4307829,  # log(2.6 / 4.0)
        "log_val_rel_best": 0.08004271,  # log(2.6 / 2.4): above its best
        "train_slope_rel": 0.01818182,  # 0.002 * 20 / 2.2
        "train_noise_rel": 0.05,  # 0.11 / 2.2
        "gen_gap": 0.1670541,  # log(2.6 / 2.2)
        "log_grad_norm": 1.386294,  # log(4.0)
        "log_grad_norm_change": 1.386294,  # log(4.0 / 1.0)
        "log_update_ratio": -7.600903,  # log(5e-4)
        "nonfinite_fraction": 0.0,
    },
)


EXPECTED = {
    "v2": EXPECTED_V2,
    # without a sweep, the sweep's features read 0
    "v3": tuple(
        expected | EXPECTED_CONTEXT | dict.fromkeys(FEATURE_GROUPS["sweep"], 0.0)
        for expected in EXPECTED_V2
    ),
}


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_every_feature_of_a_run_has_its_recorded_value(version):
    names = FEATURE_SETS[version]
    builder = ObservationBuilder(2e-3, 4.0, 100, version=version, context=CONTEXT)
    initial = builder.initial()  # the start LR and the run's sizes; nothing trained yet
    expected_initial = dict.fromkeys(names, 0.0) | {"log_lr": 0.6931472}
    expected_initial |= EXPECTED_CONTEXT if version == "v3" else {}
    assert dict(zip(names, initial.tolist(), strict=True)) == pytest.approx(expected_initial)
    for (stats, lr), expected in zip(INTERVALS, EXPECTED[version], strict=True):
        assert list(expected) == list(names)
        observation = builder.update(stats, controller_lr=lr)
        values = dict(zip(names, observation.tolist(), strict=True))
        assert values == pytest.approx(expected, rel=1e-6, abs=1e-7), stats.step


def test_each_feature_set_extends_the_one_before_it():
    sets = list(FEATURE_SETS.values())
    for earlier, later in itertools.pairwise(sets):
        assert later[: len(earlier)] == earlier  # a feature's index is the same in both
    assert FEATURE_SETS["v2"] == FEATURE_NAMES[:13]  # the shipped policy's set
    assert FEATURE_SETS["v3"][13:17] == FEATURE_GROUPS["context"]
    assert FEATURE_SETS["v3"][17:] == FEATURE_GROUPS["sweep"]
    assert set(FEATURE_SETS) == {"v2", "v3"}


def test_the_sweep_features_are_in_every_observation_of_the_run():
    sweep = dict.fromkeys(FEATURE_GROUPS["sweep"], 0.5) | {"sweep_log_lr_suggested": -2.0}
    builder = ObservationBuilder(2e-3, 4.0, 100, version="v3", context=CONTEXT, sweep=sweep)
    names = FEATURE_SETS["v3"]
    for observation in (builder.initial(), builder.update(INTERVALS[0][0], 2e-3)):
        values = dict(zip(names, observation.tolist(), strict=True))
        assert {name: values[name] for name in sweep} == pytest.approx(sweep)
    # a set without them ignores them
    plain = ObservationBuilder(2e-3, 4.0, 100, version="v2", sweep=sweep).initial()
    assert plain.shape == (13,) and np.count_nonzero(plain) == 1


def test_the_context_features_can_be_masked_and_are_required_by_their_set():
    builder = ObservationBuilder(2e-3, 4.0, 100, ("log_budget",), version="v3", context=CONTEXT)
    assert feature(builder.initial(), "log_budget") == 0.0
    assert feature(builder.initial(), "log_params") == pytest.approx(-1.386294)
    with pytest.raises(ConfigError, match="feature set 'v3' reads the run's sizes") as error:
        ObservationBuilder(2e-3, 4.0, 100, version="v3")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown feature\\(s\\) to mask: 'log_budget'"):
        ObservationBuilder(2e-3, 4.0, 100, ("log_budget",), version="v2")
    with pytest.raises(ConfigError, match="unknown feature set 'v9'"):
        ObservationBuilder(2e-3, 4.0, 100, version="v9")


def test_losses_of_zero_are_defined_and_take_their_limits():
    builder = ObservationBuilder(1e-3, 2.0, 100, version="v3", context=CONTEXT)
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
    builder = ObservationBuilder(1e-3, 2.0, 100, version="v3", context=CONTEXT)
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
    task = Task(MemorisingWorkload(), seed=0, steps=40, eval_every=10, start_lr=0.5)
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


# -- the run's sizes, measured by the run ---------------------------------------------------


def test_a_run_measures_its_sizes_without_changing_its_training(micro_workload):
    asked, plain = micro_workload.make_run(3), micro_workload.make_run(3)
    context = asked.context()  # before any step: takes the first batch out early
    weights = [p for p in asked.model.parameters() if p.dim() >= 2]
    assert context == RunContext(
        params=sum(p.numel() for p in asked.model.parameters()),
        mean_fan_in=sum(p[0].numel() for p in weights) / len(weights),
        tokens_per_step=micro_workload.batch_size * micro_workload.block_size,  # 8 x 16
    )
    first, second = asked.train(5, 1e-3), plain.train(5, 1e-3)
    assert replace(first, seconds=0.0) == replace(second, seconds=0.0)
    assert asked.context() == context  # constant over the run


def test_a_run_of_example_batches_counts_examples_per_step():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    examples = (torch.randn(16, 4), torch.randint(0, 3, (16,)))  # not token sequences
    run = StepRun(
        RunParts(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            batches=iter(lambda: examples, None),
            loss=lambda batch: torch.nn.functional.cross_entropy(model(batch[0]), batch[1]),
            validation_loss=lambda: 1.0,
            test_loss=lambda: 1.0,
        )
    )
    # N = 4 * 8 + 8 + 8 * 3 + 3, F = (4 + 8) / 2, B = 16 examples (`batch_length`).
    assert run.context() == RunContext(params=67, mean_fan_in=6.0, tokens_per_step=16)
