"""The run's sizes in a training loop: the `RunContext` the in-loop controller shows a
policy whose feature set reads them (`lrpilot.env.features.reads_context`), and from
which a policy whose action rule has a prior starts (`ActionRule.prior_lr`).

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


def needs_context(policy: Any) -> bool:
    """Whether `policy` needs the run's sizes: its feature set reads them, or its action
    rule starts from a prior of them (`ActionRule.prior_lr`)."""
    rule = getattr(policy, "action", None)  # a duck-typed policy may have no rule
    return reads_context(policy.feature_version) or bool(rule is not None and rule.prior_lr)


def loop_context(
    policy: Any, parameters: Iterable[torch.Tensor], tokens_per_step: int | None
) -> RunContext | None:
    """The sizes `policy` needs (None when it needs none, `needs_context`), or a
    one-line `ConfigError` when the tokens per step are not known."""
    if not needs_context(policy):
        return None
    if tokens_per_step is None:
        why = (
            f"feature set {policy.feature_version!r}"
            if reads_context(policy.feature_version)
            else "its action rule starts from a prior of them"
        )
        raise ConfigError(
            f"this policy reads the run's sizes ({why}): pass tokens_per_step=, the tokens "
            f"(or examples) one optimizer step trains on"
        )
    return RunContext.measure(parameters, tokens_per_step=tokens_per_step)


def loop_start_lr(
    policy: Any,
    lr: float,
    parameters: Iterable[torch.Tensor],
    tokens_per_step: int | None,
    steps: int,
) -> float:
    """The policy's LR before its first action in a loop that starts it at `lr`: the
    prior of the run's sizes where its action rule has one (`ActionRule.start_lr`)."""
    rule = getattr(policy, "action", None)
    if rule is None or not rule.prior_lr:
        return lr
    return rule.start_lr(lr, loop_context(policy, parameters, tokens_per_step), steps)


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
