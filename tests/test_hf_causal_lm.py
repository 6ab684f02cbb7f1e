"""The hf_causal_lm workload family: Transformers GPT-2 and Llama on a byte corpus."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.hf_causal_lm import MISSING_EXTRA, HFCausalLMWorkload

pytest.importorskip("transformers")

# Tiny sizes: each run builds in milliseconds and trains 30 steps in well under a second.
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 16, "val_windows": 16}


def tiny(**changes) -> HFCausalLMWorkload:
    return HFCausalLMWorkload(**{**TINY, **changes})


def without_seconds(stats) -> dict:
    values = dataclasses.asdict(stats)
    values.pop("seconds")
    return values


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_training_lowers_the_validation_loss(architecture):
    run = tiny(architecture=architecture).make_run(seed=0)
    before = run.evaluate()
    stats = run.train(30, lr=3e-3)
    assert stats.step == 30 and stats.tokens == 30 * 16 * 32
    assert not stats.nonfinite
    assert math.isfinite(stats.train_loss_mean) and stats.grad_norm > 0
    assert stats.val_loss < before - 0.5, (before, stats.val_loss)


def test_the_test_loss_covers_the_test_tokens():
    run = tiny(test_tokens=65_536).make_run(seed=0)
    result = run.test()
    assert math.isfinite(result.loss)
    assert result.items >= 65_536  # pydoc, block_size 32: exactly 2048 windows of 32 bytes
    assert math.isnan(result.accuracy)


def test_the_loss_is_next_byte_cross_entropy_on_the_logits():
    run = tiny(architecture="llama").make_run(seed=0)
    inputs, targets = run.sample_batch()
    with torch.no_grad():
        logits = run.model(input_ids=inputs).logits
    assert logits.shape == (16, 32, 256)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
    assert torch.allclose(run._batch_loss((inputs, targets)).detach(), expected)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_same_seed_same_numbers(architecture):
    workload = tiny(architecture=architecture)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = workload.make_run(seed=7)
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG is untouched
    second = workload.make_run(seed=7)
    other = workload.make_run(seed=8)
    first_weights = [p.detach().clone() for p in first.model.parameters()]
    for a, b in zip(first_weights, second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, b) for a, b in zip(first_weights, other.model.parameters(), strict=True)
    )
    for _ in range(2):
        assert without_seconds(first.train(5, lr=3e-3)) == without_seconds(second.train(5, lr=3e-3))


def test_settings_round_trip_and_digest():
    from lrpilot.lm.byte_gpt import corpus_digest
    from lrpilot.lm.corpus import load_corpus

    workload = tiny(architecture="llama")
    settings = workload.to_dict()
    assert settings["family"] == "hf_causal_lm" and settings["architecture"] == "llama"
    settings.pop("family")
    assert HFCausalLMWorkload(**settings) == workload
    assert workload.digest() == corpus_digest(load_corpus("pydoc"))
    assert HFCausalLMWorkload().name == "hf-gpt2"


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ConfigError, match="gpt2, llama") as info:
        HFCausalLMWorkload(architecture="mamba")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [{"n_embd": 30, "n_head": 4}, {"n_layer": 0}, {"eval_every": 500}, {"beta1": 1.0}],
)
def test_bad_sizes_are_refused(changes):
    with pytest.raises(ConfigError):
        tiny(**changes)


def test_a_block_longer_than_the_corpus_is_refused(tmp_path):
    text = tmp_path / "short.txt"
    text.write_bytes(b"a short corpus, split three ways " * 10)
    with pytest.raises(ConfigError, match="shorter than one block"):
        tiny(corpus=str(text), block_size=256).make_run(seed=0)


def test_without_transformers_make_run_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    workload = HFCausalLMWorkload()  # constructing needs no transformers
    with pytest.raises(ConfigError) as info:
        workload.make_run(seed=0)
    assert str(info.value) == MISSING_EXTRA
    assert "pip install 'lrpilot[hf]'" in str(info.value) and "\n" not in str(info.value)
