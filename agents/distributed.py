"""Rank 0 decides: the two `torch.distributed` calls `PolicyController` makes. Without an
initialised process group (or with one process) each is what a single process needs."""

from __future__ import annotations

from typing import Any

import torch


def rank() -> int:
    """This process's rank under an initialised `torch.distributed`; 0 otherwise."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    return 0


def broadcast_from_rank_zero(value: Any) -> Any:
    """`value` as rank 0 has it, on every rank (itself when not distributed). With NCCL,
    each process's CUDA device must be set first, as `broadcast_object_list` needs."""
    distributed = torch.distributed
    if not (
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    ):
        return value
    box = [value]
    distributed.broadcast_object_list(box, src=0)
    return box[0]
