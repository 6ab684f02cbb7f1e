"""The checks of what a training loop hands the policy's controller: the policy, the
optimizer, the step budget and interval, positive numbers. Each refuses bad input with
a one-line `ConfigError`."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

from lrpilot.errors import ConfigError, require_positive_int

_POLICY_ATTRIBUTES = (
    "act",
    "next_lr",
    "applied_lr",
    "lr_min",
    "lr_max",
    "masked_features",
    "feature_version",
)


def check_policy(policy: Any) -> Any:
    """`policy` if it can drive a run (an lrpilot `Policy`, or an object with the same
    methods), else a one-line `ConfigError`."""
    missing = [name for name in _POLICY_ATTRIBUTES if not hasattr(policy, name)]
    if missing:
        raise ConfigError(
            f"policy must be an lrpilot Policy (load_policy(path)), got "
            f"{type(policy).__name__} without {', '.join(missing)}"
        )
    parameters = inspect.signature(policy.next_lr).parameters
    if "interval" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        raise ConfigError(
            f"policy's next_lr must take the keyword interval (the interval it sets), as "
            f"Policy.next_lr does; {type(policy).__name__}.next_lr does not"
        )
    return policy


def check_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """`optimizer` if it is a torch optimizer with parameters, else a `ConfigError`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
    if not optimizer.param_groups:
        raise ConfigError(f"optimizer {type(optimizer).__name__} has no parameter groups")
    if not any(group["params"] for group in optimizer.param_groups):
        raise ConfigError(f"optimizer {type(optimizer).__name__} has no parameters")
    return optimizer


def check_intervals(steps: Any, eval_every: Any) -> None:
    """A `ConfigError` unless both are positive ints and the interval fits the budget."""
    require_positive_int("steps", steps)
    require_positive_int("eval_every", eval_every)
    if eval_every > steps:
        raise ConfigError(f"eval_every ({eval_every}) is larger than steps ({steps})")


def is_number(value: Any) -> bool:
    """Whether `value` is a real number: an int or a float (numpy's too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_scalar(value: Any) -> bool:
    """A real number, or a tensor of one element."""
    return is_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)


def number(name: str, value: Any) -> float:
    """`value` as a float if it is a number or a one-element tensor (not a string, a
    bool or None), else a `ConfigError`."""
    if not _is_scalar(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def positive_float(name: str, value: Any) -> float:
    """`value` as a float if it is a positive finite number, else a `ConfigError`."""
    if not _is_scalar(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if not (float(value) > 0 and math.isfinite(float(value))):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
