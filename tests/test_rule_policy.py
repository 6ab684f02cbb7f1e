"""A fixed rule in a user's loop: `load_policy("priorhold")` sets the LRs the suites'
runs of that rule set, and a resumed run goes on as it would have."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import drive_run_with_scheduler

from lrpilot.agents import load_policy
from lrpilot.agents.controllers import RANGE_RULES, RangeStopController
from lrpilot.agents.policy_file import resolve_policy_path
from lrpilot.agents.rollout import run_episode
from lrpilot.agents.rule_policy import RULE_NAMES, RulePolicy
from lrpilot.cli import main
from lrpilot.env import EnvConfig, LRControlEnv
from lrpilot.errors import ConfigError
from lrpilot.settings import RunSettings

TASK = RunSettings("tiny", steps=60, eval_every=10, batch_size=8).task(5, 3e-3)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_a_rule_in_a_loop_sets_the_lrs_of_its_runs_in_the_suites(name):
    policy = load_policy(name)
    assert isinstance(policy, RulePolicy) and policy.name == name
    # The env driven as `compare` drives it (experiments/run_cache.py).
    rule, settings = RANGE_RULES[name]
    env = LRControlEnv(EnvConfig(action=rule))
    env_rows = run_episode(env, RangeStopController(rule=rule, **settings), TASK).rows[1:]
    env_lrs = [(row["lr"], row["lr_mean"]) for row in env_rows]
    scheduler, lrs, _ = drive_run_with_scheduler(policy, TASK)
    chunks = np.split(np.array(lrs), np.cumsum(TASK.intervals)[:-1])
    np.testing.assert_allclose([(c[-1], c.mean()) for c in chunks], env_lrs, rtol=1e-12)
    # The range test's path: the first interval at range_start x its start (the prior,
    # or the start LR), rises of x2.5 while it rises, then one LR held into the cooldown.
    start = rule.start_lr(TASK.start_lr, env.run.context(), TASK.steps)
    assert chunks[0][0] == pytest.approx(rule.range_start * start, rel=1e-12)
    held = [c[0] for c in chunks[:-2]]  # before the 20% cooldown (the last 12 steps)
    ratios = np.round(np.array(held[1:]) / np.array(held[:-1]), 9)
    assert set(ratios) <= {1.0, rule.rise_factor}
    assert list(ratios) == sorted(ratios, reverse=True)  # rises, then holds
    if name == "priorhold":  # at most one rise
        assert sum(ratios == rule.rise_factor) <= 1
    assert scheduler.controller.state_dict()["policy_state"]["rising"] is False


def test_rule_names_and_bad_rule_states_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no LR rule named 'priorhalt'; the rules are "):
        RulePolicy("priorhalt")
    # As a policy file (--policy in the CLI), a rule's name says what to use instead.
    with pytest.raises(ConfigError, match="'priorhold' is a fixed rule, not a policy file"):
        resolve_policy_path("priorhold")
    # A file or folder of that name is what the user means.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "priorhold").mkdir()
    with pytest.raises(ConfigError, match="policy file not found: 'priorhold/policy"):
        load_policy("priorhold")
    policy = RulePolicy("priorstop")
    for state in (None, {"rising": True}, {"rising": 1, "best_gain": 0.1, "rises": 2}):
        with pytest.raises(ConfigError, match="not a RangeStopController state"):
            policy.load_state_dict(state)


def test_lrpilot_replay_runs_a_rule_by_its_name(tmp_path):
    short = ["--steps", "20", "--eval-every", "10", "--batch-size", "8", "--quiet"]
    args = ["replay", "--policy", "priorhold", "--seeds", "1", "--start-lrs", "3e-3", *short]
    assert main([*args, "--out", str(tmp_path)]) == 0
    trace = pd.read_csv(tmp_path / "seed_1" / "trace.csv")
    # the first interval (steps 1-10; the cooldown is steps 17-20) at 0.4x the prior
    task = RunSettings("tiny", steps=20, eval_every=10, batch_size=8).task(1, 3e-3)
    rule = RANGE_RULES["priorhold"][0]
    prior = rule.start_lr(3e-3, task.make_run("cpu").context(), 20)
    assert trace["lr"].iloc[1] == pytest.approx(0.4 * prior, rel=1e-9)
