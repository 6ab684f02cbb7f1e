"""`PolicyController`: a learned lrpilot policy inside a training loop.

It is the one implementation of the policy in a loop: it keeps the policy's LR,
measures what the policy sees (through hooks on the optimizer), builds the same
observation as `LRControlEnv` at every evaluation, applies the policy's action through
the same `ActionRule`, and sets every parameter group's LR. `PolicyScheduler` (a PyTorch
LR scheduler), `LRPilotHFCallback` and `LRPilotLightningCallback` drive it and add
nothing but their wiring.

The LR. The policy has an LR of its own, which starts at `start_lr` (the first
group's initial LR unless given) and is what the observation shows. Each parameter
group trains at its own initial LR times (policy LR / `start_lr`), so the groups keep
the ratios they were built with, and a one-group run trains at the policy's LR.
Between observations the LR is constant, except in the warmup and cooldown of a
policy trained with them (`warmup_fraction`, `cooldown_fraction`), where each step's
LR is the policy's LR times the warmup or cooldown factor, exactly as in the env.

What it measures itself (`lrpilot.agents.measurements`): the gradient norm at each
`optimizer.step()`, averaged over the interval, and the update ratio ||Δw|| / ||w||
of the interval's last step (`SampledUpdateRatio`). The gradient norm is that of the
gradients the optimizer is given: if the loop clips them first, it is the clipped
norm, whereas lrpilot's runs measure before clipping. Pass `observe(..., grad_norm=
mean of clip_grad_norm_'s returns)` to match them, and `measure_grad_norm=False`, so
the hook does not read the gradients a second time.

The rolled-back LR sweep of a policy whose rule has one (`sweep_fraction`) comes
first, as in the env: from `observe(val_loss=L_0)` to `observe(train_loss=its steps'
losses)` after its last step (`lrpilot.agents.sweep` says how).

Under `torch.distributed` (initialised, more than one process), every rank calls
`observe` at the same steps; rank 0's policy makes the decision (from rank 0's
losses) and broadcasts it (`lrpilot.agents.distributed`), so every rank trains at the
same LR and holds the same controller state.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lrpilot.agents.arguments import (
    check_intervals,
    check_optimizer,
    check_policy,
    number,
    positive_float,
)
from lrpilot.agents.context import check_tokens_per_step, loop_start_lr
from lrpilot.agents.controller_state import check_saved_state, load_policy_state, policy_state
from lrpilot.agents.distributed import broadcast_from_rank_zero, rank
from lrpilot.agents.measurements import (
    UPDATE_RATIO_SAMPLE,
    MeanGradNorm,
    SampledUpdateRatio,
    TrainLoss,
    loop_interval_stats,
    weak_method_hook,
)
from lrpilot.agents.observations import (
    load_observation_state,
    observation_state,
    policy_observations,
)
from lrpilot.agents.sweep import LoopSweep
from lrpilot.env.features import ObservationBuilder, sweep_feature_values
from lrpilot.errors import ConfigError
from lrpilot.lm.run import IntervalStats


class PolicyController:
    """The policy in a training loop: its LR, its measurements, its decisions.

    Args:
        optimizer: the torch optimizer whose groups' LRs it sets (for a wrapper, such
            as accelerate's, the optimizer inside it: its hooks are where steps happen).
        policy: a `Policy` or a fixed rule (`load_policy(path or rule name)`), or an
            object with what `lrpilot.agents.arguments.check_policy` asks for.
        steps: the run's optimizer steps (the `progress` feature is step / T).
        eval_every: steps between observations; the last interval takes the rest.
        start_lr: the policy's LR at the start; the first group's initial LR by default.
            Clipped to the policy's range, as the env does. A policy whose action rule
            has a prior (`ActionRule.prior_lr`) starts from that instead; the groups
            keep their ratios to `start_lr`.
        update_ratio_sample: elements per tensor `SampledUpdateRatio` samples; None
            measures the exact ratio (a copy of every weight at each interval's end).
        measure_grad_norm: measure the gradient norm in the optimizer's pre-step hook;
            False when the front end records it itself (`record_current_grad_norm`).
        tokens_per_step: the tokens (or examples) one optimizer step trains on, which a
            policy that reads the run's sizes (its feature set, or its rule's prior)
            needs before its first action (`lrpilot.agents.context`); a front end may
            set it until then.

    The front end calls `count_step()` after every optimizer step, `observe(...)` at
    every evaluation (the first one, before any step, with only `val_loss=L_0`), and
    `apply_lrs()` when it wants the groups' LRs written for the next step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any,
        steps: int,
        eval_every: int,
        *,
        start_lr: float | None = None,
        update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE,
        measure_grad_norm: bool = True,
        tokens_per_step: int | None = None,
    ) -> None:
        check_optimizer(optimizer)
        check_policy(policy)
        check_intervals(steps, eval_every)
        self.optimizer = optimizer
        self.policy = policy
        self.tokens_per_step = check_tokens_per_step(tokens_per_step)
        self.steps = steps
        self.eval_every = eval_every
        # Each group's LR as the user built it: the policy's LR multiplies these.
        self.base_lrs = [
            float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups
        ]
        self.start_lr = positive_float(
            "start_lr", self.base_lrs[0] if start_lr is None else start_lr
        )
        self.lr = float(np.clip(self.start_lr, policy.lr_min, policy.lr_max))  # the policy's LR
        self.features: ObservationBuilder | None = None  # made once L_0 is known
        rule = getattr(policy, "action", None)  # a duck-typed policy may have no rule
        self.sweep_steps = rule.sweep_steps(steps) if rule is not None else 0
        self.sweep: LoopSweep | None = None  # the rolled-back sweep under way
        self.initial_val_loss = math.nan
        self.steps_done = 0  # optimizer steps counted so far
        self.observed_at = 0  # step of the last observation
        self.last_stats: IntervalStats | None = None  # what the last observation saw
        self.last_action: Any = None
        self.update_ratio_estimator = SampledUpdateRatio(update_ratio_sample)
        self._measure_grad_norm = measure_grad_norm
        self._measuring_update = False  # between the hooks of an interval's last step
        self._reset_measurements()

        controller = weakref.ref(self)  # the hooks must not keep a dropped controller alive
        self._hooks = [
            optimizer.register_step_pre_hook(
                weak_method_hook(controller, "_before_optimizer_step")
            ),
            optimizer.register_step_post_hook(
                weak_method_hook(controller, "_after_optimizer_step")
            ),
        ]

    # -- what the front ends call -------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the policy has seen L_0 (and taken its first action, or is sweeping)."""
        return self.features is not None or self.sweep is not None

    def is_interval_end(self, step: int) -> bool:
        """Whether step count `step` ends an interval, or the sweep under way (an
        observation is due)."""
        if self.sweep is not None:
            return step == self.sweep.steps
        return step % self.eval_every == 0 or step == self.steps

    def multiplier(self, step: int | None = None) -> float:
        """What every group's initial LR is multiplied by at step `step` (0-based; the
        next step by default): the policy's LR, warmed up or cooled down, / `start_lr`."""
        return self.step_lr(step) / self.start_lr

    def step_lr(self, step: int | None = None) -> float:
        """The policy's LR at step `step` (the next step by default), times its warmup and
        cooldown factors (1 outside them)."""
        step = self.steps_done if step is None else step
        if self.sweep is not None and step < self.sweep.steps:
            return self.sweep.lr(step)
        return self.policy.applied_lr(self.lr, step, total_steps=self.steps)

    def group_lrs(self, step: int | None = None) -> list[float]:
        """Each group's LR at step `step` (the next step by default)."""
        lr = self.step_lr(step)
        return [lr * (base / self.start_lr) for base in self.base_lrs]

    def apply_lrs(self) -> list[float]:
        """Write each group's LR for the next step into the optimizer; returns them."""
        lrs = self.group_lrs()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        return lrs

    def count_step(self) -> None:
        """Count one optimizer step (after it ran)."""
        if not self.started:
            raise RuntimeError(
                "the policy needs the initial validation loss before the first step: "
                "pass initial_val_loss= or call observe(val_loss=L_0)"
            )
        self.steps_done += 1

    def record_grad_norm(self, norm: torch.Tensor | float) -> None:
        """Add one step's gradient norm (a front end that measures it itself); a tensor
        stays on its device: no sync."""
        self.grad_norms.add(norm)

    def record_current_grad_norm(self) -> None:
        """Add the norm of the gradients the parameters hold now (none held: nothing)."""
        self.grad_norms.add_gradients(self.parameters())

    def observe(
        self,
        train_loss: TrainLoss | None = None,
        val_loss: float | None = None,
        *,
        grad_norm: float | None = None,
    ) -> None:
        """Show the policy the interval just ended and set the LR of the next one.

        `train_loss`: the interval's per-step train losses, floats or 0-d tensors (mean,
        std and slope), or their mean (the std and slope features then read 0).
        `grad_norm`: the interval's mean gradient norm, instead of the measured one.
        Before any step, `observe(val_loss=L_0)` takes the policy's first action. The
        features are scale-free (ratios and logs of losses, `lrpilot.env.features`); the
        validation loss must be positive and finite.
        """
        if self.sweep is not None:
            self._end_sweep(train_loss)
            return
        if val_loss is None:
            raise ConfigError("observe() needs val_loss, the validation loss")
        if self.features is None:
            if train_loss is not None or grad_norm is not None:
                raise ConfigError(
                    "the first observe() comes before any step and takes only val_loss=L_0"
                )
            self.initial_val_loss = positive_float("initial validation loss", val_loss)
            if self.sweep_steps:
                self.sweep = LoopSweep(self.optimizer, self.policy.action, self.sweep_steps)
                self.apply_lrs()
                return
            # from a prior of the run's sizes, where the policy's rule has one
            self.lr = loop_start_lr(
                self.policy, self.lr, self.parameters(), self.tokens_per_step, self.steps
            )
            self.features = self._observation_builder(self.lr, self.initial_val_loss)
            self._act(self.features.initial())
            return
        val_loss = positive_float("val_loss", val_loss)
        if train_loss is None:
            raise ConfigError("observe() needs train_loss, the interval's train losses")
        steps = self.steps_done - self.observed_at
        if steps == 0:
            raise RuntimeError("observe() needs at least one step() since the last observation")
        grad_norm = self.grad_norms.mean() if grad_norm is None else number("grad_norm", grad_norm)
        step_lrs = [self.step_lr(step) for step in range(self.observed_at, self.steps_done)]
        self.last_stats = loop_interval_stats(
            self.steps_done, steps, step_lrs, train_loss, val_loss, grad_norm, self.update_ratio
        )
        self.observed_at = self.steps_done
        self._reset_measurements()
        self._act(self.features.update(self.last_stats, controller_lr=self.lr))

    def _end_sweep(self, train_loss: TrainLoss | None) -> None:
        """At the sweep's last step: put the snapshot back, then the policy's first
        action, from the observation at reset with the sweep's features."""
        assert self.sweep is not None
        result = self.sweep.finish(train_loss, self.steps_done)
        self.sweep = None
        self.observed_at = self.steps_done
        self._reset_measurements()
        sweep = sweep_feature_values(result, self.initial_val_loss)
        self.features = self._observation_builder(self.lr, self.initial_val_loss, sweep)
        self._act(self.features.initial())

    def close(self) -> None:
        """Remove the optimizer hooks (the controller then measures nothing)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def parameters(self) -> list[torch.Tensor]:
        """Every parameter of every group, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python data (a fixed rule's state in `policy_state`): JSON- and
        `weights_only`-safe. A state saved during the LR sweep cannot be resumed."""
        return {
            "start_lr": self.start_lr,
            "lr": self.lr,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "base_lrs": list(self.base_lrs),
            "steps_done": self.steps_done,
            "observed_at": self.observed_at,
            "features": observation_state(self.features),
            "grad_norm_sum": float(self.grad_norms.total),
            "grad_norm_count": int(self.grad_norms.count),
            "update_ratio": self.update_ratio,
            "tokens_per_step": self.tokens_per_step,
            "sweeping": self.sweep is not None,
            "policy_state": policy_state(self.policy),
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], *, kind: str = "PolicyController", this: str = ""
    ) -> None:
        """Continue a saved run (same policy and optimizer set-up); sets the groups' LRs.

        `kind` and `this` name the front end in errors ("PolicyScheduler", "scheduler").
        """
        check_saved_state(state_dict, self, kind=kind, this=this or kind)
        load_policy_state(self.policy, state_dict["policy_state"])  # a rule's, checked first
        if self.tokens_per_step is None:  # the saved run's, measured or given
            self.tokens_per_step = check_tokens_per_step(state_dict["tokens_per_step"])
        self.start_lr = float(state_dict["start_lr"])
        self.lr = float(state_dict["lr"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self.steps_done = int(state_dict["steps_done"])
        self.observed_at = int(state_dict["observed_at"])
        self.features = None
        if state_dict["features"] is not None:
            self._load_feature_state(state_dict["features"])
        self.grad_norms.total = float(state_dict["grad_norm_sum"])
        self.grad_norms.count = int(state_dict["grad_norm_count"])
        self.update_ratio = float(state_dict["update_ratio"])
        self._measuring_update = False
        self.apply_lrs()

    # -- internals ------------------------------------------------------------------------------

    def _act(self, observation: np.ndarray) -> None:
        """The policy's action on `observation`, applied as in `LRControlEnv.step`: rank 0
        decides, every rank applies."""
        decision = None
        if rank() == 0:
            action = self.policy.act(observation)
            next_observation_at = min(
                (self.steps_done // self.eval_every + 1) * self.eval_every,
                self.steps,
            )
            lr = self.policy.next_lr(
                self.lr,
                action,
                # counted from the interval the sweep ended in, as in the env
                interval=self.steps_done // self.eval_every - self.sweep_steps // self.eval_every,
                interval_steps=next_observation_at - self.steps_done,
                total_steps=self.steps,
            )
            decision = (action, lr, observation_state(self.features), policy_state(self.policy))
        action, lr, feature_state, rank_zero_policy = broadcast_from_rank_zero(decision)
        self.last_action, self.lr = action, float(lr)
        if rank() != 0:  # rank 0's features and rule state: every rank holds the same
            self._load_feature_state(feature_state)
            load_policy_state(self.policy, rank_zero_policy)
        self.apply_lrs()

    def _observation_builder(
        self, start_lr: float, initial_val_loss: float, sweep: dict[str, float] | None = None
    ) -> ObservationBuilder:
        return policy_observations(
            self.policy,
            self.steps,
            start_lr,
            initial_val_loss,
            self.parameters(),
            self.tokens_per_step,
            sweep,
        )

    def _load_feature_state(self, state: Mapping[str, Any]) -> None:
        self.features = self._observation_builder(state["start_lr"], state["initial_val_loss"])
        load_observation_state(self.features, state)

    def _reset_measurements(self) -> None:
        self.grad_norms = MeanGradNorm()
        self.update_ratio = math.nan

    @torch.no_grad()
    def _before_optimizer_step(self) -> None:
        """Before every `optimizer.step()`: the gradient norm, and the sampled weights
        before the interval's last step."""
        if self._measure_grad_norm:
            self.record_current_grad_norm()
        if self.is_interval_end(self.steps_done + 1):
            self.update_ratio_estimator.before_step(self.parameters())
            self._measuring_update = True

    def _after_optimizer_step(self) -> None:
        if self._measuring_update:
            self.update_ratio = self.update_ratio_estimator.after_step(self.parameters())
            self._measuring_update = False
