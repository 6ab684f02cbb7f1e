"""`lrpilot compare`: tuned fixed schedules against learned policies, on held-out seeds.

The protocol (docs/design.md, in the spirit of AlgoPerf):

1. every fixed schedule gets the same tuning budget: a log-spaced grid of peak LRs,
   each run on the tuning seeds; if the best peak lies on the edge of the grid, the
   grid is widened by one step on that side and the new point is run too. With
   `warmups`, a schedule that has a warmup is tuned over every (peak, warmup) pair:
   for runs of a few hundred steps the warmup matters as much as the peak;
2. each schedule's best setting (the best mean score over the tuning seeds) is run on
   the evaluation seeds, which the tuning never saw;
3. the policy (and any baseline controller) runs closed-loop on the same evaluation
   seeds from each given start LR, untuned, with no tuning runs of its own; the
   tuning-free optimizers (Prodigy, schedule-free AdamW) run once per evaluation seed
   at their recommended settings (`lrpilot.lm.optimizers`).

A run's score is the workload's metric (`Workload.metric`, or `CompareConfig.metric`),
measured once at the end on the workload's test split, which no controller observes:
its test loss (a diverged run scores the divergence cap,
`lrpilot.lm.trace.scored_test_loss`), or its test accuracy (a diverged run scores 0),
ranked as the test error 1 - accuracy so that lower is better for both
(`lrpilot.experiments.scoring`). Schedules are tuned by the same score on the tuning
seeds: a held-out split far larger than the controller's validation windows, so the
tuned baseline is, if anything, stronger than a practitioner's. The summary prints both
the test loss and the test accuracy (where the workload measures one) and says which
ranks.

Every run is cached in `DIR/runs/` (`lrpilot.experiments.run_cache`): a compare that
is killed and started again with the same arguments recomputes only unfinished runs.

Outputs: `results.csv` (one row per run x interval), `summary.csv`, `summary.md`,
`loss_curves.png`, `lr_curves.png`, `final_loss.png`, `config.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from lrpilot.agents.controllers import reads_start_lr, rule_digest
from lrpilot.agents.policy_file import policy_from_bytes, resolve_policy_path
from lrpilot.errors import ConfigError
from lrpilot.experiments.assembly import assemble, notes
from lrpilot.experiments.compare_config import CONTROLLERS, CompareConfig
from lrpilot.experiments.folders import claim_folder
from lrpilot.experiments.plots import plot_comparison
from lrpilot.experiments.report import summarize, summary_markdown
from lrpilot.experiments.run_cache import RUNS_DIR, RunCache, RunSpec
from lrpilot.experiments.scoring import run_scores
from lrpilot.files import atomic_write_csv, atomic_write_text, ensure_writable_dir
from lrpilot.lm.byte_gpt import resolve_device
from lrpilot.lm.optimizers import NOMINAL_LRS
from lrpilot.ray_backend import RayBackend, ray_session

__all__ = ["CONTROLLERS", "RUNS_DIR", "CompareConfig", "compare"]


def compare(
    config: CompareConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    backend: RayBackend | None = None,
    force: bool = False,
):
    """Run the comparison protocol into `out_dir` (on Ray with a `backend`); returns the
    summary table. The outputs and the cache do not depend on the backend. A folder that
    holds another comparison is refused unless `force`."""
    setup = prepare(config, backend)
    common, policy_bytes, policy_sha256 = setup.common, setup.policy_bytes, setup.policy_sha256
    metric = setup.metric
    out = ensure_writable_dir(out_dir)
    claim_folder(out, "compare", setup.record, force)

    def schedule_spec(name: str, lr: float, seed: int, warmup: float | None) -> RunSpec:
        return RunSpec("schedule", name, lr, seed, **common, warmup=warmup)

    controlled = [
        RunSpec(
            "policy",
            "policy",
            lr,
            seed,
            **common,
            policy_sha256=policy_sha256,
            start_lr_used=setup.policy_reads_start_lr,
        )
        for lr in config.protocol.start_lrs
        for seed in config.protocol.eval_seeds
        if policy_sha256 is not None
    ] + [
        RunSpec(
            "controller",
            name,
            lr,
            seed,
            **common,
            policy_sha256=rule_digest(name),
            start_lr_used=reads_start_lr(name),
        )
        for name in config.protocol.controllers
        for lr in config.protocol.start_lrs
        for seed in config.protocol.eval_seeds
    ]
    untuned = controlled + [
        RunSpec("tuningfree", name, NOMINAL_LRS[name], seed, **common)
        for name in config.protocol.tuning_free
        for seed in config.protocol.eval_seeds
    ]
    grids = {name: config.protocol.grid() for name in config.protocol.schedules}
    ratio = (
        grids[config.protocol.schedules[0]][1] / grids[config.protocol.schedules[0]][0]
    )  # one grid step

    def tuning_runs(name: str) -> list[RunSpec]:
        return [
            schedule_spec(name, lr, seed, warmup)
            for lr in grids[name]
            for warmup in config.protocol.warmup_grid(name)
            for seed in config.protocol.tune_seeds
        ]

    cache = RunCache(out, config.jobs, policy_bytes, progress, backend)
    with ray_session(backend):
        try:
            # 1. the tuning grids, and the untuned methods (they need no tuning)
            cache.run([spec for name in grids for spec in tuning_runs(name)] + untuned)
            # 2. one more grid step (for every warmup) where the best peak lies on an edge
            for name, grid in grids.items():
                best, _ = _best_setting(cache, tuning_runs(name), metric)
                if best == grid[0]:
                    grid.insert(0, grid[0] / ratio)
                elif best == grid[-1]:
                    grid.append(grid[-1] * ratio)
            cache.run([spec for name in grids for spec in tuning_runs(name)])  # only the new ones
            # 3. each schedule at its best peak (and warmup) on the evaluation seeds
            best = {name: _best_setting(cache, tuning_runs(name), metric) for name in grids}
            evaluation = [
                schedule_spec(name, best[name][0], seed, warmup=best[name][1])
                for name in config.protocol.schedules
                for seed in config.protocol.eval_seeds
            ]
            cache.run(evaluation)
        finally:
            cache.close()

    tuning_specs = [spec for name in grids for spec in tuning_runs(name)]
    phases = [("tune", s) for s in tuning_specs] + [("eval", s) for s in evaluation + untuned]
    results, runs = assemble(cache, phases, metric)
    summary = summarize(runs, metric)
    summary_notes = notes(config, grids, best, metric)
    atomic_write_csv(out / "results.csv", results)
    atomic_write_csv(out / "summary.csv", summary)
    title = f"{common['workload']['name']} / {common['steps']} steps"
    atomic_write_text(out / "summary.md", summary_markdown(summary, title, summary_notes))
    plot_comparison(results, summary, out)
    return summary


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a comparison's runs depend on, checked before anything is written."""

    common: dict  # the RunSpec fields every run shares: the workload, budget, device, data
    policy_bytes: bytes | None
    policy_sha256: str | None
    protocol: dict  # the Protocol, as a table
    metric: str  # what the schedules are tuned and the methods ranked by
    policy_reads_start_lr: bool = True  # False: its rule starts from the LR prior

    @property
    def record(self) -> dict:
        """What the comparison folder records (and a rerun must match): its runs' settings,
        the protocol, the policy's digest and the metric, whatever paths or spellings
        named them."""
        return {
            "runs": self.common,
            "protocol": self.protocol,
            "policy": self.policy_sha256,
            "metric": self.metric,
        }


