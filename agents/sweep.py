"""The rolled-back LR sweep inside a user's training loop, for `PolicyController`.

The same sweep as `StepRun.sweep` (`lrpilot.lm.sweep`: the LR path, the snapshot, the
summary), driven by the loop's own steps: `LoopSweep` snapshots the parameters of the
optimizer's param groups and `optimizer.state_dict()` when L_0 is observed, gives the
LR of each of its steps, and at its end takes the steps' train losses, puts the
snapshot back and returns the curve. The loop sees only the optimizer, so module
buffers that are not parameters (batch-norm statistics) are not put back, unlike in
`StepRun`, which has the model.

In `PolicyController`: at `observe(val_loss=L_0)` the controller snapshots the param
groups' parameters and the optimizer's state; the sweep's `S` steps train at its
rising LRs; after step `S` (`is_interval_end`), `observe(train_loss=the S steps'
losses)` (a validation loss, if given, is not used) puts the snapshot back and takes
the policy's first action from the observation at reset, which holds the sweep's
features. The intervals after it end where they would without a sweep.
"""

from __future__ import annotations

from typing import Any

import torch

from lrpilot.agents.measurements import TrainLoss, train_loss_values
from lrpilot.env.actions import ActionRule
from lrpilot.errors import ConfigError
from lrpilot.lm.sweep import Snapshot, SweepResult, sweep_lrs


class LoopSweep:
    """A sweep of `steps` steps (`rule.sweep_steps(total_steps)`) over the rule's LR
    range, `lr_min` to `lr_max`."""

    def __init__(self, optimizer: torch.optim.Optimizer, rule: ActionRule, steps: int) -> None:
        self.lrs = sweep_lrs(steps, rule.lr_min, rule.lr_max)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.snapshot = Snapshot(params, optimizer)

    @property
    def steps(self) -> int:
        return len(self.lrs)

    def lr(self, step: int) -> float:
        """The policy LR of sweep step `step` (0-based)."""
        return self.lrs[step]

    def finish(self, train_loss: TrainLoss | None, steps_done: int) -> SweepResult:
        """The curve of the sweep's steps, given each step's train loss after
        `steps_done` steps (the sweep's own); the parameters and optimizer state go back
        to the snapshot."""
        if steps_done != self.steps:
            raise RuntimeError(
                f"the LR sweep ends after step {self.steps}; observe() came after step {steps_done}"
            )
        if train_loss is None:
            raise ConfigError("observe() at the LR sweep's end needs its steps' train losses")
        values: Any = train_loss_values(train_loss)
        if isinstance(values, float) or len(values) != self.steps:
            raise ConfigError(
                f"the LR sweep's end needs the train loss of each of its {self.steps} steps, "
                f"got {'one number' if isinstance(values, float) else len(values)}"
            )
        self.snapshot.restore()
        return SweepResult(lrs=tuple(self.lrs), losses=tuple(values))
