"""An lrpilot controller in a Hugging Face `transformers.Trainer`: `LRPilotHFCallback`.

    from lrpilot.agents import load_policy
    from lrpilot.integrations.hf import LRPilotHFCallback

    args = TrainingArguments(
        ...,
        learning_rate=1e-3,            # the policy's start LR
        lr_scheduler_type="constant",  # the policy sets the LR; no other schedule on top
        eval_strategy="steps",
        eval_steps=20,                 # the policy acts at every evaluation
        eval_on_start=True,            # the validation loss before training: L_0
    )
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val)
    LRPilotHFCallback(load_policy("default")).attach(trainer)
    trainer.train()

`attach(trainer)` adds the callback to the trainer and wraps the trainer's
`training_step`; pass the callback through `attach`, not `callbacks=[...]` (a
callback that was not attached stops the run at train begin, with a one-line error).
The work is done by `lrpilot.agents.policy_controller.PolicyController`, as in
`PolicyScheduler`, through `lrpilot.integrations.core.CallbackCore`, which the
Lightning callback shares; this module is the wiring to the Trainer:

- **train losses, per step**: the wrapped `training_step` keeps each micro-batch's
  loss (a tensor, no device sync), and their sum over an optimizer step is that
  step's loss: what the Trainer itself adds up for its logged `loss`, which is only an
  average over `logging_steps`. So the std and slope features see per-step losses, as
  in training, whatever `logging_steps` is and whatever `compute_loss` does.
- **gradient norm**: measured in the wrapped `training_step` after the backward pass
  of an optimizer step's last micro-batch, before the Trainer clips the gradients
  (`max_grad_norm`), as lrpilot's own runs measure it.
- **update ratio**: the controller's hooks on the optimizer inside accelerate's
  wrapper (`SampledUpdateRatio`).
- **when it acts**: at every `eval_every` steps (its argument; by default the
  Trainer's `eval_steps` with `eval_strategy="steps"`). At each such step
  `on_step_end` asks the Trainer to evaluate (`control.should_evaluate`), and
  `on_evaluate` reads the validation loss, the metric `eval_loss` (`metric=`),
  and shows the policy the interval. Evaluations at other steps are ignored.
  The run's step budget is the Trainer's `max_steps` unless `steps` is given.
- **L_0**: the evaluation the Trainer runs before training with
  `eval_on_start=True`, or `initial_val_loss=`.
- **tokens per step** (a policy that reads the run's sizes): `tokens_per_step=`, or
  counted in the wrapped `training_step` from the first micro-batch (its `input_ids`)
  times `gradient_accumulation_steps` and the processes; the first action waits for
  them.
- **the LR**: the Trainer's scheduler must be `lr_scheduler_type="constant"` (any
  other, or a warmup, is refused at train begin: the policy has its own warmup and
  cooldown). That scheduler is a `LambdaLR`; the callback makes its factor the
  policy's multiplier, so it computes the policy's LR at every step and logs it as
  `learning_rate`, and `on_step_end` writes each group's exact LR for the next step
  (its initial LR times the multiplier) into the optimizer.
- **resume**: the controller's state, with the current interval's losses, is kept in
  `TrainerState.stateful_callbacks["lrpilot"]`, which the Trainer writes into every
  checkpoint's `trainer_state.json` and reads back with
  `train(resume_from_checkpoint=...)`; a resumed run continues with the LRs of an
  uninterrupted one. (It is not an `ExportableState`: the Trainer would rebuild the
  callback from JSON, without its policy.)
- **data parallel**: every process evaluates, rank 0 decides, the decision is
  broadcast (see `PolicyController`).

Transformers is an optional extra: without it, importing this module raises a
one-line `ConfigError` naming `pip install 'lrpilot[hf]'`.
"""

from __future__ import annotations

from typing import Any

import torch

from lrpilot.errors import ConfigError

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # also when sys.modules["transformers"] is None
    raise ConfigError(
        "lrpilot.integrations.hf needs the extra: pip install 'lrpilot[hf]'"
    ) from None

