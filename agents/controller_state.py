"""The checks a `PolicyController` makes of a saved state before it loads it (each
mismatch with the controller it is loaded into is a one-line `ConfigError`), and the
policy's own part of that state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrpilot.agents.rule_policy import RulePolicy
from lrpilot.errors import ConfigError


def check_saved_state(state_dict: Any, controller: Any, *, kind: str, this: str) -> None:
    """Refuse `state_dict` unless `controller` (a `PolicyController`) can continue it:
    every key of its state, the same steps, interval and number of param groups, and
    not saved during the LR sweep (whose snapshot a state does not hold). `kind` and
    `this` name the front end in errors ("PolicyScheduler", "scheduler")."""
    if not isinstance(state_dict, Mapping):
        raise ConfigError(f"not a {kind} state dict: got {type(state_dict).__name__}")
    missing = [key for key in controller.state_dict() if key not in state_dict]
    if missing:
        raise ConfigError(f"not a {kind} state dict: it lacks {', '.join(missing)}")
    for key in ("steps", "eval_every"):
        if state_dict[key] != getattr(controller, key):
            raise ConfigError(
                f"state dict has {key}={state_dict[key]!r}, this {this} "
                f"{getattr(controller, key)!r}"
            )
    groups = len(controller.optimizer.param_groups)
    if len(state_dict["base_lrs"]) != groups:
        raise ConfigError(
            f"state dict has {len(state_dict['base_lrs'])} param groups, the optimizer {groups}"
        )
    saved, expected = state_dict["policy_state"], policy_state(controller.policy)
    if (saved is None) != (expected is None) or (
        expected is not None
        and (not isinstance(saved, Mapping) or saved.get("rule") != expected["rule"])
    ):
        raise ConfigError(
            f"the state dict was saved with {_policy_kind(saved)}, this {this} runs "
            f"{_policy_kind(expected)}: resume with the same policy"
        )
    if state_dict["sweeping"]:
        raise ConfigError(
            f"the state was saved during the policy's LR sweep, which a resume cannot "
            f"continue; resume from a checkpoint after step {controller.sweep_steps}"
        )


def policy_state(policy: Any) -> dict[str, Any] | None:
    """A fixed rule's own state (`RulePolicy.state_dict()`: its name, whether it still
    rises, its best gain), None for any other policy (a learned one keeps none)."""
    return policy.state_dict() if isinstance(policy, RulePolicy) else None


def _policy_kind(state: Mapping[str, Any] | None) -> str:
    return "a learned policy" if state is None else f"the rule {state.get('rule')!r}"


def load_policy_state(policy: Any, state: Any) -> None:
    """Give a fixed rule back its `policy_state` (checked by `check_saved_state`)."""
    if isinstance(policy, RulePolicy):
        policy.load_state_dict(state)
