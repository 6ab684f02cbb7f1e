"""Shared fixtures: a micro model and a small corpus, so the suite stays fast on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrpilot.agents.policy_file import Policy
from lrpilot.agents.policy_format import policy_metadata
from lrpilot.agents.scheduler import PolicyScheduler
from lrpilot.env.actions import DEFAULT_FACTORS, ActionRule
from lrpilot.env.features import observation_size
from lrpilot.lm.byte_gpt import ByteGPTWorkload
from lrpilot.lm.corpus import Corpus, pydoc_bytes, split_bytes

torch.set_num_threads(1)

MICRO = ByteGPTWorkload(
    name="micro", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8, val_windows=8
)
LR_MIN, LR_MAX = 1e-3, 0.2  # the LR range of `make_policy`'s policies

# `python -c KILL_AFTER_STORES N ARGS...` runs `lrpilot ARGS...` and kills its whole
# process group with SIGKILL right after the N-th run is cached: a crash at a known
# point, whatever the machine's speed (start it in a session of its own).
KILL_AFTER_STORES = """
import os, signal, sys
from lrpilot.cli import main
from lrpilot.experiments.run_cache import RunCache
store, stored = RunCache._store, []
def store_then_die(self, spec, trace_csv):
    store(self, spec, trace_csv)
    stored.append(spec.key)
    if len(stored) == int(sys.argv[1]):
        os.killpg(0, signal.SIGKILL)
RunCache._store = store_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="session")
def small_corpus() -> Corpus:
    """The first 200 kB of the pydoc corpus, split like any corpus."""
    train, val, test = split_bytes(pydoc_bytes()[:200_000])
    return Corpus(name="pydoc-200k", train=train, val=val, test=test)


@pytest.fixture
def micro_workload() -> ByteGPTWorkload:
    """A byte GPT small enough for fast tests."""
    return MICRO


def make_policy(
    seed: int = 0,
    action_mode: str = "discrete",
    scale: float = 2.0,
    factor_span: float = 0.0,
    masked_features: tuple[str, ...] = (),
    cooldown_fraction: float = 0.0,
    warmup_fraction: float = 0.0,
    first_action_max_factor: float = 0.0,
    history: int = 1,
    probe_intervals: int = 0,
    feature_version: str = "v2",
) -> Policy:
    """A small policy with random weights, built the way `export_policy` builds one; of
    the shipped policy's feature set unless told (a loop needs no `tokens_per_step`)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = [16]
    n_out = len(DEFAULT_FACTORS) if action_mode == "discrete" else 1
    sizes = [observation_size(history, feature_version), *hidden, n_out]
    names = [f"hidden.{i}" for i in range(len(hidden))] + ["output"]
    weights = {}
    for name, n_in, n_out_layer in zip(names, sizes[:-1], sizes[1:], strict=True):
        weights[f"{name}.weight"] = scale * torch.randn(n_out_layer, n_in, generator=generator)
        weights[f"{name}.bias"] = torch.randn(n_out_layer, generator=generator)
    if action_mode == "continuous":
        weights["log_std"] = torch.zeros(1)
    action = ActionRule(
        mode=action_mode,
        factors=DEFAULT_FACTORS,
        lr_min=LR_MIN,
        lr_max=LR_MAX,
        factor_span=factor_span,
        first_action_max_factor=first_action_max_factor,
        cooldown_fraction=cooldown_fraction,
        warmup_fraction=warmup_fraction,
        probe_intervals=probe_intervals,
    )
    metadata = policy_metadata(
        action=action,
        masked_features=masked_features,
        history=history,
        feature_version=feature_version,
        hidden=hidden,
        normalization=None,
        training={},
    )
    return Policy(weights, metadata)


def drive_run_with_scheduler(policy, task):
    """`task`'s run, made as `LRControlEnv` makes it, trained step by step by a loop with
    `PolicyScheduler`, which observes at every interval's end (the sweep's too, if the
    policy has one). Returns the scheduler, every step's LR, and each observation's
    step and the train losses it was shown."""
    trainer = task.make_run("cpu")
    trainer.set_lr(task.start_lr)
    # The exact update ratio (a copy of every weight), as the run measures it: the
    # default estimate from a sample is compared with it in test_update_ratio_sample_*.
    # The tokens per step as a loop's author knows them: batch size x sequence length.
    tokens_per_step = task.workload.batch_size * task.workload.block_size
    scheduler = PolicyScheduler(
        trainer.optimizer, policy, task.steps, task.eval_every,
        initial_val_loss=trainer.evaluate(), update_ratio_sample=None,
        tokens_per_step=tokens_per_step,
    )  # fmt: skip
    lrs, losses, grad_norms, observations = [], [], [], []
    for step in range(1, task.steps + 1):
        # One step of the run at the scheduler's LR. The run clips the gradients and
        # clears them inside train(), so the scheduler would measure clipped norms:
        # the pre-clipping norms go in explicitly, as in a loop with clip_grad_norm_.
        stats = trainer.train(1, lambda _step: trainer.optimizer.param_groups[0]["lr"])
        scheduler.step()
        lrs.append(stats.lr)
        losses.append(stats.train_loss_mean)
        grad_norms.append(stats.grad_norm)
        if scheduler.controller.is_interval_end(step):
            sweeping = scheduler.controller.sweep is not None
            observations.append((step, losses))
            scheduler.observe(losses, stats.val_loss, grad_norm=float(np.mean(grad_norms)))
            if not sweeping:
                assert scheduler.last_stats.update_ratio == stats.update_ratio  # measured
            losses, grad_norms = [], []
    return scheduler, lrs, observations
