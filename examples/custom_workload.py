"""A user's own training as an lrpilot workload: a GRU language model on sequences it
makes itself (a fixed random Markov chain over 32 symbols), trained with Adam.

    lrpilot replay --policy default --workload examples/custom_workload.py:make_run \
        --seeds 1 --steps 100 --eval-every 20 --out runs/custom

`make_run(seed)` returns `lrpilot.RunParts`: the model, its optimizer, the training
batches, the loss of a batch, and the validation and test losses. lrpilot trains it
and measures the statistics the controller sees (gradient norm, update ratio,
train-loss mean, std and slope, non-finite steps) itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrpilot import RunParts

VOCAB, LENGTH, BATCH = 32, 24, 32  # symbols, sequence length, sequences per step
CHAIN_SEED = 1234  # the data's source: one Markov chain for every run


def transition_matrix() -> torch.Tensor:
    """(VOCAB, VOCAB) row-stochastic: the chain every sequence is drawn from."""
    generator = torch.Generator().manual_seed(CHAIN_SEED)
    return torch.softmax(2.0 * torch.randn(VOCAB, VOCAB, generator=generator), dim=1)


def sample_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, LENGTH + 1) symbol sequences of the chain."""
    transitions = transition_matrix()
    x = torch.empty(n, LENGTH + 1, dtype=torch.long)
    x[:, 0] = torch.randint(VOCAB, (n,), generator=generator)
    for t in range(LENGTH):
        x[:, t + 1] = torch.multinomial(transitions[x[:, t]], 1, generator=generator).squeeze(1)
    return x


class GRULanguageModel(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, VOCAB)
        hidden, _ = self.gru(self.embed(x))
        return self.head(hidden)


def make_run(seed: int) -> RunParts:
    """One seeded run: the weights and the batch order depend on `seed`; the validation
    and test sequences are the same for every run."""
    with torch.random.fork_rng():  # nn.Module initialises from the global RNG
        torch.manual_seed(seed)
        model = GRULanguageModel()
    batch_generator = torch.Generator().manual_seed(10_000 + seed)
    validation = sample_sequences(256, torch.Generator().manual_seed(1))
    test = sample_sequences(2048, torch.Generator().manual_seed(2))

    def batches():
        while True:
            yield sample_sequences(BATCH, batch_generator)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    return RunParts(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        batches=batches(),
        loss=loss,
        validation_loss=lambda: loss(validation).item(),
        test_loss=lambda: loss(test).item(),
        test_items=test[:, 1:].numel(),
        items_in=lambda batch: batch[:, 1:].numel(),  # predicted symbols per step
        grad_clip=1.0,
    )
