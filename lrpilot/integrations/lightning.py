"""An lrpilot controller in a `lightning.pytorch.Trainer`: `LRPilotLightningCallback`.

    import lightning.pytorch as pl
    from lrpilot.agents import load_policy
    from lrpilot.integrations.lightning import LRPilotLightningCallback

    trainer = pl.Trainer(
        max_steps=400,
        num_sanity_val_steps=-1,  # a full validation before training: L_0
        callbacks=[LRPilotLightningCallback(load_policy("default"), eval_every=20)],
    )
    trainer.fit(module, train_loader, val_loader)  # module logs self.log("val_loss", ...)

The module's `configure_optimizers` returns one optimizer, at the policy's start LR,
and no LR scheduler (one is refused at fit start: the policy sets the LR). The work is
done by `lrpilot.agents.policy_controller.PolicyController`, as in `PolicyScheduler`,
through `lrpilot.integrations.core.CallbackCore`, which the Hugging Face callback
shares; this module is the wiring to the Trainer's hooks:

- **train losses, per step**: `on_train_batch_end` reads the loss `training_step`
  returned (`outputs["loss"]`: Lightning divides it by `accumulate_grad_batches`), and
  their sum over an optimizer step's batches is that step's loss. They stay tensors
  (no device sync) until the interval's end.
- **gradient norm**: `on_before_optimizer_step`, which Lightning calls before it
  clips the gradients (`gradient_clip_val`), as lrpilot's own runs measure it.
- **update ratio**: the controller's hooks on the optimizer (`SampledUpdateRatio`).
- **when it acts**: every `eval_every` optimizer steps. With `eval_every=`,
  the callback makes the Trainer validate at those steps (at train start it sets the
  Trainer's `val_check_batch` to `eval_every * accumulate_grad_batches` and its
  `check_val_every_n_epoch` to None); without it, the interval is the Trainer's own,
  `Trainer(val_check_interval=N, check_val_every_n_epoch=None)`.
  `on_validation_end` reads the validation loss, the logged metric `val_loss`
  (`monitor=`), and shows the policy the interval. The step budget is the Trainer's
  `max_steps` unless `steps` is given.
- **L_0**: the Trainer's sanity check, when it validates on every validation batch
  (`num_sanity_val_steps=-1`), or `initial_val_loss=`.
- **tokens per step** (a policy that reads the run's sizes): `tokens_per_step=`, or
  counted in `on_train_batch_start` from the first batch times
  `accumulate_grad_batches` and the processes; the first action waits for them.
- **the LR**: each parameter group's LR, written into the optimizer after every step:
  its initial LR times the policy's multiplier.
- **resume**: the callback's `state_dict()` (the controller's state and the current
  interval's losses) goes into Lightning's checkpoints, and `fit(ckpt_path=...)`
  hands it back to `load_state_dict`; a resumed run continues with the LRs of an
  uninterrupted one.
- **data parallel**: every process validates, rank 0 decides, the decision is
  broadcast (see `PolicyController`).

Lightning is an optional extra: without it, importing this module raises a one-line
`ConfigError` naming `pip install 'lrpilot[lightning]'`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lrpilot.errors import ConfigError

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError:  # also when sys.modules["lightning"] is None
    raise ConfigError(
        "lrpilot.integrations.lightning needs the extra: pip install 'lrpilot[lightning]'"
    ) from None

from lrpilot.integrations.core import CallbackCore, LoopSettings, metric_name


class LRPilotLightningCallback(CallbackCore, pl.Callback):
    """Sets a `lightning.pytorch.Trainer`'s LR from a learned lrpilot policy.

    Args:
        policy: an lrpilot `Policy` (`load_policy(path)`).
        monitor: the logged metric that is the validation loss.
        **settings: the `LoopSettings`, each taken from the Trainer when not given:
            `eval_every` (its validation interval, `val_check_interval=N` batches
            with `check_val_every_n_epoch=None`), `steps` (its `max_steps`, else
            its estimated optimizer steps), `start_lr` (the first parameter group's
            initial LR), `initial_val_loss` (the sanity check's validation loss, with
            `num_sanity_val_steps=-1`), `update_ratio_sample`.

    `controller` and `decisions` hold what the policy saw and did (`CallbackCore`).
    """

    def __init__(self, policy: Any, *, monitor: str = "val_loss", **settings: Any) -> None:
        super().__init__(policy, LoopSettings.from_keywords("LRPilotLightningCallback", settings))
        self.monitor = metric_name("monitor", monitor)
        self._sanity_val_loss: float | None = None  # L_0, from the sanity check
        self._pending_state: dict[str, Any] | None = None  # a checkpoint's, until train start

    # -- the Trainer's hooks ----------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a set-up the policy cannot run in, before any step."""
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"LRPilotLightningCallback drives one optimizer, configure_optimizers gave "
                f"{len(trainer.optimizers)}"
            )
        if trainer.lr_scheduler_configs:
            raise ConfigError(
                "LRPilotLightningCallback sets the LR itself: return no LR scheduler from "
                "configure_optimizers"
            )
        if not is_overridden("validation_step", pl_module) or trainer.limit_val_batches == 0:
            raise ConfigError(
                "LRPilotLightningCallback needs validation losses: give the module a "
                "validation_step that logs 'val_loss', and a validation dataloader"
            )
        # (Some strategies hand the callback its checkpoint state only after this hook.)
        resuming = self._pending_state is not None or trainer.ckpt_path is not None
        full_sanity_check = trainer.num_sanity_val_steps == float("inf")
        if not resuming and self.settings.initial_val_loss is None and not full_sanity_check:
            raise ConfigError(
                "LRPilotLightningCallback needs the validation loss before training: use "
                "Trainer(num_sanity_val_steps=-1), or pass initial_val_loss="
            )
        if self.settings.eval_every is None and not _validates_every_n_batches(trainer):
            raise ConfigError(
                "LRPilotLightningCallback needs an interval: pass eval_every=, or use "
                "Trainer(val_check_interval=N, check_val_every_n_epoch=None)"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make the controller (optimizer states are restored by now), restore it on a
        resume or take the first action, and make the Trainer validate on time."""
        accumulate = trainer.accumulate_grad_batches
        if self.settings.eval_every is not None:
            self._validate_every_interval(trainer)
            eval_every = self.settings.eval_every
        else:
            if trainer.val_check_batch % accumulate:
                raise ConfigError(
                    f"val_check_interval ({trainer.val_check_batch} batches) is not a whole "
                    f"number of optimizer steps (accumulate_grad_batches={accumulate})"
                )
            eval_every = trainer.val_check_batch // accumulate
        steps = self.settings.steps
        if steps is None:
            steps = trainer.max_steps if trainer.max_steps > 0 else None
        if steps is None:
            steps = int(trainer.estimated_stepping_batches)
        controller = self._make_controller(
            trainer.optimizers[0], steps=steps, eval_every=eval_every
        )
        if self._pending_state is not None:
            saved, self._pending_state = self._pending_state, None
            self._restore(saved, trainer.global_step)
        else:
            initial = self.settings.initial_val_loss
            if initial is None:
                initial = self._sanity_val_loss
            if initial is None:
                raise ConfigError(
                    f"the sanity check logged no {self.monitor!r}: log it in "
                    f"validation_step, or pass initial_val_loss="
                )
            self._observe(initial)
        controller.apply_lrs()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The Trainer works out its validation batches again when it reloads dataloaders.
        if self.settings.eval_every is not None:
            self._validate_every_interval(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Before the first step, for a policy that reads the run's sizes: count the
        tokens per step from the batch, and take the first action."""
        batches_per_step = trainer.accumulate_grad_batches * trainer.world_size
        if self.controller is not None and self._count_first_batch(batch, batches_per_step):
            self.controller.apply_lrs()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.controller is not None:
            self.controller.record_current_grad_norm()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Keep the batch's loss; after an optimizer step, count it and set the next
        step's LR."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(
                f"LRPilotLightningCallback needs the training loss: training_step must "
                f"return it (a tensor, or a dict with 'loss'), got {type(outputs).__name__}"
            )
        self._add_batch_loss(loss)
        controller = self.controller
        if trainer.global_step == controller.steps_done:  # accumulating: no step yet
            return
        self._end_optimizer_step()
        controller.count_step()
        self._end_sweep_if_due()
        controller.apply_lrs()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In the sanity check: L_0. At every interval's end: show the policy the
        validation loss."""
        if trainer.sanity_checking:
            if self.monitor in trainer.callback_metrics:
                self._sanity_val_loss = float(trainer.callback_metrics[self.monitor])
            return
        if self.controller is None or not self._observation_due(trainer.global_step):
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(
                f"LRPilotLightningCallback needs the logged metric {self.monitor!r}, got "
                f"{', '.join(sorted(trainer.callback_metrics)) or 'none'} (log it in "
                f"validation_step, or set monitor=)"
            )
        self._observe(trainer.callback_metrics[self.monitor])
        self.controller.apply_lrs()

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python data: the controller's state and the interval's losses so far."""
        if self.controller is None:
            return dict(self._pending_state or {})
        return self._checkpoint_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state until train start, when the optimizer is ready."""
        if state_dict:
            self._pending_state = dict(state_dict)

    # -- internals ----------------------------------------------------------------------------

    def _validate_every_interval(self, trainer: pl.Trainer) -> None:
        """Make the Trainer validate every `eval_every` optimizer steps, across epochs."""
        trainer.val_check_batch = self.settings.eval_every * trainer.accumulate_grad_batches
        trainer.check_val_every_n_epoch = None


LRPilotCallback = LRPilotLightningCallback
"""Deprecated alias of `LRPilotLightningCallback`, kept for one release: lrpilot 0.2 drops
it."""


def _validates_every_n_batches(trainer: pl.Trainer) -> bool:
    """Whether the Trainer validates every `val_check_interval` batches, across epochs."""
    return isinstance(trainer.val_check_interval, int) and trainer.check_val_every_n_epoch is None
