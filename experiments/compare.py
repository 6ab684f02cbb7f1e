"""`lrpilot compare`: tuned fixed schedules against learned policies, on held-out seeds.

The protocol (DESIGN.md, in the spirit of AlgoPerf):

1. every fixed schedule gets the same tuning budget: a log-spaced grid of peak LRs,
   each run on the tuning seeds; if the best peak lies on the edge of the grid, the
   grid is widened by one step on that side and the new point is run too. With
   `warmups`, a schedule that has a warmup is tuned over every (peak, warmup) pair:
   for runs of a few hundred steps the warmup matters as much as the peak;
2. each schedule's best setting (lowest mean final loss over the tuning seeds) is run
   on the evaluation seeds, which the tuning never saw;
3. the policy (and any baseline controller) runs closed-loop on the same evaluation
   seeds from each given start LR, untuned, with no tuning runs of its own.

A run's score is its final validation loss, a diverged run scoring the divergence cap
(`lrpilot.lm.trace.scored_final_loss`).

Every run is cached in `DIR/runs/<key>/` under a hash of everything that determines
its numbers, written atomically; a compare that is killed and started again with the
same arguments recomputes only unfinished runs. Runs go in parallel over `jobs`
processes, each with one torch thread, so results do not depend on `jobs`.

Outputs: `results.csv` (one row per run x interval), `summary.csv`, `summary.md`,
`loss_curves.png`, `lr_curves.png`, `final_loss.png`, `config.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lrpilot.agents.controllers import PlateauController, RandomController
from lrpilot.agents.policy_file import policy_from_bytes, resolve_policy_path
from lrpilot.env.actions import make_action_space
from lrpilot.env.lr_env import EnvConfig
from lrpilot.env.tasks import Task
from lrpilot.errors import ConfigError, require_positive_int, require_seed
from lrpilot.experiments.plots import plot_comparison
from lrpilot.experiments.replay import REPLAY_COLUMNS, policy_env_config, run_controller
from lrpilot.experiments.report import summarize, summary_markdown
from lrpilot.experiments.runs import RunConfig, run_schedule
from lrpilot.files import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)
from lrpilot.lm.corpus import load_corpus
from lrpilot.lm.schedules import SCHEDULE_NAMES, default_warmup
from lrpilot.lm.trace import DIVERGENCE_FACTOR, run_diverged, scored_final_loss
from lrpilot.lm.trainer import resolve_device
from lrpilot.ray_backend import MAX_RETRIES, RayBackend, import_ray, ray_session

CONTROLLERS = ("random", "plateau")
CACHE_VERSION = 1  # bump when a change would alter the numbers of a cached run
RUNS_DIR = "runs"


@dataclass(frozen=True)
class CompareConfig:
    """Everything `lrpilot compare` needs; every field is one of its flags."""

    schedules: tuple[str, ...] = ("constant", "warmup_cosine", "wsd")
    policy: str | None = None  # a policy file or folder; None compares schedules alone
    controllers: tuple[str, ...] = ()  # baseline controllers: random, plateau
    corpus: str = "pydoc"
    model: str = "tiny"
    steps: int = 400
    eval_every: int = 20
    batch_size: int = 64
    lr_grid: int = 5  # peak LRs per schedule, log-spaced over lr_range
    lr_range: tuple[float, float] = (1e-3, 1e-2)
    # warmup fractions tuned with the peak, for schedules with a warmup; () keeps each
    # schedule's own (5% for warmup_cosine and wsd)
    warmups: tuple[float, ...] = ()
    tune_seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (1, 2, 3)
    start_lrs: tuple[float, ...] = (1e-3,)  # untuned start LRs of policy and controllers
    jobs: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        lists = ("schedules", "controllers", "warmups", "tune_seeds", "eval_seeds", "start_lrs")
        for name in lists:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "lr_range", tuple(self.lr_range))
        if not self.schedules:
            raise ConfigError("the schedule list is empty: give at least one schedule to tune")
        unknown = [s for s in self.schedules if s not in SCHEDULE_NAMES]
        if unknown:
            raise ConfigError(
                f"unknown schedule(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(SCHEDULE_NAMES)}"
            )
        unknown = [c for c in self.controllers if c not in CONTROLLERS]
        if unknown:
            raise ConfigError(
                f"unknown controller(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(CONTROLLERS)}"
            )
        if not isinstance(self.lr_grid, int) or self.lr_grid < 2:
            raise ConfigError(f"lr_grid must be an integer >= 2, got {self.lr_grid!r}")
        low, high = self.lr_range if len(self.lr_range) == 2 else (math.nan, math.nan)
        if not (0 < low < high and math.isfinite(high)):
            raise ConfigError(f"lr_range must be LOW,HIGH with 0 < LOW < HIGH, got {self.lr_range}")
        if any(not 0 < w < 1 for w in self.warmups):
            raise ConfigError(f"warmups must be fractions of the run in (0, 1), got {self.warmups}")
        if len({f"{w:.3g}" for w in self.warmups}) != len(self.warmups):
            raise ConfigError(f"warmups must differ in 3 significant digits, got {self.warmups}")
        if not self.tune_seeds or not self.eval_seeds:
            raise ConfigError("tune_seeds and eval_seeds must not be empty")
        for seed in (*self.tune_seeds, *self.eval_seeds):
            require_seed(seed)
        for name in ("schedules", "controllers", "tune_seeds", "eval_seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} lists a value twice: {', '.join(map(str, values))}")
        if len({f"{lr:.3g}" for lr in self.start_lrs}) != len(self.start_lrs):
            raise ConfigError(
                f"start_lrs must differ in 3 significant digits, got {self.start_lrs!r}"
            )
        shared = sorted(set(self.tune_seeds) & set(self.eval_seeds))
        if shared:
            raise ConfigError(
                f"seed(s) {', '.join(map(str, shared))} are both tuning and evaluation seeds; "
                f"the evaluation seeds must be held out"
            )
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.start_lrs) or not self.start_lrs:
            raise ConfigError(f"start_lrs must be positive numbers, got {self.start_lrs!r}")
        require_positive_int("jobs", self.jobs)
        # The run settings are checked once, by the config of a single run.
        RunConfig(
            schedule=self.schedules[0],
            lr=low,
            steps=self.steps,
            eval_every=self.eval_every,
            corpus=self.corpus,
            model=self.model,
            batch_size=self.batch_size,
            device=self.device,
        )

    def grid(self) -> list[float]:
        """The log-spaced peak LRs every schedule is tuned over."""
        low, high = self.lr_range
        return [float(lr) for lr in np.geomspace(low, high, self.lr_grid)]

    def warmup_grid(self, schedule: str) -> list[float | None]:
        """The warmups `schedule` is tuned over: `warmups`, else its own; [None] if it has
        no warmup."""
        own = default_warmup(schedule)
        if own is None:
            return [None]
        return list(self.warmups) or [own]


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison: everything that determines its numbers."""

    kind: str  # "schedule", "policy" or "controller"
    method: str  # the schedule's name, "policy", or the controller's name
    lr: float  # peak LR (schedules) or start LR (policy, controllers)
    seed: int
    corpus: str
    model: str
    steps: int
    eval_every: int
    batch_size: int
    device: str
    corpus_sha256: str = ""  # the corpus bytes' digest: an edited corpus is a new run
    policy_sha256: str = ""  # the policy file's digest: a new policy is a new run
    warmup: float | None = None  # a schedule's warmup fraction; None: it has none

    @property
    def key(self) -> str:
        """The cache key: a hash of the spec and the cache format. A run with no warmup,
        or with its schedule's own, hashes without the field, as before warmups could be
        tuned, so those cached runs keep their keys."""
        fields = dataclasses.asdict(self)
        own = default_warmup(self.method) if self.kind == "schedule" else None
        if self.warmup is None or (own is not None and math.isclose(self.warmup, own)):
            del fields["warmup"]
        text = json.dumps(fields | {"cache": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def label(self) -> str:
        """The method's name in tables and plots."""
        if self.kind == "schedule":
            return self.method
        return f"{self.method} (start {self.lr:.3g})"

    def task(self) -> Task:
        return Task(
            self.corpus,
            self.model,
            self.seed,
            self.steps,
            self.eval_every,
            self.lr,
            self.batch_size,
        )


def corpus_digest(name: str) -> str:
    """sha256 of a corpus's bytes (train and validation), for cache keys."""
    corpus = load_corpus(name)
    digest = hashlib.sha256(corpus.train.numpy().tobytes())
    digest.update(corpus.val.numpy().tobytes())
    return digest.hexdigest()


def execute(spec: RunSpec, policy_bytes: bytes | None) -> pd.DataFrame:
    """Run one spec; its trace with REPLAY_COLUMNS (schedules have no action or reward)."""
    if spec.kind == "schedule":
        config = RunConfig(
            schedule=spec.method,
            lr=spec.lr,
            steps=spec.steps,
            eval_every=spec.eval_every,
            corpus=spec.corpus,
            model=spec.model,
            seed=spec.seed,
            batch_size=spec.batch_size,
            device=spec.device,
        )
        options = {} if spec.warmup is None else {"warmup": spec.warmup}
        trace = run_schedule(config, progress=False, **options)
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
        action_space = make_action_space(env_config.action_mode, env_config.factors)
        controller = RandomController(action_space, seed=spec.seed)
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
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["lrpilot.experiments.compare"])
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=context)
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


