"""The runs of a comparison: what determines each one (`RunSpec`), how a worker computes
it (`execute`), and the folder that caches finished runs (`RunCache`).

Every run is cached in `DIR/runs/<key>/` under a hash of everything that determines
its numbers, written atomically (`trace.csv`, then `run.json`, which marks it done); a
comparison that is killed and started again recomputes only unfinished runs. Runs go
in parallel over `jobs` processes, each with one torch thread, or over Ray tasks, so
results do not depend on either; the processes die with the comparison's own
(`lrpilot.processes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from lrpilot.agents.controllers import (
    RANGE_RULES,
    PlateauController,
    RandomController,
    RangeStopController,
    SweepValleyController,
)
from lrpilot.agents.policy_file import policy_from_bytes
from lrpilot.env.lr_env import EnvConfig
from lrpilot.env.tasks import Task
from lrpilot.experiments.replay import REPLAY_COLUMNS, policy_env_config, run_controller
from lrpilot.experiments.runs import RunConfig, run_schedule, train_intervals
from lrpilot.files import atomic_write_json, atomic_write_text, json_text
from lrpilot.lm.optimizers import use_tuning_free
from lrpilot.lm.trace import DIVERGENCE_FACTOR
from lrpilot.lm.workloads import workload_from_dict
from lrpilot.processes import forkserver_context, init_worker
from lrpilot.ray_backend import MAX_RETRIES, RayBackend, import_ray

CACHE_VERSION = 3  # bump when a change would alter the numbers of a cached run
RUNS_DIR = "runs"
KEYED_START = 1e-3  # the start LR in the key of a run that does not read it


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison: everything that determines its numbers."""

    kind: str  # "schedule", "policy", "controller" or "tuningfree"
    method: str  # the schedule's name, "policy", the controller's or the optimizer's name
    lr: float  # peak LR (schedules), start LR (policy, controllers), nominal LR (tuning-free)
    seed: int
    workload: dict  # every setting of the workload (`Workload.to_dict()`)
    steps: int
    eval_every: int
    device: str
    data_sha256: str = ""  # the workload's data (or code) digest: an edit is a new run
    # what sets the LR besides the method's name: the policy file's digest, or a rule's
    # settings' (`rule_digest`); a new one is a new run
    policy_sha256: str = ""
    warmup: float | None = None  # a schedule's warmup fraction; None: it has none
    # False: the run does not read its start LR (its rule starts from the LR prior), so
    # one run, keyed as the run from KEYED_START, serves every start LR
    start_lr_used: bool = True

    @property
    def key(self) -> str:
        """The cache key: a hash of the spec and the cache format."""
        fields = dataclasses.asdict(self)
        if not fields.pop("start_lr_used"):
            fields["lr"] = KEYED_START
        text = json_text(fields | {"cache": CACHE_VERSION}, indent=None)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def label(self) -> str:
        """The method's name in tables and plots."""
        if self.kind in ("schedule", "tuningfree"):
            return self.method
        return f"{self.method} (start {self.lr:.3g})"

    def task(self) -> Task:
        workload = workload_from_dict(self.workload)
        return Task(workload, self.seed, self.steps, self.eval_every, self.lr)


def execute(spec: RunSpec, policy_bytes: bytes | None) -> pd.DataFrame:
    """Run one spec; its trace with REPLAY_COLUMNS (schedules have no action or reward)."""
    if spec.kind == "schedule":
        config = RunConfig(schedule=spec.method, task=spec.task(), device=spec.device)
        options = {} if spec.warmup is None else {"warmup": spec.warmup}
        trace = run_schedule(config, progress=False, **options)
        return trace.reindex(columns=list(REPLAY_COLUMNS))
    if spec.kind == "tuningfree":
        task = spec.task()
        run = task.make_run(spec.device)
        lr_at = use_tuning_free(run, spec.method, task.steps)
        trace = train_intervals(run, task.steps, task.eval_every, lr_at, progress=False)
        return trace.reindex(columns=list(REPLAY_COLUMNS))
    if spec.kind == "policy":
        assert policy_bytes is not None
        policy = policy_from_bytes(policy_bytes, "the compared policy")
        # every method is judged by one divergence rule, whatever the policy trained with
        env_config = policy_env_config(policy, spec.device)
        env_config = dataclasses.replace(env_config, divergence_factor=DIVERGENCE_FACTOR)
        return run_controller(policy, spec.task(), env_config)
    env_config = EnvConfig(device=spec.device)
    if spec.method == "random":
        controller = RandomController(env_config.action.action_space(), seed=spec.seed)
    elif spec.method in RANGE_RULES:
        rule, settings = RANGE_RULES[spec.method]
        controller = RangeStopController(rule=rule, **settings)
        env_config = EnvConfig(device=spec.device, action=controller.rule)
    elif spec.method == "sweepvalley":
        controller = SweepValleyController()
        env_config = EnvConfig(device=spec.device, action=controller.rule, feature_version="v3")
    else:
        controller = PlateauController()
    return run_controller(controller, spec.task(), env_config)


