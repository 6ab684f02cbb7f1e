"""Rewards, by name. The default, `log_improvement`, is the instant reward.

- `log_improvement` (default): `r_t = log L_{t-1} - log L_t`. The rewards telescope:
  an episode's return is `log(L_0 / L_T)`, so maximising it is exactly minimising
  the final validation loss, while every interval gets its own credit.
- `neg_val_loss`: `r_t = -L_t`, dense; rewards low loss all along the run.
- `final`: 0 until the last interval, then `log(L_0 / L_T)`; sparse.

In all three a lower loss is a higher reward. The log rewards are defined for a loss
of exactly 0 (a memorised data set), as the features are (`env/features.py`): a drop
to 0 earns `+FEATURE_CLIP`, a rise from 0 `-FEATURE_CLIP`, 0 to 0 nothing; a negative
loss has no log and earns 0.

Divergence (a non-finite loss, or `L_t > divergence_factor * L_0`) ends the episode.
Its reward is what the rest of the episode would have earned had the loss jumped to
the cap `L_cap = divergence_factor * L_0` and stayed there, minus
`divergence_penalty`. So a diverged episode returns less than any episode that ran
to the end below the cap: for `log_improvement` its return is exactly
`-log(divergence_factor) - divergence_penalty`.
"""

from __future__ import annotations

import math

from lrpilot.env.features import log_ratio
from lrpilot.errors import ConfigError

REWARD_NAMES = ("log_improvement", "neg_val_loss", "final")


def log_improvement(before: float, after: float) -> float:
    """`log(before) - log(after)` for positive losses; at a loss of 0, the features'
    clipped limit (see the module docstring); 0 where a loss is negative."""
    if before > 0 and after > 0:
        return math.log(before) - math.log(after)
    value = -log_ratio(after, before)
    return 0.0 if math.isnan(value) else value


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
        return log_improvement(previous_loss, loss)
    if name == "neg_val_loss":
        return -loss
    if name == "final":
        return log_improvement(initial_loss, loss) if last else 0.0
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


def interval_reward(
    name: str,
    *,
    previous_loss: float,
    loss: float,
    initial_loss: float,
    interval: int,
    num_intervals: int,
    divergence_factor: float,
    divergence_penalty: float,
) -> tuple[float, bool]:
    """Reward of interval `interval` (1-based) and whether the run diverged in it.

    The one place that decides divergence and picks the reward, used by the
    environment and by the open-loop replay of a recorded LR trace.
    """
    diverged = not (loss <= divergence_factor * initial_loss)  # also true for NaN
    if diverged:
        reward = divergence_reward(
            name,
            previous_loss=previous_loss,
            initial_loss=initial_loss,
            divergence_factor=divergence_factor,
            divergence_penalty=divergence_penalty,
            remaining_intervals=num_intervals - interval + 1,
        )
        return reward, True
    reward = instant_reward(
        name,
        previous_loss=previous_loss,
        loss=loss,
        initial_loss=initial_loss,
        last=interval == num_intervals,
    )
    return reward, False