def compare(
    config: CompareConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    backend: RayBackend | None = None,
):
    """Run the comparison protocol into `out_dir` (on Ray with a `backend`); returns the
    summary table. The outputs and the cache do not depend on the backend."""
    out = ensure_writable_dir(out_dir)
    policy_bytes = policy_sha256 = None
    if config.policy is not None:
        path = resolve_policy_path(config.policy)
        policy_bytes = path.read_bytes()
        policy_from_bytes(policy_bytes, str(path))  # not a policy: fail now, not in a worker
        policy_sha256 = hashlib.sha256(policy_bytes).hexdigest()
    common = {
        "corpus": config.corpus,
        "model": config.model,
        "steps": config.steps,
        "eval_every": config.eval_every,
        "batch_size": config.batch_size,
        "device": resolve_device(config.device).type,
        "corpus_sha256": corpus_digest(config.corpus),  # also: a bad corpus fails here
    }
    if backend is not None and common["device"] == "cuda" and backend.gpus_per_worker == 0:
        raise ConfigError("device cuda on Ray needs --gpus-per-worker > 0 (Ray hides GPUs)")
    atomic_write_json(out / "config.json", dataclasses.asdict(config))

    def schedule_spec(name: str, lr: float, seed: int, warmup: float | None) -> RunSpec:
        return RunSpec("schedule", name, lr, seed, **common, warmup=warmup)

    controlled = [
        RunSpec("policy", "policy", lr, seed, **common, policy_sha256=policy_sha256)
        for lr in config.start_lrs
        for seed in config.eval_seeds
        if policy_sha256 is not None
    ] + [
        RunSpec("controller", name, lr, seed, **common)
        for name in config.controllers
        for lr in config.start_lrs
        for seed in config.eval_seeds
    ]
    grids = {name: config.grid() for name in config.schedules}
    ratio = grids[config.schedules[0]][1] / grids[config.schedules[0]][0]  # one grid step

    def tuning_runs(name: str) -> list[RunSpec]:
        return [
            schedule_spec(name, lr, seed, warmup)
            for lr in grids[name]
            for warmup in config.warmup_grid(name)
            for seed in config.tune_seeds
        ]

    cache = RunCache(out, config.jobs, policy_bytes, progress, backend)
    with ray_session(backend):
        try:
            # 1. the tuning grids, and the untuned controllers (they need no tuning)
            cache.run([spec for name in grids for spec in tuning_runs(name)] + controlled)
            # 2. one more grid step (for every warmup) where the best peak lies on an edge
            for name, grid in grids.items():
                best, _ = _best_setting(cache, tuning_runs(name))
                if best == grid[0]:
                    grid.insert(0, grid[0] / ratio)
                elif best == grid[-1]:
                    grid.append(grid[-1] * ratio)
            cache.run([spec for name in grids for spec in tuning_runs(name)])  # only the new ones
            # 3. each schedule at its best peak (and warmup) on the evaluation seeds
            best = {name: _best_setting(cache, tuning_runs(name)) for name in grids}
            evaluation = [
                schedule_spec(name, best[name][0], seed, warmup=best[name][1])
                for name in config.schedules
                for seed in config.eval_seeds
            ]
            cache.run(evaluation)
        finally:
            cache.close()

    tuning_specs = [spec for name in grids for spec in tuning_runs(name)]
    phases = [("tune", s) for s in tuning_specs] + [("eval", s) for s in evaluation + controlled]
    results, runs = _assemble(cache, phases)
    summary = summarize(runs)
    notes = _notes(config, grids, best)
    atomic_write_csv(out / "results.csv", results)
    atomic_write_csv(out / "summary.csv", summary)
    title = f"{config.corpus} / {config.model} / {config.steps} steps"
    atomic_write_text(out / "summary.md", summary_markdown(summary, title, notes))
    plot_comparison(results, summary, out)
    return summary


