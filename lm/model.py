"""A small decoder-only transformer over bytes, in the style of nanoGPT.

Pre-norm blocks, causal `scaled_dot_product_attention`, untied output head, no
dropout (runs are short, and dropout would add noise to every loss the controller
sees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrpilot.config import check_fields, positive, setting
from lrpilot.errors import ConfigError
from lrpilot.lm.corpus import VOCAB_SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the transformer."""

    n_layer: int = setting(1, help="transformer blocks", check=positive)
    n_head: int = setting(4, help="attention heads", check=positive)
    n_embd: int = setting(64, help="model width", check=positive)
    block_size: int = setting(16, help="context length in bytes", check=positive)
    vocab_size: int = setting(VOCAB_SIZE, help="bytes: 256", check=positive)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    def num_params(self) -> int:
        """The parameter count of `GPT(self)`, computed without building it: embeddings,
        12 C^2 + 13 C per block (attention, MLP, two LayerNorms), final LayerNorm, head."""
        C, V = self.n_embd, self.vocab_size
        block = 12 * C * C + 13 * C
        return V * C + self.block_size * C + self.n_layer * block + 2 * C + C * V


# `tiny` is sized for controller training on one CPU core: a 400-step run of
# 64 x 16-byte sequences takes seconds and still gets well past bigram statistics
# (README, results). `small` and `base` are the larger models that policies are
# tested on.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(n_layer=1, n_head=4, n_embd=64, block_size=16),
    "small": ModelConfig(n_layer=2, n_head=4, n_embd=96, block_size=32),
    "base": ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64),
}


def model_preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a preset by name."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, channels
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Byte-level GPT: (B, T) int64 bytes -> (B, T, vocab) logits."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        # Untied output head: with 256 byte tokens it costs little, and a tied head makes
        # the bigram statistics that dominate early byte-level training slower to learn.
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation, drawn from `generator` so a seed fixes the weights."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # LayerNorm gains
                param.fill_(1.0)
            else:
                std = residual_std if name.endswith("proj.weight") else 0.02
                param.normal_(0.0, std, generator=generator)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, T = idx.shape  # (B, T)
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)


def next_byte_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per byte. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
