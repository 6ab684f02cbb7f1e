"""What a workload hands lrpilot for one seeded run (`RunParts`), and its checks.

`lrpilot.lm.run.StepRun` trains the parts; a user's own workload builds them in a
function `make_run(seed) -> RunParts` (`--workload FILE.py:make_run`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from lrpilot.errors import ConfigError


@dataclass
class RunParts:
    """What a workload hands lrpilot for one seeded run.

    A user's own workload is a function `make_run(seed) -> RunParts` in a Python file
    (`--workload FILE.py:make_run`); lrpilot's built-in families build theirs the same
    way. The callables close over the model; lrpilot calls the evaluations under
    `torch.inference_mode()` with the model in `eval()` mode, and sets it back to
    `train()`.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer  # its param groups' LRs set the groups' ratios
    batches: Iterable[Any]  # training batches, one per optimizer step
    loss: Callable[[Any], torch.Tensor]  # loss(batch): the scalar loss to minimise
    validation_loss: Callable[[], float]  # what the controller observes
    test_loss: Callable[[], float]  # the score, on data the controller never sees
    test_accuracy: Callable[[], float] | None = None  # classification only
    test_items: int = 0  # predicted tokens (or examples) in the test loss, if known
    items_in: Callable[[Any], int] | None = None  # tokens in a batch; default: its length
    grad_clip: float | None = None  # clip the gradient norm to this (None: measure only)
    extra: dict[str, Any] = field(default_factory=dict)  # anything the workload keeps


def batch_length(batch: Any) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        return batch_length(next(iter(batch.values()))) if batch else 0
    if isinstance(batch, list | tuple) and batch:
        return batch_length(batch[0])
    return 1


def described(value: Any, width: int = 60) -> str:
    """`value`'s type and its repr on one line, cut to `width` characters."""
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:width]}{'...' if len(text) > width else ''}"


def check_run_parts(parts: Any, where: str) -> RunParts:
    """`parts` if it is a usable `RunParts`, else a `ConfigError` naming `where`."""
    if not isinstance(parts, RunParts):
        raise ConfigError(
            f"{where} must return lrpilot.RunParts, got {type(parts).__name__} "
            f"(see examples/custom_workload.py)"
        )
    if not isinstance(parts.model, torch.nn.Module):
        raise ConfigError(f"{where}: RunParts.model must be a torch.nn.Module")
    if not isinstance(parts.optimizer, torch.optim.Optimizer):
        raise ConfigError(f"{where}: RunParts.optimizer must be a torch.optim.Optimizer")
    if not parts.optimizer.param_groups:
        raise ConfigError(f"{where}: RunParts.optimizer has no parameter groups")
    for name in ("loss", "validation_loss", "test_loss"):
        if not callable(getattr(parts, name)):
            raise ConfigError(f"{where}: RunParts.{name} must be callable")
    if not isinstance(parts.batches, Iterable):
        raise ConfigError(f"{where}: RunParts.batches must be an iterable of batches")
    return parts
