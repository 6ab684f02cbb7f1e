"""A fixed rule in a user's loop: `load_policy("priorhold")` sets the LRs the suites'
runs of that rule set, and a resumed run goes on as it would have."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import drive_run_with_scheduler, make_policy

from lrpilot.agents import load_policy
from lrpilot.agents.controllers import RANGE_RULES, RangeStopController
from lrpilot.agents.policy_file import Policy, resolve_policy_path
from lrpilot.agents.rollout import run_episode
from lrpilot.agents.rule_policy import DEFAULT_RULE, RULE_NAMES, RulePolicy
from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.cli import main
from lrpilot.env import EnvConfig, LRControlEnv
from lrpilot.errors import ConfigError
from lrpilot.experiments.compare_config import CompareConfig, Protocol
from lrpilot.experiments.suite import load_suite
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
    with pytest.raises(ConfigError, match="'priorhold' is the fixed rule 'priorhold', not a "):
        resolve_policy_path("priorhold")
    with pytest.raises(ConfigError, match="'default' is the fixed rule 'priorhold', not a "):
        resolve_policy_path("default")
    # A file or folder of that name is what the user means.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "priorhold").mkdir()
    with pytest.raises(ConfigError, match="policy file not found: 'priorhold/policy"):
        load_policy("priorhold")
    policy = RulePolicy("priorstop")
    with pytest.raises(ConfigError, match="not a state of the rule 'priorstop'"):
        policy.load_state_dict(RulePolicy("priorhold").state_dict())
    for state in ({"rising": True}, {"rising": 1, "best_gain": 0.1, "rises": 2}):
        with pytest.raises(ConfigError, match="not a RangeStopController state"):
            policy.load_state_dict({"rule": "priorstop"} | state)


def test_the_default_controller_is_the_rule_priorhold_unless_a_path_is_named_so(
    tmp_path, monkeypatch
):
    policy = load_policy("default")
    assert isinstance(policy, RulePolicy) and policy.name == DEFAULT_RULE == "priorhold"
    run = RunSettings("tiny", steps=20, eval_every=10, batch_size=8)
    config = CompareConfig(run=run, protocol=Protocol(controllers=()), policy="default")
    assert config.policy is None and config.protocol.controllers == ("priorhold",)
    monkeypatch.chdir(tmp_path)
    make_policy(seed=3).save(tmp_path / "default")
    assert isinstance(load_policy("default"), Policy)
    assert CompareConfig(run=run, policy="default").policy == "default"


def test_a_refused_state_changes_nothing():
    def scheduler(policy):
        optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.01)
        return PolicyScheduler(optimizer, policy, 40, 10, initial_val_loss=1.0)

    rule = scheduler(load_policy("rangestop"))
    before = json.dumps(rule.state_dict())
    broken = rule.state_dict() | {"policy_state": {"rule": "rangestop", "rising": "yes"}}
    for state in (scheduler(make_policy(seed=3)).state_dict(), broken):
        with pytest.raises(ConfigError):
            rule.load_state_dict(state)
        assert json.dumps(rule.state_dict()) == before


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


def test_compare_and_benchmark_run_a_rule_named_as_the_policy_as_that_controller():
    run = RunSettings("tiny", steps=20, eval_every=10, batch_size=8)
    config = CompareConfig(run=run, protocol=Protocol(controllers=("plateau",)), policy="priorhold")
    assert config.policy is None and config.protocol.controllers == ("plateau", "priorhold")
    config = CompareConfig(
        run=run, protocol=Protocol(controllers=("priorhold",)), policy="priorhold"
    )
    assert config.protocol.controllers == ("priorhold",)  # once
    suite = load_suite("validation")
    config = suite.config(suite.entries[0], "rangestop", 1, "cpu")
    assert config.policy is None and "rangestop" in config.protocol.controllers


def test_the_cli_help_of_policy_names_every_rule():
    # lrpilot/commands.py spells the rules out (it imports no torch): they must not drift.
    from lrpilot.commands import BenchmarkOptions, ReplayOptions

    for options in (ReplayOptions, BenchmarkOptions):
        (policy,) = (f for f in dataclasses.fields(options) if f.name == "policy")
        assert all(name in policy.metadata["help"] for name in RULE_NAMES), options.__name__
