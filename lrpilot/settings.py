"""The settings every command shares: which run (`RunSettings`) and where workers run
(`BackendSettings`). Torch-free: the CLI builds its flags from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrpilot.config import check_fields, non_negative, one_of, positive, setting
from lrpilot.errors import ConfigError

if TYPE_CHECKING:
    from lrpilot.env.tasks import Task
    from lrpilot.lm.workloads import Workload
    from lrpilot.ray_backend import RayBackend


def device_name(value: str) -> str | None:
    """cpu, cuda, cuda:N or auto."""
    if re.fullmatch(r"cpu|auto|cuda(:\d+)?", value):
        return None
    return "must be cpu, cuda, cuda:N or auto"


@dataclass(frozen=True)
class RunSettings:
    """Which run: a workload and what to change in it. The same settings in the CLI,
    `compare`, suite entries, training evaluation and the task space."""

    workload: str = setting(
        "tiny",
        help="a built-in workload (tiny, small, base, classify), a workload .toml file, or "
        "FILE.py:FUNCTION (a function of the seed returning lrpilot.RunParts)",
    )
    corpus: str | None = setting(
        None,
        help="replace the workload's corpus: pydoc, pystdlib, pystdlib:PACKAGE, or a file or "
        "folder path",
    )
    batch_size: int | None = setting(None, help="replace the workload's batch size", check=positive)
    steps: int | None = setting(
        None, help="optimizer steps per run (default: the workload's)", check=positive
    )
    eval_every: int | None = setting(
        None, help="steps per evaluation interval (default: the workload's)", check=positive
    )
    device: str = setting(
        "auto", help="cpu, cuda, cuda:N, or auto (CUDA when present)", check=device_name
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def load_workload(self, **changes) -> Workload:
        """The workload with this run's corpus and batch size (and `changes`, settings of
        the workload such as `n_embd`) in place of its own."""
        from lrpilot.lm.workloads import load_workload, with_overrides

        workload = with_overrides(
            load_workload(self.workload), corpus=self.corpus, batch_size=self.batch_size
        )
        return with_overrides(workload, **changes)

    def task(self, seed: int, start_lr: float, *, lr_scale: float = 1.0, **changes) -> Task:
        """One seeded run of these settings from `start_lr` (a schedule's peak, or a
        controller's start), its budget the workload's unless `steps`/`eval_every` say."""
        from lrpilot.env.tasks import Task

        workload = self.load_workload(**changes)
        steps = self.steps if self.steps is not None else workload.steps
        eval_every = self.eval_every if self.eval_every is not None else workload.eval_every
        return Task(workload, seed, steps, eval_every, start_lr, lr_scale)


@dataclass(frozen=True)
class BackendSettings:
    """Where the workers of `train`, `compare` and `benchmark` run."""

    backend: str = setting(
        "process",
        help="process: worker processes on this machine; ray: Ray actors and tasks (a local "
        "Ray instance, or the cluster at --address; extra lrpilot[ray])",
        check=one_of(("process", "ray")),
    )
    address: str | None = setting(None, help="Ray cluster to join (`ray start --head` prints it)")
    cpus_per_worker: float = setting(1.0, help="Ray: CPUs each worker reserves", check=positive)
    gpus_per_worker: float = setting(
        0.0,
        help="Ray: GPUs each worker reserves",
        check=non_negative,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.backend == "process" and self.address is not None:
            raise ConfigError(f"--address needs --backend ray, got address {self.address!r}")

    def make(self) -> RayBackend | None:
        """The Ray backend these settings ask for (Ray checked now, before any work), or
        None for local processes."""
        if self.backend == "process":
            return None
        from lrpilot.ray_backend import RayBackend, import_ray

        import_ray()
        return RayBackend(
            address=self.address,
            cpus_per_worker=self.cpus_per_worker,
            gpus_per_worker=self.gpus_per_worker,
        )
