"""Bad input to the policy's Python API: each is refused with a one-line `ConfigError`
that names the problem and the value, before any work (the scheduler's state and the
LR it sets are unchanged by a refused call)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_policy

from lrpilot.agents import load_policy
from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.errors import ConfigError
from lrpilot.integrations.core import CallbackCore, LoopSettings

EVERY = 5


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def scheduler_after_one_interval() -> PolicyScheduler:
    """A scheduler that has taken its first action and counted one interval's steps."""
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weights], lr=0.01)
    policy = make_policy(seed=7, action_mode="continuous", factor_span=0.2)
    scheduler = PolicyScheduler(optimizer, policy, 4 * EVERY, EVERY, initial_val_loss=2.0)
    for _ in range(EVERY):
        weights.grad = torch.full((3,), 0.5)
        optimizer.step()
        scheduler.step()
    return scheduler


BAD_OBSERVATIONS = [
    # (train_loss, val_loss, what the message says)
    ([], 1.5, "train_loss is empty: observe() needs the interval's train losses"),
    (torch.tensor([]), 1.5, "train_loss is empty"),
    (None, 1.5, "observe() needs train_loss, the interval's train losses"),
    ("1.5", 1.5, "train_loss must be a number or a sequence of numbers, got '1.5'"),
    ([1.5, None, 1.4], 1.5, "train_loss must hold numbers or one-element tensors, got None"),
    ([1.5, "1.4"], 1.5, "train_loss must hold numbers or one-element tensors, got '1.4'"),
    ([1.5, True], 1.5, "got True in it"),
    ([torch.ones(2)], 1.5, "got tensor([1., 1.]) in it"),
    (torch.ones(2, 2), 1.5, "train_loss must be one loss or a sequence of losses, got a tensor"),
    ({1.5, 1.4}, 1.5, "train_loss must be a number or a sequence of numbers, got {"),
    ([1.5] * EVERY, 0.0, "val_loss must be a positive finite number, got 0.0"),
    ([1.5] * EVERY, -0.5, "val_loss must be a positive finite number, got -0.5"),
    ([1.5] * EVERY, math.nan, "val_loss must be a positive finite number, got nan"),
    ([1.5] * EVERY, math.inf, "val_loss must be a positive finite number, got inf"),
    ([1.5] * EVERY, "1.4", "val_loss must be a positive number, got '1.4'"),
    ([1.5] * EVERY, True, "val_loss must be a positive number, got True"),
    ([1.5] * EVERY, [1.4], "val_loss must be a positive number, got [1.4]"),
]


@pytest.mark.parametrize(("train_loss", "val_loss", "message"), BAD_OBSERVATIONS)
def test_bad_losses_are_refused(train_loss, val_loss, message):
    scheduler = scheduler_after_one_interval()
    with pytest.raises(ConfigError) as error:
        scheduler.observe(train_loss, val_loss)
    assert message in one_line(error)


def test_a_refused_observation_changes_nothing():
    clean = scheduler_after_one_interval()
    clean.observe([1.5, 1.45, 1.4, 1.42, 1.38], 1.4)
    refused = scheduler_after_one_interval()
    for train_loss, val_loss, _message in BAD_OBSERVATIONS:
        with pytest.raises(ConfigError):
            refused.observe(train_loss, val_loss)
    refused.observe([1.5, 1.45, 1.4, 1.42, 1.38], 1.4)
    assert refused.get_last_lr() == clean.get_last_lr()
    assert refused.lr == clean.lr != scheduler_after_one_interval().lr  # the policy acted
    assert (refused.controller.steps_done, refused.controller.observed_at) == (EVERY, EVERY)


def test_losses_as_tensors_and_numpy_numbers_are_numbers():
    as_floats = scheduler_after_one_interval()
    as_floats.observe([1.5, 1.45, 1.4, 1.42, 1.38], 1.4)
    as_others = scheduler_after_one_interval()
    train = [torch.tensor(1.5), np.float32(1.45), np.float64(1.4), 1.42, torch.tensor([1.38])]
    as_others.observe(train, torch.tensor(1.4, dtype=torch.float64))
    assert as_others.lr == pytest.approx(as_floats.lr, rel=1e-6)