from lrpilot.integrations.core import CallbackCore, LoopSettings, metric_name

STATE_KEY = "lrpilot"  # the callback's entry in TrainerState.stateful_callbacks


class LRPilotHFCallback(CallbackCore, TrainerCallback):
    """Sets a `transformers.Trainer`'s LR from a learned lrpilot policy.

    Args:
        policy: an lrpilot `Policy` (`load_policy(path)`).
        metric: the evaluation metric that is the validation loss.
        **settings: the `LoopSettings`, each taken from the Trainer when not given:
            `eval_every` (its `eval_steps`, with `eval_strategy="steps"`),
            `steps` (its `max_steps`), `start_lr` (the first parameter group's
            initial LR, `learning_rate`), `initial_val_loss` (its evaluation before
            training, `eval_on_start=True`), `update_ratio_sample`.

    `controller` and `decisions` hold what the policy saw and did (`CallbackCore`).
    """

    def __init__(self, policy: Any, *, metric: str = "eval_loss", **settings: Any) -> None:
        super().__init__(policy, LoopSettings.from_keywords("LRPilotHFCallback", settings))
        self.metric = metric_name("metric", metric)
        self._trainer: Trainer | None = None
        self._lr_scheduler: Any = None

    def attach(self, trainer: Trainer) -> LRPilotHFCallback:
        """Add this callback to `trainer` and wrap its `training_step` to read each
        step's loss and gradient norm; returns the callback."""
        if not isinstance(trainer, Trainer):
            raise ConfigError(
                f"attach() takes a transformers.Trainer, got {type(trainer).__name__}"
            )
        if self._trainer is not None:
            raise ConfigError("this LRPilotHFCallback is attached to a Trainer already")
        self._trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        original_training_step = trainer.training_step

        def training_step(*args: Any, **kwargs: Any) -> torch.Tensor:
            self._before_training_step(args[1] if len(args) > 1 else kwargs["inputs"])
            loss = original_training_step(*args, **kwargs)
            self._after_training_step(loss)
            return loss

        trainer.training_step = training_step
        return self

    # -- the Trainer's events -------------------------------------------------------------------

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        """Check the set-up, make the controller, restore it on a resume, install the LR."""
        if self._trainer is None:
            raise ConfigError(
                "LRPilotHFCallback needs the per-step training losses: add it with "
                "LRPilotHFCallback(policy).attach(trainer), not callbacks=[...]"
            )
        scheduler_type = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        if scheduler_type != "constant":
            raise ConfigError(
                f"LRPilotHFCallback sets the LR itself: use TrainingArguments("
                f"lr_scheduler_type='constant'), got {scheduler_type!r}"
            )
        if args.get_warmup_steps(state.max_steps) > 0:
            raise ConfigError(
                f"LRPilotHFCallback sets the LR itself (the policy has its own warmup): "
                f"use warmup_steps=0, got {args.warmup_steps!r}"
            )
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ConfigError(
                f"LRPilotHFCallback needs the Trainer's own constant scheduler, got "
                f"{type(lr_scheduler).__name__} (do not pass a scheduler in optimizers=)"
            )
        eval_dataset = self._trainer.eval_dataset
        if eval_dataset is None:
            raise ConfigError(
                "LRPilotHFCallback needs validation losses: give the Trainer an eval_dataset"
            )
        if isinstance(eval_dataset, dict) and self.metric == "eval_loss":
            raise ConfigError(
                f"the Trainer's eval_dataset holds {len(eval_dataset)} named sets: pass "
                f"metric='eval_<name>_loss' to LRPilotHFCallback for the one the policy reads"
            )
        eval_every = self.settings.eval_every
        if eval_every is None:
            strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
            if strategy != "steps":
                raise ConfigError(
                    f"LRPilotHFCallback needs an interval: pass eval_every=, or use "
                    f"eval_strategy='steps' with eval_steps, got eval_strategy={strategy!r}"
                )
            eval_every = int(state.eval_steps)
        resumed = state.global_step > 0
        if not resumed and self.settings.initial_val_loss is None and not args.eval_on_start:
            raise ConfigError(
                "LRPilotHFCallback needs the validation loss before training: use "
                "TrainingArguments(eval_on_start=True), or pass initial_val_loss="
            )
        controller = self._make_controller(
            _inner_optimizer(optimizer),
            steps=self.settings.steps or state.max_steps,
            eval_every=eval_every,
        )
        self._lr_scheduler = lr_scheduler

        # The scheduler's factor is the policy's multiplier, at the step it is asked for.
        def policy_multiplier(step: int) -> float:
            return controller.multiplier(step)

        lr_scheduler.lr_lambdas = [policy_multiplier] * len(optimizer.param_groups)
        if resumed:
            self._restore_from(state)
        elif self.settings.initial_val_loss is not None:
            self._observe(self.settings.initial_val_loss)
        self._write_lrs()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        """Count the step, set the next step's LR, and ask for an evaluation when the
        policy is due to act."""
        controller = self.controller
        controller.count_step()
        if controller.steps_done != state.global_step:
            raise ConfigError(
                f"LRPilotHFCallback counted {controller.steps_done} steps, the Trainer "
                f"{state.global_step} (was it attached after training started?)"
            )
        self._end_sweep_if_due()
        self._write_lrs()
        if controller.is_interval_end(state.global_step):
            control.should_evaluate = True
        if control.should_save:
            self._save(state)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """At L_0 and at every interval's end: show the policy the validation loss."""
        if self.controller is None:  # trainer.evaluate() outside training
            return control
        if not self._observation_due(state.global_step):  # the Trainer's own evaluation
            return control
        metrics = metrics or {}
        if self.metric not in metrics:
            if isinstance(self._trainer.eval_dataset, dict):  # another named eval set
                return control
            raise ConfigError(
                f"LRPilotHFCallback needs {self.metric!r} in the evaluation metrics, got "
                f"{', '.join(sorted(metrics)) or 'none'} (does the model return a loss on the "
                f"eval_dataset's labels? set metric= for another name)"
            )
        self._observe(metrics[self.metric])
        self._write_lrs()
        self._save(state)  # the checkpoint after this evaluation holds the decision
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._save(state)
        return control

    # -- internals ------------------------------------------------------------------------------

    def _before_training_step(self, inputs: Any) -> None:
        """Before the first step, for a policy that reads the run's sizes: count the
        tokens per step from the micro-batch, and take the first action."""
        if self.controller is None:
            return
        args = self._trainer.args
        batches_per_step = args.gradient_accumulation_steps * args.world_size
        if self._count_first_batch(inputs, batches_per_step):
            self._write_lrs()

    @torch.no_grad()
    def _after_training_step(self, loss: torch.Tensor) -> None:
        """After one micro-batch's forward and backward: keep its loss; at an optimizer
        step's last micro-batch, the step's loss and gradient norm (before clipping)."""
        if self.controller is None:
            return
        self._add_batch_loss(loss)
        if self._trainer.accelerator.sync_gradients:
            self._end_optimizer_step()
            self.controller.record_current_grad_norm()

    def _write_lrs(self) -> None:
        """Each group's LR for the next step, in the optimizer and as the scheduler's."""
        lrs = self.controller.apply_lrs()
        self._lr_scheduler._last_lr = list(lrs)

    def _save(self, state) -> None:
        state.stateful_callbacks[STATE_KEY] = self._checkpoint_state()

    def _restore_from(self, state) -> None:
        saved = state.stateful_callbacks.get(STATE_KEY)
        if saved is None:
            raise ConfigError(
                f"the checkpoint at step {state.global_step} holds no LRPilotHFCallback "
                f"state (key {STATE_KEY!r} of trainer_state.json's stateful_callbacks)"
            )
        self._restore(saved, state.global_step)


LRPilotCallback = LRPilotHFCallback
"""Deprecated alias of `LRPilotHFCallback`, kept for one release: lrpilot 0.2 drops it."""


def _inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer itself: accelerate wraps it, and calls the inner one's step."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer
