"""Shared fixtures: a micro model and a small corpus, so the suite stays fast on a CPU."""

from __future__ import annotations

import pytest
import torch

from lrpilot.lm.corpus import Corpus, pydoc_bytes, split_bytes
from lrpilot.lm.model import ModelConfig
from lrpilot.lm.trainer import TrainerConfig

torch.set_num_threads(1)

MICRO_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)


@pytest.fixture(scope="session")
def small_corpus() -> Corpus:
    """The first 200 kB of the pydoc corpus, split like any corpus."""
    train, val = split_bytes(pydoc_bytes()[:200_000], 0.1)
    return Corpus(name="pydoc-200k", train=train, val=val)


@pytest.fixture
def micro_config() -> TrainerConfig:
    return TrainerConfig(model=MICRO_MODEL, batch_size=8, seed=0, val_windows=8, device="cpu")