@pytest.mark.parametrize(
    ("initial_val_loss", "message"),
    [
        (0.0, "initial validation loss must be a positive finite number, got 0.0"),
        (math.inf, "initial validation loss must be a positive finite number, got inf"),
        ("2.0", "initial validation loss must be a positive number, got '2.0'"),
    ],
)
def test_a_bad_initial_validation_loss_is_refused(initial_val_loss, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.01)
    scheduler = PolicyScheduler(optimizer, make_policy(), 20, EVERY)
    with pytest.raises(ConfigError) as error:
        scheduler.observe(val_loss=initial_val_loss)
    assert message in one_line(error)
    assert not scheduler.controller.started
    with pytest.raises(ConfigError) as error:
        LoopSettings(initial_val_loss=initial_val_loss)
    assert message in one_line(error)


def test_a_bad_grad_norm_is_refused():
    scheduler = scheduler_after_one_interval()
    with pytest.raises(ConfigError) as error:
        scheduler.observe([1.5] * EVERY, 1.4, grad_norm="0.3")
    assert "grad_norm must be a number, got '0.3'" in one_line(error)


def test_the_callbacks_shared_core_refuses_an_interval_without_train_losses():
    core = CallbackCore(make_policy(), LoopSettings(eval_every=EVERY))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.01)
    controller = core._make_controller(optimizer, steps=4 * EVERY, eval_every=EVERY)
    core._observe(2.0)
    for _ in range(EVERY):
        controller.count_step()
    with pytest.raises(ConfigError) as error:
        core._observe(1.5)
    assert one_line(error) == (
        "CallbackCore saw no training loss in steps 1 to 5, so it cannot show the policy "
        "the interval"
    )
    for _ in range(EVERY):
        core._add_batch_loss(torch.tensor(1.6))
        core._end_optimizer_step()
    with pytest.raises(ConfigError) as error:  # the framework's metric, diverged
        core._observe(torch.tensor(math.nan))
    assert "val_loss must be a positive finite number, got tensor(nan)" in one_line(error)
    assert [step for step, _val, _lr in core.decisions] == [0]
    core._observe(torch.tensor(1.5))
    assert [step for step, _val, _lr in core.decisions] == [0, EVERY]


NOT_A_PATH = "policy must be a path (a str or os.PathLike) or a name such as 'default', got"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (None, f"{NOT_A_PATH} NoneType None"),
        (3, f"{NOT_A_PATH} int 3"),
        (b"default", "got bytes b'default'"),
    ],
)
def test_load_policy_refuses_what_is_not_a_path(path, message):
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert message in one_line(error)


@pytest.mark.parametrize(
    ("tensor", "value"),
    [("hidden.0.weight", math.nan), ("output.bias", math.inf), ("log_std", -math.inf)],
)
def test_a_policy_file_with_non_finite_weights_is_refused_naming_the_tensor(
    tmp_path, tensor, value
):
    policy = make_policy(action_mode="continuous")
    policy.weights[tensor].view(-1)[0] = value
    path = policy.save(tmp_path / "p")
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert one_line(error) == f"{str(path)!r}: policy tensor {tensor} holds NaN or infinite values"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mean", math.nan, "policy normalization.mean holds values that are not finite"),
        ("var", math.inf, "policy normalization.var holds values that are not finite"),
        ("var", -1.0, "policy normalization.var holds a negative value, -1.0"),
    ],
)
def test_a_policy_file_with_bad_normalisation_statistics_is_refused(
    tmp_path, field, value, message
):
    policy = make_policy()
    size = policy.observation_size
    statistics = {"mean": [0.0] * size, "var": [1.0] * size, "epsilon": 1e-8, "clip_obs": 10.0}
    statistics[field][3] = value
    policy.metadata["normalization"] = statistics
    path = policy.save(tmp_path / "p")
    with pytest.raises(ConfigError) as error:
        load_policy(path)
    assert message in one_line(error)