def _best_setting(cache: RunCache, specs: list[RunSpec]) -> tuple[float, float | None]:
    """The (peak LR, warmup) with the lowest mean score over the tuning seeds (ties: the
    lower LR, then the shorter warmup)."""
    scores: dict[tuple[float, float | None], list[float]] = {}
    for spec in specs:
        trace = cache.trace(spec)
        score = scored_final_loss(trace["val_loss"].tolist(), trace["nonfinite"].tolist())
        scores.setdefault((spec.lr, spec.warmup), []).append(score)
    return min(scores, key=lambda s: (float(np.mean(scores[s])), s[0], s[1] or 0.0))


def _assemble(cache: RunCache, phases: list[tuple[str, RunSpec]]):
    """The long results table (run x interval) and the one-row-per-run table."""
    frames, runs = [], []
    for phase, spec in phases:
        trace = cache.trace(spec)
        warmup = math.nan if spec.warmup is None else spec.warmup
        about = {
            "label": spec.label,
            "kind": spec.kind,
            "method": spec.method,
            "phase": phase,
            "seed": spec.seed,
            "peak_or_start_lr": spec.lr,
            "warmup": warmup,
            "run": spec.key,
        }
        frames.append(trace.assign(**about)[[*about, *REPLAY_COLUMNS]])
        runs.append(
            {
                "label": spec.label,
                "kind": spec.kind,
                "phase": phase,
                "seed": spec.seed,
                "lr": spec.lr,
                "warmup": warmup,
                "score": scored_final_loss(trace["val_loss"].tolist(), trace["nonfinite"].tolist()),
                "steps": int(trace["step"].iloc[-1]),
                "diverged": run_diverged(
                    trace["val_loss"].tolist(), trace["nonfinite"].tolist(), DIVERGENCE_FACTOR
                ),
            }
        )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(runs)


