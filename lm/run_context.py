"""`RunContext`: the sizes of a run that scaling-law fits of the optimal LR depend on.

A run measures them itself (`StepRun.context()`), and so does a training loop's
controller (from its optimizer's parameters), the same way: `RunContext.measure`.

    context = RunContext.measure(optimizer_parameters, tokens_per_step=8 * 64)
    context.params, context.mean_fan_in, context.tokens_per_step

- `params`: the parameters the optimizer trains (each tensor once), summed `numel`;
- `mean_fan_in`: the mean, over the weight matrices (the parameters of two or more
  dimensions), of the product of `shape[1:]`: a `Linear`'s input width, a convolution's
  input channels times its kernel size (an embedding's width);
- `tokens_per_step`: the items one optimizer step trains on, as the run counts them
  (`RunParts.items_in`): the input tokens of a language model's batch, the examples of
  a classifier's.

The step budget, the fourth such size, is the task's, not the run's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lrpilot.errors import ConfigError


@dataclass(frozen=True)
class RunContext:
    """The sizes of a run, constant over it (see the module docstring)."""

    params: int
    mean_fan_in: float
    tokens_per_step: int

    def __post_init__(self) -> None:
        for name in ("params", "tokens_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        fan_in = self.mean_fan_in
        if not isinstance(fan_in, int | float) or not (math.isfinite(fan_in) and fan_in >= 1):
            raise ConfigError(f"mean_fan_in must be a finite number >= 1, got {fan_in!r}")

    @classmethod
    def measure(cls, parameters: Iterable[torch.Tensor], tokens_per_step: int) -> RunContext:
        """The context of a run that trains `parameters` on `tokens_per_step` items per
        step; a `ConfigError` if none of the parameters is a weight matrix."""
        unique = list({id(p): p for p in parameters}.values())
        matrices = [p for p in unique if p.dim() >= 2]
        if not matrices:
            shapes = ", ".join(str(tuple(p.shape)) for p in unique[:4])
            raise ConfigError(
                f"the run's context needs a weight matrix (a parameter of 2 or more "
                f"dimensions) for the mean fan-in; the optimizer trains only {shapes}"
            )
        fan_ins = [math.prod(p.shape[1:]) for p in matrices]
        return cls(
            params=sum(p.numel() for p in unique),
            mean_fan_in=sum(fan_ins) / len(fan_ins),
            tokens_per_step=tokens_per_step,
        )
