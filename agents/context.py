"""The run's sizes in a training loop: the `RunContext` the in-loop controller shows a
policy whose feature set reads them (`lrpilot.env.features.reads_context`).

The controller measures the parameters and their mean fan-in from the optimizer, as
`StepRun.context()` does in the env. The tokens per step it cannot see: the loop
gives them (`tokens_per_step=`: the tokens, or for a model whose batch is not a
sequence of tokens the examples, that one optimizer step trains on, over every
micro-batch and process), or a framework callback counts them from the first batch
(`batch_items`). A policy that reads them and does not get them is a one-line
`ConfigError`, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lrpilot.env.features import reads_context
from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.run_context import RunContext


def check_tokens_per_step(value: Any) -> int | None:
    """`value` if it is None or a whole number >= 1, else a one-line `ConfigError`."""
    if value is None:
        return None
    require_positive_int("tokens_per_step", value)
    return int(value)


def loop_context(
    feature_version: str, parameters: Iterable[torch.Tensor], tokens_per_step: int | None
) -> RunContext | None:
    """The sizes a policy of `feature_version` sees (None when its set reads none), or a
    one-line `ConfigError` when the tokens per step are not known."""
    if not reads_context(feature_version):
        return None
    if tokens_per_step is None:
        raise ConfigError(
            f"this policy reads the run's sizes (feature set {feature_version!r}): pass "
            f"tokens_per_step=, the tokens (or examples) one optimizer step trains on"
        )
    return RunContext.measure(parameters, tokens_per_step=tokens_per_step)


def batch_items(batch: Any) -> int:
    """The tokens of one (micro-)batch: the `input_ids` of a mapping, else its first
    tensor (the first element of a tuple or list, the first value of a mapping); an
    integer tensor of two or more dimensions is token sequences and counts its
    elements, any other counts its examples (its first dimension)."""
    if isinstance(batch, Mapping):
        if not batch:
            raise ConfigError("cannot count the tokens of an empty batch: pass tokens_per_step=")
        first = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
        return batch_items(first)
    if isinstance(batch, list | tuple) and batch:
        return batch_items(batch[0])
    if not isinstance(batch, torch.Tensor) or batch.dim() == 0:
        raise ConfigError(
            f"cannot count the tokens of a batch of {type(batch).__name__}: pass tokens_per_step="
        )
    sequences = batch.dim() >= 2 and not batch.is_floating_point() and not batch.is_complex()
    return batch.numel() if sequences else int(batch.shape[0])
