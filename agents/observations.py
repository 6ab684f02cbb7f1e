"""The in-loop controller's observations: the `ObservationBuilder` of a policy's
feature set, made as `LRControlEnv.reset` makes it, and the builder's saved state.

The builder gets the run's sizes when the set reads them (`lrpilot.agents.context`)
and the sweep's features after a rolled-back sweep (`lrpilot.agents.sweep`). Its state
is plain data (JSON-safe): the fields that change over a run; the sizes are measured
again from the optimizer and the tokens per step when a state is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lrpilot.agents.context import loop_context
from lrpilot.env.features import ObservationBuilder, reads_context
from lrpilot.errors import ConfigError

BUILDER_FIELDS = (
    "start_lr",
    "initial_val_loss",
    "steps",
    "previous_val_loss",
    "best_val_loss",
    "previous_grad_norm",
    "past",  # the last evaluations' feature vectors, for a policy with a history
    "sweep_values",  # the sweep's features, in every observation
)


def policy_observations(
    policy: Any,
    steps: int,
    start_lr: float,
    initial_val_loss: float,
    parameters: Iterable[torch.Tensor],
    tokens_per_step: int | None,
    sweep: dict[str, float] | None = None,
) -> ObservationBuilder:
    """The builder of `policy`'s feature set, masks and history for a run of `steps`."""
    version = policy.feature_version
    return ObservationBuilder(
        start_lr,
        initial_val_loss,
        steps,
        policy.masked_features,
        history=getattr(policy, "history", 1),
        version=version,
        context=loop_context(policy, parameters, tokens_per_step)
        if reads_context(version)
        else None,
        sweep=sweep,
    )


def observation_state(builder: ObservationBuilder | None) -> dict[str, Any] | None:
    """The builder's state (None before the first observation)."""
    return {key: getattr(builder, key) for key in BUILDER_FIELDS} if builder else None


def load_observation_state(builder: ObservationBuilder, state: Mapping[str, Any]) -> None:
    """Put `state` (from `observation_state`) into `builder`, made for the same policy."""
    missing = [key for key in BUILDER_FIELDS if key not in state]
    if missing:
        raise ConfigError(f"the saved state's features lack {', '.join(missing)}")
    if len(state["past"]) != builder.history - 1:
        raise ConfigError(
            f"the saved state holds {len(state['past'])} past evaluations; this policy "
            f"observes {builder.history} at a time (is it the policy the state was saved with?)"
        )
    for key in BUILDER_FIELDS:
        value = state[key]
        if key == "past":
            value = [list(vector) for vector in value]
        elif key == "sweep_values":
            value = {name: float(v) for name, v in value.items()}
        setattr(builder, key, value)