def prepare(config: CompareConfig, backend: RayBackend | None = None) -> Setup:
    """Check what a comparison needs (the policy file, the data, the device) and return
    what its runs share; a bad input fails here, before anything is written."""
    policy_bytes = policy_sha256 = None
    reads_start = True
    if config.policy is not None:
        path = resolve_policy_path(config.policy)
        policy_bytes = path.read_bytes()
        policy = policy_from_bytes(policy_bytes, str(path))  # fails now, not in a worker
        policy_sha256 = hashlib.sha256(policy_bytes).hexdigest()
        reads_start = not policy.action.prior_lr
    task = config.task(config.protocol.eval_seeds[0], config.protocol.start_lrs[0])
    common = {
        "workload": task.workload.to_dict(),  # not its metric: the runs do not depend on it
        "steps": task.steps,
        "eval_every": task.eval_every,
        "device": resolve_device(config.run.device).type,
        "data_sha256": task.workload.digest(),  # also: missing data fails here
    }
    if backend is not None and common["device"] == "cuda" and backend.gpus_per_worker == 0:
        raise ConfigError("device cuda on Ray needs --gpus-per-worker > 0 (Ray hides GPUs)")
    protocol = dataclasses.asdict(config.protocol)
    return Setup(common, policy_bytes, policy_sha256, protocol, task.workload.metric, reads_start)


def _best_setting(cache: RunCache, specs: list[RunSpec], metric: str) -> tuple[float, float | None]:
    """The (peak LR, warmup) with the lowest mean score by `metric` over the tuning seeds
    (ties: the lower LR, then the shorter warmup)."""
    scores: dict[tuple[float, float | None], list[float]] = {}
    for spec in specs:
        score = run_scores(cache.trace(spec), metric)["score"]
        scores.setdefault((spec.lr, spec.warmup), []).append(score)
    return min(scores, key=lambda s: (float(np.mean(scores[s])), s[0], s[1] or 0.0))
