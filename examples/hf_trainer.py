"""lrpilot's default controller setting the LR of a Hugging Face `transformers.Trainer`.

A small GPT-2 (`GPT2LMHeadModel` built from a `GPT2Config`, vocabulary 256: one token
per byte; nothing is downloaded) learns the built-in `pydoc` corpus with the Trainer,
and `lrpilot.integrations.hf.LRPilotHFCallback` sets the LR from the policy at every
evaluation. It prints the LR the policy chose at each evaluation and the final
validation loss. Needs the extra `pip install 'lrpilot[hf]'`.

    python examples/hf_trainer.py                       # 400 steps, an evaluation every 20
    python examples/hf_trainer.py --steps 100 --eval-every 10 --start-lr 1e-2

The wiring is three settings of `TrainingArguments` and one line:

    args = TrainingArguments(..., learning_rate=START_LR, lr_scheduler_type="constant",
                             eval_strategy="steps", eval_steps=20, eval_on_start=True)
    trainer = Trainer(model=model, args=args, train_dataset=..., eval_dataset=...)
    LRPilotHFCallback(load_policy("default")).attach(trainer)
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from lrpilot.agents import load_policy
from lrpilot.integrations.hf import LRPilotHFCallback
from lrpilot.lm.corpus import VOCAB_SIZE, load_corpus


class RandomWindows(torch.utils.data.Dataset):
    """`count` windows of `block_size` bytes at seeded random offsets of `data`; the
    model predicts each byte from the ones before (`labels` are the inputs: GPT-2 shifts
    them itself)."""

    def __init__(self, data: torch.Tensor, block_size: int, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.windows = data.unfold(0, block_size, 1)  # every window, as a view
        self.offsets = torch.randint(self.windows.size(0), (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.windows[self.offsets[index]].long()
        return {"input_ids": window, "labels": window}


class SpreadWindows(RandomWindows):
    """`count` windows spread evenly over `data`: the same validation set every time."""

    def __init__(self, data: torch.Tensor, block_size: int, count: int) -> None:
        self.windows = data.unfold(0, block_size, 1)
        self.offsets = torch.linspace(0, self.windows.size(0) - 1, count).long()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--eval-every", type=int, default=20, help="steps per decision")
    parser.add_argument("--start-lr", type=float, default=1e-3, help="the untuned start LR")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--block-size", type=int, default=32, help="bytes per sequence")
    parser.add_argument("--n-layer", type=int, default=2)
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
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    options = parse_args(argv)
    torch.set_num_threads(options.threads)
    corpus = load_corpus("pydoc")
    train = RandomWindows(
        corpus.train, options.block_size, options.steps * options.batch_size, options.seed
    )
    validation = SpreadWindows(corpus.val, options.block_size, options.val_windows)
    torch.manual_seed(options.seed)  # the model's initial weights
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=options.block_size,
        n_embd=options.n_embd,
        n_layer=options.n_layer,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=options.steps,
            per_device_train_batch_size=options.batch_size,
            per_device_eval_batch_size=options.val_windows,
            learning_rate=options.start_lr,  # the policy's start LR
            lr_scheduler_type="constant",  # the policy sets the LR
            weight_decay=0.1,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            eval_strategy="steps",
            eval_steps=options.eval_every,  # the policy acts at every evaluation
            eval_on_start=True,  # L_0: the validation loss before training
            logging_steps=options.eval_every,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=options.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation)
        trainer.remove_callback(PrinterCallback)  # the lines below say what matters
        callback = LRPilotHFCallback(load_policy("default")).attach(trainer)
        trainer.train()
        final_val_loss = trainer.evaluate()["eval_loss"]
    print(f"GPT-2, {sum(p.numel() for p in model.parameters()):,} parameters, on pydoc bytes")
    print(f"{'step':>6}  {'val loss':>9}  LR from this step on")
    for step, val_loss, lr in callback.decisions:
        print(f"{step:>6}  {val_loss:>9.4f}  {lr:.3e}")
    print(f"final validation loss {final_val_loss:.4f} (nats/byte) after {options.steps} steps")
    return {"decisions": callback.decisions, "final_val_loss": final_val_loss}


if __name__ == "__main__":
    main()
