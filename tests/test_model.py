import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.model import GPT, MODEL_PRESETS, ModelConfig, model_preset, next_byte_loss


def test_logits_shape_and_initial_loss_near_uniform():
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)
    model = GPT(config, torch.Generator().manual_seed(0))
    idx = torch.randint(0, 256, (3, 8))
    logits = model(idx)
    assert logits.shape == (3, 8, 256)
    loss = next_byte_loss(logits, idx)
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.2


def test_attention_is_causal():
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8))
    idx = torch.randint(0, 256, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 256
    assert torch.allclose(model(idx)[0, :-1], model(changed)[0, :-1])


def test_same_generator_seed_same_weights():
    config = MODEL_PRESETS["tiny"]
    a = GPT(config, torch.Generator().manual_seed(3))
    b = GPT(config, torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_presets_grow_and_bad_configs_are_refused():
    sizes = [GPT(model_preset(name)).num_params() for name in ("tiny", "small", "base")]
    assert sizes == sorted(sizes)
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="n_layer"):
        ModelConfig(n_layer=0)
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        model_preset("huge")
