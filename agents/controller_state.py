"""The checks a `PolicyController` makes of a saved state before it loads it (each
mismatch with the controller it is loaded into is a one-line `ConfigError`), and the
policy's own part of that state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    if state_dict["sweeping"]:
        raise ConfigError(
            f"the state was saved during the policy's LR sweep, which a resume cannot "
            f"continue; resume from a checkpoint after step {controller.sweep_steps}"
        )


def policy_state(policy: Any) -> Any:
    """The policy's own state (a fixed rule's, `RulePolicy`), None for a stateless one
    (a learned `Policy`)."""
    return policy.state_dict() if hasattr(policy, "state_dict") else None


def load_policy_state(policy: Any, state: Any) -> None:
    """Give `policy` back its `policy_state`; a state of another kind of policy is a
    one-line `ConfigError`."""
    if (state is None) != (policy_state(policy) is None):
        raise ConfigError(
            "the state dict was saved with a policy of another kind (a fixed rule keeps a "
            "state, a learned policy none): resume with the same policy"
        )
    if state is not None:
        policy.load_state_dict(state)
