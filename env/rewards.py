"""Rewards, by name. The default, `log_improvement`, is the instant reward.

- `log_improvement` (default): `r_t = log L_{t-1} - log L_t`. The rewards telescope:
  an episode's return is `log(L_0 / L_T)`, so maximising it is exactly minimising
  the final validation loss, while every interval gets its own credit.
- `neg_val_loss`: `r_t = -L_t`, dense; rewards low loss all along the run.
- `final`: 0 until the last interval, then `log(L_0 / L_T)`; sparse.

In all three a lower loss is a higher reward.

Divergence (a non-finite loss, or `L_t > divergence_factor * L_0`) ends the episode.
Its reward is what the rest of the episode would have earned had the loss jumped to
the cap `L_cap = divergence_factor * L_0` and stayed there, minus
`divergence_penalty`. So a diverged episode returns less than any episode that ran
to the end below the cap: for `log_improvement` its return is exactly
`-log(divergence_factor) - divergence_penalty`.
"""

from __future__ import annotations

import math

from lrpilot.errors import ConfigError

REWARD_NAMES = ("log_improvement", "neg_val_loss", "final")


def check_reward_name(name: str) -> str:
    if name not in REWARD_NAMES:
        raise ConfigError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")
    return name


def instant_reward(
    name: str,
    *,
    previous_loss: float,
    loss: float,
    initial_loss: float,
    last: bool,
) -> float:
    """Reward for an interval that took the validation loss from `previous_loss` to `loss`."""
    if name == "log_improvement":
        return math.log(previous_loss) - math.log(loss)
    if name == "neg_val_loss":
        return -loss
    if name == "final":
        return math.log(initial_loss) - math.log(loss) if last else 0.0
    raise ConfigError(f"unknown reward {name!r}; choose from {', '.join(REWARD_NAMES)}")


def divergence_reward(
    name: str,
    *,
    previous_loss: float,
    initial_loss: float,
    divergence_factor: float,
    divergence_penalty: float,
    remaining_intervals: int,
) -> float:
    """Reward of the interval in which the run diverged (see the module docstring).

    `remaining_intervals` counts this interval and those the run would still have had.
    """
    cap = divergence_factor * initial_loss
    capped = instant_reward(
        name, previous_loss=previous_loss, loss=cap, initial_loss=initial_loss, last=True
    )
    if name == "neg_val_loss":
        capped *= remaining_intervals  # -L_cap for every interval left
    return capped - divergence_penalty
