"""Refusing a model that cannot fit in this machine's memory, before any allocation.

Training in float32 with Adam holds four numbers per parameter: the weight, its
gradient and Adam's two moments. A model whose parameters alone need more than the
machine's physical memory is refused with its parameter count and both sizes;
activations come on top, so a model that passes may still be too large.
"""

from __future__ import annotations

import os

from lrpilot.errors import ConfigError

TRAINING_BYTES_PER_PARAM = 16  # float32 weight, gradient and Adam's two moments


def machine_memory_bytes() -> int | None:
    """This machine's physical memory (`os.sysconf`, Linux and most Unixes); None where
    it cannot be read."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def require_fits_in_memory(num_params: int, what: str) -> None:
    """Raise `ConfigError` if training `num_params` parameters needs more than this
    machine's memory; `what` names the model (its sizes) in the message."""
    memory = machine_memory_bytes()
    needed = num_params * TRAINING_BYTES_PER_PARAM
    if memory is not None and needed > memory:
        raise ConfigError(
            f"{what} has {num_params:,} parameters: training it needs at least "
            f"{needed / 1e9:,.1f} GB (float32 weights, gradients and Adam's two moments), "
            f"but this machine has {memory / 1e9:,.1f} GB of memory"
        )