def run_trace_csv(spec: RunSpec, policy_bytes: bytes | None) -> str:
    """Run a spec on one torch thread; its trace as CSV text, what a worker sends back.

    Workers only compute: the comparison's own process writes the cache, so it works
    the same with local processes and with Ray workers on other machines.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return execute(spec, policy_bytes).to_csv(index=False)
    finally:
        torch.set_num_threads(threads)


class RunCache:
    """The finished runs of a comparison folder, and the workers that compute the rest:
    `jobs` local processes (in this process when 1), or Ray tasks with a `backend`."""

    def __init__(
        self,
        out: Path,
        jobs: int,
        policy_bytes: bytes | None,
        progress: bool,
        backend: RayBackend | None = None,
    ) -> None:
        self.dir = out / RUNS_DIR
        self.dir.mkdir(exist_ok=True)
        self.jobs = jobs
        self.policy_bytes = policy_bytes
        self.backend = backend
        self.bar = tqdm(total=0, unit="run", desc="compare", disable=not progress)
        self.pool: ProcessPoolExecutor | None = None
        self._traces: dict[str, pd.DataFrame] = {}

    def done(self, spec: RunSpec) -> bool:
        return (self.dir / spec.key / "run.json").is_file()

    def trace(self, spec: RunSpec) -> pd.DataFrame:
        """A finished run's trace (read from disk once)."""
        if spec.key not in self._traces:
            self._traces[spec.key] = pd.read_csv(self.dir / spec.key / "trace.csv")
        return self._traces[spec.key]

    def _store(self, spec: RunSpec, trace_csv: str) -> None:
        """Cache a finished run: the trace, then `run.json`, which marks it done."""
        run_dir = self.dir / spec.key
        run_dir.mkdir(exist_ok=True)
        atomic_write_text(run_dir / "trace.csv", trace_csv)
        atomic_write_json(run_dir / "run.json", {"spec": dataclasses.asdict(spec)})
        self.bar.update()

    def run(self, specs: Iterable[RunSpec]) -> None:
        """Compute every spec not cached yet (each once)."""
        todo = list({spec.key: spec for spec in specs if not self.done(spec)}.values())
        self.bar.total += len(todo)
        self.bar.refresh()
        if self.backend is not None:
            self._run_on_ray(todo)
        elif self.jobs == 1:
            for spec in todo:
                self.bar.set_postfix_str(spec.label)
                self._store(spec, run_trace_csv(spec, self.policy_bytes))
        else:
            self._run_on_processes(todo)

    def _run_on_processes(self, todo: list[RunSpec]) -> None:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                self.jobs,
                mp_context=forkserver_context("lrpilot.experiments.run_cache"),
                initializer=init_worker,
                initargs=(os.getpid(),),
            )
        pending = {self.pool.submit(run_trace_csv, spec, self.policy_bytes): spec for spec in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            failed = [f for f in finished if f.exception() is not None]
            for future in finished:
                spec = pending.pop(future)
                if future.exception() is None:
                    self._store(spec, future.result())  # finished work is kept
            if failed:
                for future in pending:
                    future.cancel()
                raise failed[0].exception()

    def _run_on_ray(self, todo: list[RunSpec]) -> None:
        """Each run a Ray task; one whose worker dies is retried (MAX_RETRIES times)."""
        assert self.backend is not None
        ray = import_ray()
        task = ray.remote(run_trace_csv).options(**self.backend.options(), max_retries=MAX_RETRIES)
        policy = ray.put(self.policy_bytes)  # shipped once, not with every task
        pending = {task.remote(spec, policy): spec for spec in todo}
        try:
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    self._store(pending.pop(ref), ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # the run's own error, not Ray's wrapper
            raise (exc.cause if exc.cause is not None else exc) from None
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self) -> None:
        self.bar.close()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
