"""How any policy's actions set the LR: through its `ActionRule`, as in the env.

`Policy` (a learned network) and `RulePolicy` (a fixed rule) both drive a run through
these methods, so a loop (`PolicyController`) sets the same LRs as `LRControlEnv`."""

from __future__ import annotations

from lrpilot.env.actions import ActionRule, applied_lr, next_lr


class ActionRuleLRs:
    """The LR methods of a policy whose action rule is `self.action`."""

    action: ActionRule

    @property
    def lr_min(self) -> float:
        return self.action.lr_min

    @property
    def lr_max(self) -> float:
        return self.action.lr_max

    def next_lr(
        self, lr: float, action, *, interval: int, interval_steps: int, total_steps: int
    ) -> float:
        """The LR of interval `interval` (0: the first, set before any step) after
        `action`, as the training environment set it."""
        return next_lr(
            lr,
            action,
            interval=interval,
            interval_steps=interval_steps,
            total_steps=total_steps,
            rule=self.action,
        )

    def applied_lr(self, lr: float, step: int, *, total_steps: int) -> float:
        """The LR step `step` trains at when this policy's LR is `lr` (its warmup and
        cooldown)."""
        return applied_lr(lr, step, total_steps=total_steps, rule=self.action)
