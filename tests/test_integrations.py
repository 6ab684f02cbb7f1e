"""The policy in a Hugging Face `Trainer` and in a Lightning `Trainer`: the examples, the
wiring (per-step losses, gradient norms before clipping, the LR), resume, bad set-ups;
and a core install that imports neither framework."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_policy

from lrpilot.agents import load_policy
from lrpilot.errors import ConfigError
from lrpilot.lm.corpus import load_corpus
from lrpilot.lm.model import next_byte_loss
from lrpilot.lm.run_context import RunContext

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """An example script as a module, loaded by path (examples/lightning.py must not
    stand in for the `lightning` package)."""
    spec = importlib.util.spec_from_file_location(
        f"lrpilot_example_{name}", EXAMPLES / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed_lrs(output: str) -> list[float]:
    """The LRs of the lines `step  val_loss  lr` an example prints."""
    return [float(m.group(1)) for m in re.finditer(r"^\s+\d+\s+\d+\.\d+\s+(\S+)$", output, re.M)]


def moving_policy(feature_version: str = "v2"):
    """A policy with random weights that moves the LR at every decision, with a cooldown."""
    return make_policy(
        seed=7,
        action_mode="continuous",
        factor_span=0.2,
        cooldown_fraction=0.3,
        feature_version=feature_version,
    )


def policy_step_lrs(policy, decisions, total_steps: int) -> list[float]:
    """The LR of every step: the policy's LR from its last decision at or before the
    step, cooled down as the policy's cooldown says."""
    lrs = []
    for step in range(total_steps):
        lr = [decided for at, _val_loss, decided in decisions if at <= step][-1]
        lrs.append(policy.applied_lr(lr, step, total_steps=total_steps))
    return lrs


class Unlabelled(torch.utils.data.Dataset):
    """A dataset's inputs without their labels: the model computes no loss on them."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.dataset[index]["input_ids"]}


def test_the_core_imports_neither_framework_and_each_module_names_its_extra():
    code = """
import sys
import lrpilot, lrpilot.agents, lrpilot.integrations
loaded = [m for m in ("transformers", "lightning", "accelerate") if m in sys.modules]
assert not loaded, loaded
sys.modules["transformers"] = sys.modules["lightning"] = None  # as if not installed
from lrpilot.errors import ConfigError
for name in ("hf", "lightning"):
    try:
        __import__(f"lrpilot.integrations.{name}")
    except ConfigError as error:
        print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "lrpilot.integrations.hf needs the extra: pip install 'lrpilot[hf]'",
        "lrpilot.integrations.lightning needs the extra: pip install 'lrpilot[lightning]'",
    ]


# -- Hugging Face ------------------------------------------------------------------------------

HF_STEPS, HF_EVERY = 16, 4


@pytest.fixture
def hf():
    pytest.importorskip("transformers")
    from lrpilot.integrations import hf

    return hf


