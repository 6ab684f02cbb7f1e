"""Action spaces: multiplicative LR changes, discrete or continuous.

- `discrete` (default): `Discrete(len(factors))`; action `i` multiplies the LR by
  `factors[i]` (by default x0.5, x0.8, x1, x1.25, x2).
- `continuous`: `Box([-1], [1])`; action `a` multiplies the LR by `2**a`.

The new LR is clipped to `[lr_min, lr_max]`.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium import spaces

from lrpilot.errors import ConfigError

ACTION_MODES = ("discrete", "continuous")
DEFAULT_FACTORS: tuple[float, ...] = (0.5, 0.8, 1.0, 1.25, 2.0)


def make_action_space(mode: str, factors: tuple[float, ...]) -> spaces.Space:
    if mode == "discrete":
        return spaces.Discrete(len(factors))
    if mode == "continuous":
        return spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
    raise ConfigError(f"unknown action mode {mode!r}; choose from {', '.join(ACTION_MODES)}")


def lr_factor(mode: str, factors: tuple[float, ...], action) -> float:
    """The multiplicative LR change an action asks for."""
    if mode == "discrete":
        index = int(np.asarray(action).reshape(()))
        if not 0 <= index < len(factors):
            raise ValueError(f"discrete action must be in [0, {len(factors)}), got {index}")
        return float(factors[index])
    exponent = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return float(2.0**exponent) if math.isfinite(exponent) else 1.0
