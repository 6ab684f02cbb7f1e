import itertools
import math

import numpy as np
import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.schedules import (
    SCHEDULE_NAMES,
    SCHEDULES,
    default_warmup,
    lr_function,
    make_schedule,
    schedule_curve,
)

PEAK, T = 0.01, 200


def _optimizer(lr=PEAK):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_is_finite_bounded_and_starts_sane(name):
    curve = schedule_curve(name, PEAK, T)
    assert len(curve) == T
    assert all(math.isfinite(lr) and 0 <= lr <= PEAK * (1 + 1e-9) for lr in curve)
    assert max(curve) == pytest.approx(PEAK)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_drives_the_optimizer_like_lr_at(name):
    optimizer = _optimizer()
    scheduler = make_schedule(name, optimizer, T)
    for step in range(T):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler.lr_at(step))
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_state_dict_round_trip(name):
    first_opt = _optimizer()
    first = make_schedule(name, first_opt, T)
    for _ in range(57):
        first_opt.step()
        first.step()
    second_opt = _optimizer()
    second = make_schedule(name, second_opt, T)
    second.load_state_dict(first.state_dict())
    second_opt.param_groups[0]["lr"] = first_opt.param_groups[0]["lr"]
    for _ in range(20):
        first_opt.step()
        first.step()
        second_opt.step()
        second.step()
        assert second.get_last_lr() == pytest.approx(first.get_last_lr())


def test_constant_and_decays_reach_their_floor():
    assert set(schedule_curve("constant", PEAK, T)) == {PEAK}
    for name in ("linear", "cosine"):
        scheduler = make_schedule(name, _optimizer(), T)
        assert scheduler.lr_at(0) == pytest.approx(PEAK)
        assert scheduler.lr_at(T) == pytest.approx(0.0)
        curve = schedule_curve(name, PEAK, T)
        assert all(a >= b for a, b in itertools.pairwise(curve))
    cosine = make_schedule("cosine", _optimizer(), T, final_ratio=0.1)
    assert cosine.lr_at(T) == pytest.approx(0.1 * PEAK)
    assert cosine.lr_at(T // 2) == pytest.approx(0.55 * PEAK)
    exponential = make_schedule("exponential", _optimizer(), T)
    assert exponential.lr_at(T) == pytest.approx(0.01 * PEAK)


def test_step_schedule_drops_at_milestones():
    curve = schedule_curve("step", PEAK, T)
    assert curve[99] == pytest.approx(PEAK)
    assert curve[100] == pytest.approx(0.1 * PEAK)
    assert curve[150] == pytest.approx(0.01 * PEAK)


def test_warmup_cosine_reaches_peak_then_decays():
    scheduler = make_schedule("warmup_cosine", _optimizer(), T, warmup=0.1)
    assert scheduler.lr_at(0) == pytest.approx(PEAK / 20)
    assert scheduler.lr_at(19) == pytest.approx(PEAK)
    assert scheduler.lr_at(20) == pytest.approx(PEAK)
    assert scheduler.lr_at(T) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["wsd", "wsd_linear"])
def test_wsd_warms_up_holds_and_cools_down(name):
    scheduler = make_schedule(name, _optimizer(), T)  # warmup 5%, decay over the last 20%
    assert scheduler.lr_at(9) == pytest.approx(PEAK)
    assert all(scheduler.lr_at(s) == pytest.approx(PEAK) for s in range(10, 160))
    assert scheduler.lr_at(159) > scheduler.lr_at(180) > scheduler.lr_at(T - 1)
    assert scheduler.lr_at(T) == pytest.approx(0.0)


def test_wsd_cooldown_shapes_differ():
    sqrt = make_schedule("wsd", _optimizer(), T)
    linear = make_schedule("wsd_linear", _optimizer(), T)
    middle = 180  # halfway through the cooldown
    assert linear.lr_at(middle) == pytest.approx(0.5 * PEAK)
    assert sqrt.lr_at(middle) == pytest.approx((1 - math.sqrt(0.5)) * PEAK)


def test_one_cycle_and_inverse_sqrt_shapes():
    one_cycle = make_schedule("one_cycle", _optimizer(), T)
    assert one_cycle.lr_at(0) == pytest.approx(PEAK / 25)
    assert one_cycle.lr_at(59) == pytest.approx(PEAK)
    assert one_cycle.lr_at(T) == pytest.approx(PEAK / 1e4)
    inverse = make_schedule("inverse_sqrt", _optimizer(), T)
    assert inverse.lr_at(9) == pytest.approx(PEAK)
    assert inverse.lr_at(39) == pytest.approx(PEAK * 0.5)


def test_plateau_lowers_the_lr_when_the_loss_stalls():
    optimizer = _optimizer()
    scheduler = make_schedule("plateau", optimizer, T)
    lr_at = lr_function(scheduler, optimizer)
    assert lr_at(0) == PEAK
    for _ in range(4):
        scheduler.step(1.0)
    assert lr_at(0) == pytest.approx(PEAK / 2)
    state = scheduler.state_dict()
    again = make_schedule("plateau", _optimizer(), T)
    again.load_state_dict(state)
    assert again.num_bad_epochs == scheduler.num_bad_epochs


def test_unknown_schedule_and_bad_steps():
    assert "plateau" in SCHEDULE_NAMES
    with pytest.raises(ConfigError, match="unknown schedule 'cosin'"):
        make_schedule("cosin", _optimizer(), T)
    with pytest.raises(ConfigError, match="total_steps"):
        make_schedule("cosine", _optimizer(), 0)


def test_default_warmup_is_the_schedules_own_or_none():
    assert default_warmup("wsd") == default_warmup("warmup_cosine") == 0.05
    assert default_warmup("one_cycle") == 0.3
    assert default_warmup("constant") is None and default_warmup("plateau") is None
    # the value reported is the one a schedule made without options uses
    curve = schedule_curve("wsd", 1.0, 100)
    assert curve[4] == 1.0 and curve[3] < 1.0  # 5 warmup steps of 100


def test_warmup_linear_warms_up_then_decays_linearly_to_zero():
    curve = schedule_curve("warmup_linear", 1.0, 100, warmup=0.1)
    assert curve[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert curve[10] == pytest.approx(1.0)
    steps = np.diff(curve[10:])
    assert np.allclose(steps, steps[0]) and steps[0] < 0  # a straight line down ...
    assert curve[-1] == pytest.approx(1 / 90)  # ... reaching 0 at step 100