def hf_trainer(output_dir: Path, *, labels: bool = True, **arguments):
    """A Trainer of a 1-layer, 16-wide GPT-2 on pydoc bytes: 16 steps of 4 sequences,
    an evaluation every 4 steps and before training, a log line every step."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    example = load_example("hf_trainer")
    corpus = load_corpus("pydoc")
    train = example.RandomWindows(corpus.train, 16, HF_STEPS * 4, seed=0)
    validation = example.SpreadWindows(corpus.val, 16, 8)
    if not labels:
        validation = Unlabelled(validation)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    settings = {
        "output_dir": str(output_dir),
        "max_steps": HF_STEPS,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.5,  # clips: the policy must see the norm before clipping
        "eval_strategy": "steps",
        "eval_steps": HF_EVERY,
        "eval_on_start": True,
        "logging_steps": 1,  # HF's own per-step losses and gradient norms, to compare
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    } | arguments
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=TrainingArguments(**settings),
        train_dataset=train,
        eval_dataset=validation,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def hf_step_lrs(trainer) -> list[list[float]]:
    """Records every optimizer step's group LRs, as the optimizer has them when the
    step begins; returns the list it fills."""
    from transformers import TrainerCallback

    lrs: list[list[float]] = []

    class StepLRs(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            lrs.append([group["lr"] for group in optimizer.param_groups])

    trainer.add_callback(StepLRs())
    return lrs


def test_hf_example_trains_and_the_policy_moves_the_lr(hf, capsys):
    example = load_example("hf_trainer")
    result = example.main(
        [
            *("--steps", "30", "--eval-every", "10", "--batch-size", "8"),
            *("--block-size", "16", "--n-layer", "1", "--n-embd", "32", "--val-windows", "16"),
        ]
    )
    output = capsys.readouterr().out
    lrs = printed_lrs(output)
    assert len(lrs) == 4 and len(set(lrs)) > 1, output  # L_0 and steps 10, 20, 30
    assert lrs == pytest.approx([lr for _step, _val, lr in result["decisions"]], rel=1e-3)
    assert "final validation loss" in output


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hf_callback_sees_per_step_losses_and_sets_the_policy_lr(hf, tmp_path, accumulation):
    # With accumulation, each optimizer step is two micro-batches of half the size.
    trainer = hf_trainer(
        tmp_path,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    callback = hf.LRPilotHFCallback(moving_policy()).attach(trainer)
    step_lrs = hf_step_lrs(trainer)
    trainer.train()
    controller = callback.controller
    assert [step for step, _val, _lr in callback.decisions] == [0, 4, 8, 12, 16]
    lrs = policy_step_lrs(callback.policy, callback.decisions, HF_STEPS)
    assert len(set(lrs)) > 4  # actions, then the cooldown
    # Every group (HF's AdamW has two, with and without weight decay) trains at the
    # policy's exact LR, step by step.
    assert step_lrs == [[lr, lr] for lr in lrs]
    # HF's own per-step logs (logging_steps=1) are what the policy saw, interval by
    # interval: train losses, gradient norms before clipping, and the LR it logs.
    logs = {row["step"]: row for row in trainer.state.log_history if "loss" in row}
    last = [logs[step] for step in range(13, 17)]
    stats = controller.last_stats
    assert stats.train_loss_mean == pytest.approx(np.mean([r["loss"] for r in last]), rel=1e-6)
    assert stats.train_loss_std == pytest.approx(np.std([r["loss"] for r in last]), rel=1e-4)
    assert stats.grad_norm == pytest.approx(np.mean([r["grad_norm"] for r in last]), rel=1e-5)
    assert max(r["grad_norm"] for r in last) > 0.5  # so clipping happened
    assert [logs[s + 1]["learning_rate"] for s in range(HF_STEPS)] == pytest.approx(lrs)
    assert 0 < stats.update_ratio < 1


@pytest.mark.parametrize("given", [False, True])
def test_hf_callback_counts_the_tokens_per_step_of_a_policy_that_reads_them(hf, tmp_path, given):
    # Two micro-batches of 2 sequences of 16 tokens per optimizer step: 64 tokens.
    trainer = hf_trainer(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    settings = {"tokens_per_step": 64} if given else {}
    callback = hf.LRPilotHFCallback(moving_policy("v3"), **settings).attach(trainer)
    step_lrs = hf_optimizer_step_lrs(trainer)
    trainer.train()
    context = callback.controller.features.context
    assert context["log_tokens_per_step"] == pytest.approx(math.log(64 / 1e3))
    assert [step for step, _val, _lr in callback.decisions] == [0, 4, 8, 12, 16]
    lrs = policy_step_lrs(callback.policy, callback.decisions, HF_STEPS)
    assert step_lrs == [[lr, lr] for lr in lrs]  # the first action came before step 1


def test_hf_callback_starts_a_policy_with_a_prior_from_the_sizes_it_counts(hf, tmp_path):
    # The policy's rule starts a range test from a prior of the run's sizes: the
    # callback waits for the first batch's tokens (64 per step), whatever the feature set.
    trainer = hf_trainer(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    policy = moving_policy("v2").with_action(
        range_start=0.1, prior_lr=0.1, prior_fan_in_power=-1.0, prior_tokens_power=0.5
    )
    callback = hf.LRPilotHFCallback(policy).attach(trainer)
    trainer.train()
    context = RunContext.measure(callback.controller.parameters(), tokens_per_step=64)
    prior = 0.1 * (context.mean_fan_in / 64) ** -1.0 * (64 / 1e3) ** 0.5
    assert callback.decisions[0][2] == pytest.approx(0.1 * prior, rel=1e-12)
    assert callback.controller.start_lr == trainer.args.learning_rate  # the user's, unused


def hf_optimizer_step_lrs(trainer) -> list[list[float]]:
    """Records the group LRs each optimizer step trains at (the first action of a policy
    that counts the tokens per step comes after `on_step_begin`, in the first
    micro-batch); returns the list it fills."""
    from transformers import TrainerCallback

    lrs: list[list[float]] = []

    class OptimizerStepLRs(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            lrs.append([group["lr"] for group in optimizer.param_groups])

    trainer.add_callback(OptimizerStepLRs())
    return lrs


def test_hf_callback_runs_the_policys_lr_sweep_and_acts_after_it(hf, tmp_path):
    from lrpilot.lm.sweep import sweep_lrs

    policy = moving_policy().with_action(sweep_fraction=0.2)  # 3 of 16 steps
    trainer = hf_trainer(tmp_path)
    callback = hf.LRPilotHFCallback(policy).attach(trainer)
    step_lrs = hf_step_lrs(trainer)
    trainer.train()
    # L_0, the sweep's end (an observation of its own), then the intervals' ends
    assert [step for step, _val, _lr in callback.decisions] == [0, 3, 4, 8, 12, 16]
    swept = sweep_lrs(3, policy.action.lr_min, policy.action.lr_max)
    np.testing.assert_allclose(step_lrs[:3], [[lr, lr] for lr in swept], rtol=1e-12)
    assert callback.controller.sweep is None and callback.controller.steps_done == HF_STEPS
    assert math.isnan(callback.decisions[1][1])  # the sweep ends without an evaluation


def test_lightning_callback_runs_the_policys_lr_sweep_and_acts_after_it(pl):
    from lrpilot.integrations.lightning import LRPilotLightningCallback
    from lrpilot.lm.sweep import sweep_lrs

    policy = moving_policy().with_action(sweep_fraction=0.2)  # 3 of 16 steps
    module = recording_module(pl)
    callback = LRPilotLightningCallback(policy, eval_every=PL_EVERY)
    pl_fit(pl, module, callback)
    assert [step for step, _val, _lr in callback.decisions] == [0, 3, 4, 8, 12, 16]
    swept = sweep_lrs(3, policy.action.lr_min, policy.action.lr_max)
    np.testing.assert_allclose(module.step_lrs[:3], swept, rtol=1e-12)


@pytest.mark.parametrize("new_policy", [moving_policy, lambda: load_policy("priorhold")])
def test_hf_resume_continues_with_the_uninterrupted_lrs(hf, tmp_path, new_policy):
    # A learned policy, and a fixed rule whose state (it rose once and holds) is in the
    # checkpoint: a fresh priorhold would rise again at step 8.
    saving = {"save_strategy": "steps", "save_steps": 6}  # mid-interval: steps 4 to 8
    uninterrupted = hf_trainer(tmp_path / "first", **saving)
    first = hf.LRPilotHFCallback(new_policy()).attach(uninterrupted)
    first_lrs = hf_step_lrs(uninterrupted)
    uninterrupted.train()

    resumed = hf_trainer(tmp_path / "second", **saving)
    second = hf.LRPilotHFCallback(new_policy()).attach(resumed)
    second_lrs = hf_step_lrs(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-6"))
    assert second_lrs == first_lrs[6:]
    assert second.decisions == first.decisions[-3:]  # steps 8, 12 and 16


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_scheduler_type": "linear"}, "use TrainingArguments(lr_scheduler_type='constant')"),
        ({"warmup_steps": 2}, "use warmup_steps=0, got 2"),
        ({"eval_on_start": False}, "use TrainingArguments(eval_on_start=True)"),
        ({"eval_strategy": "no"}, "pass eval_every=, or use eval_strategy='steps'"),
        ({"eval_dataset": None}, "give the Trainer an eval_dataset"),
        ({"attach": False}, "LRPilotHFCallback(policy).attach(trainer), not callbacks=[...]"),
        ({"labels": False}, "needs 'eval_loss' in the evaluation metrics"),
    ],
)
def test_hf_bad_setups_stop_before_the_first_step(hf, tmp_path, settings, message):
    attach, labels = settings.pop("attach", True), settings.pop("labels", True)
    no_eval_dataset = settings.pop("eval_dataset", "") is None
    trainer = hf_trainer(tmp_path, labels=labels, **settings)
    if no_eval_dataset:
        trainer.eval_dataset = None
    callback = hf.LRPilotHFCallback(moving_policy())
    if attach:
        callback.attach(trainer)
    else:
        trainer.add_callback(callback)
    with pytest.raises(ConfigError) as error:
        trainer.train()
    assert message in str(error.value) and "\n" not in str(error.value)
    assert trainer.state.global_step == 0


def test_hf_and_lightning_callbacks_refuse_what_is_not_a_policy(tmp_path):
    callbacks = []
    if importlib.util.find_spec("transformers"):
        from lrpilot.integrations import hf

        assert hf.LRPilotCallback is hf.LRPilotHFCallback  # the alias kept for one release
        callbacks.append((hf.LRPilotHFCallback, "metric"))
    if importlib.util.find_spec("lightning"):
        from lrpilot.integrations import lightning

        assert lightning.LRPilotCallback is lightning.LRPilotLightningCallback
        callbacks.append((lightning.LRPilotLightningCallback, "monitor"))
    for callback, metric_keyword in callbacks:
        with pytest.raises(ConfigError, match="policy must be an lrpilot Policy"):
            callback("policy.safetensors")
        with pytest.raises(ConfigError, match="eval_every must be a positive integer"):
            callback(moving_policy(), eval_every=0)
        with pytest.raises(ConfigError, match=f"{callback.__name__} takes no setting total_steps;"):
            callback(moving_policy(), total_steps=10)
        with pytest.raises(ConfigError, match=f"{metric_keyword} must be the name of a metric"):
            callback(moving_policy(), **{metric_keyword: ""})
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "missing.safetensors")
    (tmp_path / "other.safetensors").write_bytes(b"not a policy")
    with pytest.raises(ConfigError, match="not an lrpilot policy file"):
        load_policy(tmp_path / "other.safetensors")


# -- Lightning ---------------------------------------------------------------------------------

PL_STEPS, PL_EVERY = 16, 4


@pytest.fixture
def pl():
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    return pl


def recording_module(pl, **changes):
    """The example's byte GPT (1 layer, 16 wide), recording each step's loss, gradient
    norm before clipping and LR, as it trains."""
    from lrpilot.lm.model import ModelConfig

    example = load_example("lightning")

    class Recording(example.ByteLanguageModel):
        def __init__(self) -> None:
            super().__init__(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 3e-3, 0)
            self.batch_losses, self.grad_norms, self.step_lrs = [], [], []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.batch_losses.append(loss.item())
            return loss

        def on_before_optimizer_step(self, optimizer):
            grads = [p.grad for p in self.parameters()]
            self.grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))
            self.step_lrs.append(optimizer.param_groups[0]["lr"])

    for name, method in changes.items():
        setattr(Recording, name, method)
    return Recording()


def pl_fit(pl, module, callback, *, max_steps=PL_STEPS, ckpt_path=None, **settings):
    """Fit `module` on pydoc bytes: 4 sequences a batch, 6 batches an epoch, in order."""
    example = load_example("lightning")
    corpus = load_corpus("pydoc")
    train = example.ByteWindows.spread(corpus.train, 16, 24)
    validation = example.ByteWindows.spread(corpus.val, 16, 8)
    trainer = pl.Trainer(
        **{
            "max_steps": max_steps,
            "accelerator": "cpu",
            "devices": 1,
            "gradient_clip_val": 0.5,
            "num_sanity_val_steps": -1,
            "callbacks": [callback],
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        }
        | settings
    )
    trainer.fit(
        module,
        torch.utils.data.DataLoader(train, batch_size=4),
        torch.utils.data.DataLoader(validation, batch_size=8),
        ckpt_path=ckpt_path,
    )
    return trainer


def test_lightning_example_trains_and_the_policy_moves_the_lr(pl, capsys):
    example = load_example("lightning")
    result = example.main(
        ["--steps", "30", "--eval-every", "10", "--batch-size", "8", "--val-windows", "16"]
    )
    output = capsys.readouterr().out
    lrs = printed_lrs(output)
    assert len(lrs) == 4 and len(set(lrs)) > 1, output
    assert lrs == pytest.approx([lr for _step, _val, lr in result["decisions"]], rel=1e-3)
    assert "final validation loss" in output


def test_lightning_callback_sees_per_step_losses_and_sets_the_policy_lr(pl):
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    module = recording_module(pl)
    callback = LRPilotLightningCallback(moving_policy(), eval_every=PL_EVERY)
    pl_fit(pl, module, callback, accumulate_grad_batches=2)
    controller = callback.controller
    assert [step for step, _val, _lr in callback.decisions] == [0, 4, 8, 12, 16]
    assert module.step_lrs == policy_step_lrs(callback.policy, callback.decisions, PL_STEPS)
    assert len(set(module.step_lrs)) > 4
    # Each step's loss is the mean of its two batches' losses.
    step_losses = np.mean(np.reshape(module.batch_losses, (PL_STEPS, 2)), axis=1)
    stats = controller.last_stats
    assert stats.train_loss_mean == pytest.approx(step_losses[-4:].mean(), rel=1e-6)
    assert stats.train_loss_std == pytest.approx(step_losses[-4:].std(), rel=1e-4)
    assert stats.grad_norm == pytest.approx(np.mean(module.grad_norms[-4:]), rel=1e-5)
    assert max(module.grad_norms[-4:]) > 0.5  # so clipping happened
    assert 0 < stats.update_ratio < 1


@pytest.mark.parametrize("given", [False, True])
def test_lightning_callback_counts_the_tokens_per_step_of_a_policy_that_reads_them(pl, given):
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    module = recording_module(pl)
    settings = {"tokens_per_step": 128} if given else {}
    callback = LRPilotLightningCallback(moving_policy("v3"), eval_every=PL_EVERY, **settings)
    pl_fit(pl, module, callback, accumulate_grad_batches=2)  # 2 x 4 x 16 tokens a step
    context = callback.controller.features.context
    assert context["log_tokens_per_step"] == pytest.approx(math.log(128 / 1e3))
    assert [step for step, _val, _lr in callback.decisions] == [0, 4, 8, 12, 16]
    assert module.step_lrs == policy_step_lrs(callback.policy, callback.decisions, PL_STEPS)


def test_a_loop_policy_that_reads_the_sizes_refuses_a_batch_it_cannot_count():
    from lrpilot.agents.context import batch_items

    assert batch_items({"input_ids": torch.zeros(2, 16, dtype=torch.long)}) == 32
    assert batch_items((torch.zeros(4, 16, dtype=torch.long), torch.zeros(4, 16))) == 64
    assert batch_items([torch.randn(8, 3, 32, 32), torch.zeros(8)]) == 8  # examples
    for batch in ({}, "text", torch.tensor(3)):
        with pytest.raises(ConfigError, match="pass tokens_per_step="):
            batch_items(batch)


def test_lightning_callback_acts_at_the_trainers_own_validation_interval(pl):
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    callback = LRPilotLightningCallback(moving_policy())
    pl_fit(pl, recording_module(pl), callback, val_check_interval=8, check_val_every_n_epoch=None)
    assert [step for step, _val, _lr in callback.decisions] == [0, 8, 16]


def test_lightning_resume_continues_with_the_uninterrupted_lrs(pl, tmp_path):
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    def callback():
        return LRPilotLightningCallback(moving_policy(), eval_every=PL_EVERY, steps=PL_STEPS)

    uninterrupted = recording_module(pl)
    pl_fit(pl, uninterrupted, callback())
    # The first epoch (6 steps: mid-interval) in one fit, the rest in another.
    first_part = recording_module(pl)
    trainer = pl_fit(pl, first_part, callback(), max_steps=6)
    trainer.save_checkpoint(tmp_path / "step6.ckpt")
    second_part = recording_module(pl)
    resumed = callback()
    pl_fit(pl, second_part, resumed, ckpt_path=tmp_path / "step6.ckpt")
    assert first_part.step_lrs + second_part.step_lrs == uninterrupted.step_lrs
    assert [d[0] for d in resumed.decisions] == [8, 12, 16]


def _with_scheduler(self):
    optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3)
    return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 5)]


def _logs_another_name(self, batch, batch_idx):
    inputs, targets = batch
    self.log("valid_loss", next_byte_loss(self.model(inputs), targets), batch_size=len(inputs))


@pytest.mark.parametrize(
    ("changes", "settings", "message"),
    [
        ({"configure_optimizers": _with_scheduler}, {}, "return no LR scheduler"),
        ({"validation_step": _logs_another_name}, {}, "the sanity check logged no 'val_loss'"),
        ({}, {"num_sanity_val_steps": 2}, "use Trainer(num_sanity_val_steps=-1)"),
        ({}, {"limit_val_batches": 0}, "LRPilotLightningCallback needs validation losses"),
        ({}, {"no interval": True}, "pass eval_every=, or use Trainer(val_check_interval=N"),
    ],
)
def test_lightning_bad_setups_stop_before_the_first_step(pl, changes, settings, message):
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    interval = None if settings.pop("no interval", False) else PL_EVERY
    module = recording_module(pl, **changes)
    with pytest.raises(ConfigError) as error:
        pl_fit(
            pl,
            module,
            LRPilotLightningCallback(moving_policy(), eval_every=interval),
            **settings,
        )
    assert message in str(error.value) and "\n" not in str(error.value)
    assert module.batch_losses == []