def _notes(
    config: CompareConfig,
    grids: dict[str, list[float]],
    best: dict[str, tuple[float, float | None]],
) -> list[str]:
    grid = ", ".join(f"{lr:.3g}" for lr in config.grid())
    notes = [
        f"Schedules tuned over peak LRs {grid} on tuning seed(s) "
        f"{', '.join(map(str, config.tune_seeds))}; evaluated on held-out seed(s) "
        f"{', '.join(map(str, config.eval_seeds))}.",
    ]
    tuned = [name for name in config.schedules if default_warmup(name) is not None]
    if config.warmups and tuned:
        warmups = ", ".join(f"{w:.3g}" for w in config.warmups)
        notes.append(
            f"{', '.join(tuned)}: tuned over warmups {warmups} of the run too (every pair)."
        )
    notes += [
        "Policy and controllers start from the given LR, untuned, with no tuning runs.",
        "Final loss: validation loss (nats/byte) after the last step; a diverged run scores "
        f"{DIVERGENCE_FACTOR:g} x its initial loss.",
    ]
    for name, grid in grids.items():
        if len(grid) > config.lr_grid:
            edge = "still on the widened edge" if best[name][0] in (grid[0], grid[-1]) else "inside"
            notes.append(
                f"{name}: grid widened to {grid[0]:.3g}..{grid[-1]:.3g}; best peak {edge}."
            )
    return notes
