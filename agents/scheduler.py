"""`PolicyScheduler`: an lrpilot controller (a learned policy or a fixed rule) as a
PyTorch LR scheduler.

Call `step()` after every `optimizer.step()`, as with any scheduler, and
`observe(train_losses, val_loss)` at every evaluation, every `eval_every` steps:

    policy = load_policy("default")  # the rule priorhold: it needs the tokens per step
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = PolicyScheduler(optimizer, policy, steps=4000, eval_every=100,
                                tokens_per_step=batch_size * block_size)
    scheduler.observe(val_loss=evaluate(model))  # L_0: the policy's first action
    losses = []
    for step in range(4000):
        loss = loss_fn(model(x[step]), y[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())  # tensors: no device sync at every step
        if (step + 1) % 100 == 0 or step + 1 == 4000:
            scheduler.observe(losses, evaluate(model))  # or scheduler.step({...})
            losses = []

A policy whose rule has a rolled-back LR sweep (`sweep_fraction`) first trains its
sweep's steps and needs `observe(losses)` after the last of them: call `observe` when
`scheduler.controller.is_interval_end(step + 1)`, which covers both.

The work is done by `lrpilot.agents.policy_controller.PolicyController`, whose
docstring says how the LR is set, what it measures itself (the gradient norm, the
update ratio) and what it does under `torch.distributed`; this class is its wiring
to the `LRScheduler` interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lrpilot.agents.measurements import UPDATE_RATIO_SAMPLE, TrainLoss
from lrpilot.agents.policy_controller import PolicyController
from lrpilot.errors import ConfigError
from lrpilot.lm.run import IntervalStats


class PolicyScheduler(LRScheduler):
    """Sets the LR from a learned lrpilot policy, once per evaluation interval.

    Args:
        optimizer: any torch optimizer. Every param group's LR becomes its initial
            LR x (policy LR / `start_lr`), so groups keep their ratios.
        policy: an lrpilot `Policy` (`load_policy(path)`), a fixed rule
            (`load_policy("priorhold")`), or any object with `act`,
            `next_lr` (with the keyword `interval`: the interval it sets), `applied_lr`,
            `lr_min`, `lr_max`, `masked_features` and `feature_version`.
        steps: the run's optimizer steps (the `progress` feature is step / T).
        eval_every: steps between observations; the last interval takes the rest.
        start_lr: the LR the policy starts from; the first group's initial LR by
            default. Clipped to the policy's range, as the env does.
        initial_val_loss: L_0, the validation loss before training. If given, the
            policy's first action is taken now; if not, call `observe(val_loss=L_0)`
            before the first `step()`.
        update_ratio_sample: elements per tensor the update ratio is estimated from
            (`SampledUpdateRatio`); None: exact, from a copy of every weight.
        measure_grad_norm: measure the gradient norm at every `optimizer.step()`. Pass
            False when every `observe()` gets `grad_norm=` (a loop that clips passes
            the mean of `clip_grad_norm_`'s returns): the hook then reads no gradients.
        tokens_per_step: the tokens one optimizer step trains on (e.g. batch size x
            sequence length x accumulation steps x processes), or the examples for a
            model whose batch is not token sequences. Needed by a policy that reads
            the run's sizes (its feature set, or its rule's prior; `lrpilot.agents.context`);
            without it such a policy's first observation is a one-line `ConfigError`.

    `last_epoch` counts the `step()` calls: the optimizer steps done. `lr`, `last_stats`
    and `last_action` are the policy's LR and what it saw and did at the last
    observation, for logging; everything else is on `controller`, the
    `PolicyController` doing the work.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any,
        steps: int,
        eval_every: int,
        start_lr: float | None = None,
        initial_val_loss: float | None = None,
        *,
        update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE,
        measure_grad_norm: bool = True,
        tokens_per_step: int | None = None,
    ) -> None:
        self.controller = PolicyController(
            optimizer,
            policy,
            steps,
            eval_every,
            start_lr=start_lr,
            update_ratio_sample=update_ratio_sample,
            measure_grad_norm=measure_grad_norm,
            tokens_per_step=tokens_per_step,
        )
        super().__init__(optimizer)
        self.base_lrs = list(self.controller.base_lrs)
        if initial_val_loss is not None:
            self.observe(val_loss=initial_val_loss)

    @property
    def lr(self) -> float:
        """The policy's LR (before its warmup or cooldown factor)."""
        return self.controller.lr

    @property
    def last_stats(self) -> IntervalStats | None:
        """What the policy saw at the last observation (None before the first interval)."""
        return self.controller.last_stats

    @property
    def last_action(self) -> Any:
        """What the policy did at the last observation."""
        return self.controller.last_action

    # -- the scheduler interface ------------------------------------------------------------

    def get_lr(self) -> list[float]:
        """Each group's LR for the next step: its initial LR scaled like the policy's LR
        (warmed up or cooled down, in a policy's warmup or cooldown)."""
        return self.controller.group_lrs(max(self.last_epoch, 0))

    def step(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Count one optimizer step (call it after `optimizer.step()`).

        `step(metrics)` with a mapping, e.g. `{"train_loss": losses, "val_loss": v}`,
        is `observe(**metrics)` and counts no step, like `ReduceLROnPlateau.step(metrics)`.
        """
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise ConfigError(
                    f"step() takes no epoch; pass nothing, or a mapping of observe()'s "
                    f"arguments, got {type(metrics).__name__}"
                )
            self.observe(**metrics)
            return
        if self.last_epoch >= 0:  # -1: LRScheduler.__init__'s own call, no optimizer step
            self.controller.count_step()
        super().step()

    def observe(
        self,
        train_loss: TrainLoss | None = None,
        val_loss: float | None = None,
        *,
        grad_norm: float | None = None,
    ) -> None:
        """`PolicyController.observe`: show the policy the interval just ended and set
        the LR of the next one."""
        self.controller.observe(train_loss, val_loss, grad_norm=grad_norm)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python data (no tensors, no policy): safe for `torch.load(weights_only=True)`.

        Save it after `scheduler.step()`, like the model and optimizer.
        """
        return self.controller.state_dict() | {
            "last_epoch": self.last_epoch,
            "step_count": self._step_count,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a saved run: same policy and optimizer set-up; sets the groups' LRs."""
        if not isinstance(state_dict, Mapping):
            raise ConfigError(f"not a PolicyScheduler state dict: got {type(state_dict).__name__}")
        missing = [key for key in ("last_epoch", "step_count") if key not in state_dict]
        if missing:
            raise ConfigError(f"not a PolicyScheduler state dict: it lacks {', '.join(missing)}")
        self.controller.load_state_dict(state_dict, kind="PolicyScheduler", this="scheduler")
        self.base_lrs = list(self.controller.base_lrs)
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict["step_count"]
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
