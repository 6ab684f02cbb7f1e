"""Shared fixtures: a micro model and a small corpus, so the suite stays fast on a CPU."""

from __future__ import annotations

import pytest
import torch

from lrpilot.agents.policy_file import Policy
from lrpilot.agents.policy_format import policy_metadata
from lrpilot.env.actions import DEFAULT_FACTORS, ActionRule
from lrpilot.env.features import FEATURE_SETS, FEATURE_VERSION
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
    feature_version: str = FEATURE_VERSION,
) -> Policy:
    """A small policy with random weights, built the way `export_policy` builds one."""
    generator = torch.Generator().manual_seed(seed)
    hidden = [16]
    n_out = len(DEFAULT_FACTORS) if action_mode == "discrete" else 1
    sizes = [len(FEATURE_SETS[feature_version]) * history, *hidden, n_out]
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
