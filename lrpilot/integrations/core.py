"""What the framework callbacks share, importing no framework: `LoopSettings` and
`CallbackCore`.

`lrpilot.integrations.hf.LRPilotHFCallback` and
`lrpilot.integrations.lightning.LRPilotLightningCallback` each inherit `CallbackCore`
beside their framework's callback class, and add only their framework's wiring: where
the optimizer, the step count, the losses and the validation loss come from, and
where the state is saved. `CallbackCore` does the rest, the same way for both:

- it makes the `PolicyController` (measuring the gradient norm where the callback
  says, before the framework clips the gradients);
- it keeps each batch's loss as a tensor (no device sync) and adds an optimizer
  step's batches up into that step's loss;
- for a policy that reads the run's sizes (its feature set, or its rule's prior of
  the LR), it counts the tokens per step from the
  first batch unless given (`tokens_per_step=`), and the policy's first action waits
  for them (it still comes before the first optimizer step);
- at L_0 and at the end of every interval it shows the policy the validation loss
  and the interval's step losses, and lists the decision in `decisions`; a policy's
  LR sweep ends at its last step with the sweep's step losses, without an evaluation;
- it builds the state a checkpoint keeps and restores it on a resume.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lrpilot.agents.arguments import check_policy, positive_float
from lrpilot.agents.context import batch_items, check_tokens_per_step, needs_context
from lrpilot.agents.measurements import UPDATE_RATIO_SAMPLE
from lrpilot.agents.policy_controller import PolicyController
from lrpilot.errors import ConfigError, require_positive_int


@dataclass(frozen=True)
class LoopSettings:
    """The settings a framework callback takes before it knows its trainer, each checked
    when given; None takes it from the trainer at train start.

    Attributes:
        eval_every: optimizer steps between the policy's decisions.
        steps: the step budget the policy sees (the `progress` feature).
        start_lr: the policy's LR at the start; by default the first parameter group's
            initial LR.
        initial_val_loss: L_0, the validation loss before training.
        update_ratio_sample: elements per tensor the update ratio is estimated from
            (`SampledUpdateRatio`); None: exact.
        tokens_per_step: the tokens (or examples) one optimizer step trains on, over
            its micro-batches and the processes, for a policy that reads the run's
            sizes; by default the first batch's (`lrpilot.agents.context.batch_items`)
            times the micro-batches per step and the processes.
    """

    eval_every: int | None = None
    steps: int | None = None
    start_lr: float | None = None
    initial_val_loss: float | None = None
    update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE
    tokens_per_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("eval_every", "steps", "update_ratio_sample"):
            if getattr(self, name) is not None:
                require_positive_int(name, getattr(self, name))
        check_tokens_per_step(self.tokens_per_step)
        if self.start_lr is not None:
            positive_float("start_lr", self.start_lr)
        if self.initial_val_loss is not None:
            positive_float("initial validation loss", self.initial_val_loss)

    @classmethod
    def from_keywords(cls, owner: str, keywords: Mapping[str, Any]) -> LoopSettings:
        """The settings given to `owner` (a callback's class name) as keywords; an
        unknown keyword is a one-line `ConfigError`."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(keywords) - set(names))
        if unknown:
            raise ConfigError(
                f"{owner} takes no setting {', '.join(unknown)}; its settings are "
                f"{', '.join(names)}"
            )
        return cls(**keywords)


def metric_name(keyword: str, value: Any) -> str:
    """`value` if it can name a metric (a non-empty string), else a `ConfigError`."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{keyword} must be the name of a metric, got {value!r}")
    return value


class CallbackCore:
    """The part of a framework callback that knows no framework.

    Args:
        policy: an lrpilot `Policy` (`load_policy(path)`) or a fixed rule
            (`load_policy("priorhold")`).
        settings: the callback's `LoopSettings`.

    `controller` (a `PolicyController`, made at train start) holds what the policy saw
    and did: `controller.last_stats`, `controller.last_action`, `controller.lr`.
    `decisions` lists `(step, val_loss, lr)` for every decision of this process's run:
    the validation loss the policy saw at that step and the LR it set from then on.
    """

    def __init__(self, policy: Any, settings: LoopSettings) -> None:
        self.policy = check_policy(policy)
        self.settings = settings
        self.controller: PolicyController | None = None
        self.decisions: list[tuple[int, float, float]] = []
        self._batch_losses: list[torch.Tensor] = []  # of the optimizer step under way
        self._step_losses: list[torch.Tensor | float] = []  # of the interval under way
        self._waiting_initial_val_loss: Any = None  # L_0, until the tokens per step are known

    def _make_controller(
        self, optimizer: torch.optim.Optimizer, *, steps: int, eval_every: int
    ) -> PolicyController:
        """The controller of this run, whose gradient norms the callback records itself
        (`controller.record_current_grad_norm()`, before the gradients are clipped)."""
        self.controller = PolicyController(
            optimizer,
            self.policy,
            steps,
            eval_every,
            start_lr=self.settings.start_lr,
            update_ratio_sample=self.settings.update_ratio_sample,
            measure_grad_norm=False,
            tokens_per_step=self.settings.tokens_per_step,
        )
        self._batch_losses, self._step_losses = [], []
        self._waiting_initial_val_loss = None
        return self.controller

    def _count_first_batch(self, batch: Any, batches_per_step: int) -> bool:
        """Before the first step: the tokens per step, `batch_items(batch)` times
        `batches_per_step` (micro-batches per step times processes), and the policy's
        first action, if it waited for them; whether it acted."""
        if self._waiting_initial_val_loss is None:
            return False
        self.controller.tokens_per_step = batch_items(batch) * batches_per_step
        initial, self._waiting_initial_val_loss = self._waiting_initial_val_loss, None
        self._observe(initial)
        return True

    def _add_batch_loss(self, loss: torch.Tensor) -> None:
        """Keep one (micro-)batch's loss, as the framework scaled it for accumulation."""
        self._batch_losses.append(loss.detach().reshape(()).float())

    def _end_optimizer_step(self) -> None:
        """The optimizer step's loss: the sum of its batches' losses."""
        self._step_losses.append(torch.stack(self._batch_losses).sum())
        self._batch_losses = []

    def _end_sweep_if_due(self) -> None:
        """At the last step of the policy's LR sweep: end it with its steps' losses (no
        evaluation: the weights go back to L_0's) and list the first action in
        `decisions`, with a NaN validation loss."""
        controller = self.controller
        if controller.sweep is None or controller.steps_done != controller.sweep.steps:
            return
        controller.observe(self._step_losses)
        self._step_losses = []
        self.decisions.append((controller.steps_done, math.nan, controller.lr))

    def _observation_due(self, step: int) -> bool:
        """Whether an evaluation at step count `step` is one the policy acts on: L_0, or
        the end of an interval not observed yet."""
        controller = self.controller
        return not controller.started or (
            step != controller.observed_at and controller.is_interval_end(step)
        )

    def _observe(self, val_loss: Any) -> None:
        """Show the policy `val_loss`: L_0 before any step; otherwise the end of an
        interval, with its step losses. Lists the decision in `decisions`."""
        controller = self.controller
        if not controller.started:
            if needs_context(self.policy) and controller.tokens_per_step is None:
                positive_float("initial validation loss", val_loss)
                self._waiting_initial_val_loss = val_loss  # until the first batch
                return
            controller.observe(val_loss=val_loss)
        else:
            if not self._step_losses:
                raise ConfigError(
                    f"{type(self).__name__} saw no training loss in steps "
                    f"{controller.observed_at + 1} to {controller.steps_done}, so it cannot "
                    f"show the policy the interval"
                )
            controller.observe(self._step_losses, val_loss)
            self._step_losses = []
        self.decisions.append((controller.steps_done, float(val_loss), controller.lr))

    def _checkpoint_state(self) -> dict[str, Any]:
        """Plain Python data: the controller's state and the interval's losses so far."""
        return {
            "controller": self.controller.state_dict(),
            "train_losses": [float(loss) for loss in self._step_losses],
        }

    def _restore(self, saved: Any, step: int) -> None:
        """Continue from a checkpoint's `_checkpoint_state()`, taken at step count `step`."""
        name = type(self).__name__
        if not isinstance(saved, Mapping):
            raise ConfigError(f"not an {name} state: got {type(saved).__name__}")
        missing = [key for key in ("controller", "train_losses") if key not in saved]
        if missing:
            raise ConfigError(f"not an {name} state: it lacks {', '.join(missing)}")
        self.controller.load_state_dict(saved["controller"], kind=name)
        if self.controller.steps_done != step:
            raise ConfigError(
                f"the checkpoint's {name} state is of step {self.controller.steps_done}, "
                f"the Trainer's of step {step}"
            )
        self._step_losses = [float(loss) for loss in saved["train_losses"]]
