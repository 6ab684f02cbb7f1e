"""lrpilot's default controller setting the LR of a `lightning.pytorch.Trainer`.

lrpilot's byte-level GPT (the `tiny` preset: 1 layer, 64 wide, 16-byte context) learns
the built-in `pydoc` corpus in a `LightningModule`, and
`lrpilot.integrations.lightning.LRPilotLightningCallback` sets the LR from the policy at every
validation. It prints the LR the policy chose at each validation and the final
validation loss. Needs the extra `pip install 'lrpilot[lightning]'`.

    python examples/lightning.py                       # 400 steps, a validation every 20
    python examples/lightning.py --steps 100 --eval-every 10 --start-lr 1e-2

The wiring: the module returns one optimizer and no LR scheduler from
`configure_optimizers` and logs `val_loss`; the Trainer validates fully before
training (`num_sanity_val_steps=-1`: the policy's L_0); the callback does the rest:

    callback = LRPilotLightningCallback(load_policy("default"), eval_every=20)
    trainer = pl.Trainer(max_steps=400, num_sanity_val_steps=-1, callbacks=[callback])
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This file is called lightning.py: run as a script, its folder is the first entry of
# sys.path, where it would stand in for the `lightning` package itself.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import lightning.pytorch as pl
import torch

from lrpilot.agents import load_policy
from lrpilot.integrations.lightning import LRPilotLightningCallback
from lrpilot.lm.corpus import load_corpus
from lrpilot.lm.model import GPT, ModelConfig, next_byte_loss


class ByteWindows(torch.utils.data.Dataset):
    """Windows of `block_size + 1` bytes of `data` at the given offsets, as (inputs,
    targets): each byte predicted from the ones before it."""

    def __init__(self, data: torch.Tensor, block_size: int, offsets: torch.Tensor) -> None:
        self.windows = data.unfold(0, block_size + 1, 1)  # every window, as a view
        self.offsets = offsets

    @classmethod
    def random(cls, data, block_size: int, count: int, seed: int) -> ByteWindows:
        """`count` windows at seeded random offsets: the training batches."""
        generator = torch.Generator().manual_seed(seed)
        offsets = torch.randint(data.numel() - block_size, (count,), generator=generator)
        return cls(data, block_size, offsets)

    @classmethod
    def spread(cls, data, block_size: int, count: int) -> ByteWindows:
        """`count` windows spread evenly over `data`: the same validation set every time."""
        return cls(data, block_size, torch.linspace(0, data.numel() - block_size - 1, count).long())

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.windows[self.offsets[index]].long()
        return window[:-1], window[1:]


class ByteLanguageModel(pl.LightningModule):
    """lrpilot's GPT with AdamW at one LR, which the policy's callback then sets."""

    def __init__(self, config: ModelConfig, learning_rate: float, seed: int) -> None:
        super().__init__()
        self.model = GPT(config, generator=torch.Generator().manual_seed(seed))
        self.learning_rate = learning_rate

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return next_byte_loss(self.model(inputs), targets)  # the callback reads it

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val_loss", next_byte_loss(self.model(inputs), targets), batch_size=len(inputs))

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, betas=(0.9, 0.95), weight_decay=0.1
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--eval-every", type=int, default=20, help="steps per decision")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    parser.add_argument("--block-size", type=int, default=16, help="bytes per sequence")
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--val-windows", type=int, default=64, help="validation sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (one is fastest for a model this small)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, print the LR path and the final loss; returns them as a dict."""
    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    corpus = load_corpus("pydoc")
    train = ByteWindows.random(
        corpus.train, options.block_size, options.steps * options.batch_size, options.seed
    )
    validation = ByteWindows.spread(corpus.val, options.block_size, options.val_windows)
    config = ModelConfig(
        n_layer=options.n_layer, n_head=4, n_embd=options.n_embd, block_size=options.block_size
    )
    module = ByteLanguageModel(config, options.start_lr, options.seed)
    callback = LRPilotLightningCallback(load_policy("default"), eval_every=options.eval_every)
    trainer = pl.Trainer(
        max_steps=options.steps,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=1.0,
        num_sanity_val_steps=-1,  # a full validation before training: L_0
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    validation_batches = torch.utils.data.DataLoader(validation, batch_size=options.val_windows)
    trainer.fit(
        module,
        torch.utils.data.DataLoader(train, batch_size=options.batch_size),
        validation_batches,
    )
    print(f"lrpilot GPT, {module.model.num_params():,} parameters, on pydoc bytes")
    print(f"{'step':>6}  {'val loss':>9}  LR from this step on")
    for step, val_loss, lr in callback.decisions:
        print(f"{step:>6}  {val_loss:>9.4f}  {lr:.3e}")
    results = trainer.validate(module, validation_batches, verbose=False)
    final_val_loss = float(results[0]["val_loss"])
    print(
        f"final validation loss {final_val_loss:.4f} (nats/byte) after {trainer.global_step} steps"
    )
    return {"decisions": callback.decisions, "final_val_loss": final_val_loss}


if __name__ == "__main__":
    main()
