"""The Ray backend: environments and comparison runs on a Ray cluster (extra `lrpilot[ray]`).

Without an address, a local Ray instance starts with the command and stops with it;
with one (`ray start --head` prints it), the command joins that cluster and leaves it
running. Every worker (an environment actor, or one comparison run as a task) asks
for `cpus_per_worker` CPUs and `gpus_per_worker` GPUs, so Ray places it where those
are free. The core install never imports Ray: only this backend does.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from lrpilot.errors import ConfigError

BACKENDS = ("process", "ray")
MAX_RETRIES = 3  # a run or actor whose worker process dies is retried this many times


def import_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'lrpilot[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayBackend:
    """Where and with what resources Ray workers run."""

    address: str | None = None  # an existing cluster ("auto", "HOST:6379"); None: local
    num_cpus: int | None = None  # CPUs of a local instance (None: all of this machine's)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if not (self.cpus_per_worker > 0 and math.isfinite(self.cpus_per_worker)):
            raise ConfigError(f"cpus_per_worker must be positive, got {self.cpus_per_worker!r}")
        if not (self.gpus_per_worker >= 0 and math.isfinite(self.gpus_per_worker)):
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            raise ConfigError(f"num_cpus must be a positive integer, got {self.num_cpus!r}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("num_cpus sizes a local Ray instance; a cluster has its own")

    def options(self) -> dict:
        """Ray resource options of one worker."""
        return {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}


@contextlib.contextmanager
def ray_session(backend: RayBackend | None) -> Iterator[None]:
    """Ray initialised for the duration of the block: a local instance that stops after
    it, or the cluster at `backend.address`, left running. An already initialised Ray
    (a user's own session) is used as it is; with no backend (local processes), nothing
    happens."""
    if backend is None:
        yield
        return
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=backend.address,
            num_cpus=backend.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = backend.address or "a local instance"
        raise ConfigError(f"could not start or reach Ray at {where!r}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()
