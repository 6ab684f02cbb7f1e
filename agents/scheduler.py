"""`PolicyScheduler`: a learned lrpilot policy as a PyTorch LR scheduler.

It drops into any plain PyTorch loop. Call `step()` after every `optimizer.step()`,
as with any scheduler, and `observe(train_losses, val_loss)` at every evaluation,
every `eval_interval` steps. At each observation the policy sees the same features
as in `LRControlEnv` and multiplies the LR by its action's factor, clipped to the
policy's `[lr_min, lr_max]`; between observations the LR is constant, except in the
warmup and cooldown of a policy trained with them (`warmup_fraction`,
`cooldown_fraction`), where each step's LR is the policy's LR times the warmup or
cooldown factor, exactly as in the environment.

    policy = load_policy("runs/ppo/policy")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = PolicyScheduler(optimizer, policy, total_steps=4000, eval_interval=100)
    scheduler.observe(val_loss=evaluate(model))  # L_0: the policy's first action
    losses = []
    for step in range(4000):
        loss = loss_fn(model(x[step]), y[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == 4000:
            scheduler.observe(losses, evaluate(model))  # or scheduler.step({...})
            losses = []

What the scheduler measures itself, through a pre-step hook on the optimizer:

- the gradient norm at each `optimizer.step()`, averaged over the interval. This is
  the norm of the gradients the optimizer is given: if the loop clips them first,
  it is the clipped norm, whereas the env's Trainer measures before clipping. Pass
  `observe(..., grad_norm=mean of clip_grad_norm_'s returns)` to match it.
- the update ratio ||Δw|| / ||w|| of the interval's last step, exactly as the
  Trainer does: the weights just before that step's `optimizer.step()` against the
  weights at the `step()` call after it.

What the caller passes: the train losses of the interval (a sequence gives mean,
std and slope; a float gives only the mean and the std and slope features are 0)
and the validation loss. The policy was trained on per-byte cross-entropy of an LM;
the features are scale-free (ratios and logs of losses), but losses must be > 0.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrpilot.env.features import ObservationBuilder
from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.run import IntervalStats, least_squares_slope, weight_update_ratio

_POLICY_ATTRIBUTES = ("act", "next_lr", "applied_lr", "lr_min", "lr_max", "masked_features")
_BUILDER_FIELDS = (
    "start_lr",
    "initial_val_loss",
    "total_steps",
    "previous_val_loss",
    "best_val_loss",
    "previous_grad_norm",
)
_STATE_KEYS = (
    "start_lr",
    "lr",
    "total_steps",
    "eval_interval",
    "base_lrs",
    "last_epoch",
    "step_count",
    "observed_at",
    "features",
    "grad_norm_sum",
    "grad_norm_count",
    "update_ratio",
)


class PolicyScheduler(LRScheduler):
    """Sets the LR from a learned lrpilot policy, once per evaluation interval.

    Args:
        optimizer: any torch optimizer. Every param group's LR becomes its initial
            LR x (policy LR / `start_lr`), so groups keep their ratios.
        policy: an lrpilot `Policy` (`load_policy(path)`), or any object with `act`,
            `next_lr` (with the keyword `first`: the run's first action), `applied_lr`,
            `lr_min`, `lr_max` and `masked_features`.
        total_steps: the run's optimizer steps (the `progress` feature is step / T).
        eval_interval: steps between observations; the last interval takes the rest.
        start_lr: the LR the policy starts from; the first group's initial LR by
            default. Clipped to the policy's range, as the env does.
        initial_val_loss: L_0, the validation loss before training. If given, the
            policy's first action is taken now; if not, call `observe(val_loss=L_0)`
            before the first `step()`.

    `last_epoch` counts the `step()` calls: the optimizer steps done. `last_stats` (an
    `IntervalStats`) and `last_action` are what the policy saw and did at the last
    observation, for logging.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any,
        total_steps: int,
        eval_interval: int,
        start_lr: float | None = None,
        initial_val_loss: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}"
            )
        missing = [name for name in _POLICY_ATTRIBUTES if not hasattr(policy, name)]
        if missing:
            raise ConfigError(
                f"policy must be an lrpilot Policy (load_policy(path)), got "
                f"{type(policy).__name__} without {', '.join(missing)}"
            )
        parameters = inspect.signature(policy.next_lr).parameters
        if "first" not in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        ):
            raise ConfigError(
                f"policy's next_lr must take the keyword first (the run's first action), as "
                f"Policy.next_lr does; {type(policy).__name__}.next_lr does not"
            )
        require_positive_int("total_steps", total_steps)
        require_positive_int("eval_interval", eval_interval)
        if eval_interval > total_steps:
            raise ConfigError(
                f"eval_interval ({eval_interval}) is larger than total_steps ({total_steps})"
            )
        if start_lr is None:
            first_group = optimizer.param_groups[0]
            start_lr = first_group.get("initial_lr", first_group["lr"])
        self.start_lr = _positive_float("start_lr", start_lr)
        self.policy = policy
        self.total_steps = total_steps
        self.eval_interval = eval_interval
        self.lr = float(np.clip(self.start_lr, policy.lr_min, policy.lr_max))  # the policy's LR
        self.features: ObservationBuilder | None = None  # made once L_0 is known
        self.observed_at = 0  # step of the last observation
        self.last_stats: IntervalStats | None = None  # what the last observation saw
        self.last_action: Any = None
        self._reset_measurements()
        self._snapshot: list[torch.Tensor] | None = None
        super().__init__(optimizer)
        self.base_lrs = [float(lr) for lr in self.base_lrs]
        scheduler = weakref.ref(self)  # the hook must not keep a dropped scheduler alive

        def before_optimizer_step(_optimizer, _args, _kwargs) -> None:
            alive = scheduler()
            if alive is not None:
                alive._measure_before_step()

        self._hook = optimizer.register_step_pre_hook(before_optimizer_step)
        if initial_val_loss is not None:
            self.observe(val_loss=initial_val_loss)

    # -- the scheduler interface ------------------------------------------------------------

    def get_lr(self) -> list[float]:
        """Each group's LR for the next step: its initial LR scaled like the policy's LR
        (warmed up or cooled down, in a policy's warmup or cooldown)."""
        lr = self._step_lr(max(self.last_epoch, 0))
        return [lr * (base / self.start_lr) for base in self.base_lrs]

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
        if self.last_epoch >= 0 and self.features is None:  # -1: LRScheduler.__init__'s call
            raise RuntimeError(
                "PolicyScheduler needs the initial validation loss before the first step: "
                "pass initial_val_loss= or call observe(val_loss=L_0)"
            )
        super().step()
        if self._snapshot is not None:  # this was an interval's last step
            self.update_ratio = weight_update_ratio(self._snapshot, self._params())
            self._snapshot = None

    def observe(
        self,
        train_loss: float | Sequence[float] | None = None,
        val_loss: float | None = None,
        *,
        grad_norm: float | None = None,
    ) -> None:
        """Show the policy the interval just ended and set the LR of the next one.

        `train_loss`: the interval's per-step train losses (mean, std, slope), or their
        mean. `grad_norm`: the interval's mean gradient norm, instead of the measured
        one. Before any step, `observe(val_loss=L_0)` takes the policy's first action.
        """
        if val_loss is None:
            raise ConfigError("observe() needs val_loss, the validation loss")
        val_loss = float(val_loss)
        if self.features is None:
            if train_loss is not None or grad_norm is not None:
                raise ConfigError(
                    "the first observe() comes before any step and takes only val_loss=L_0"
                )
            initial = _positive_float("initial validation loss", val_loss)
            self.features = self._observation_builder(self.lr, initial)
            self._act(self.features.initial())
            return
        steps = self.last_epoch - self.observed_at
        if steps == 0:
            raise RuntimeError("observe() needs at least one step() since the last observation")
        mean, std, slope, nonfinite_steps = _train_loss_stats(train_loss, steps)
        if grad_norm is None:
            count = int(self.grad_norm_count)
            grad_norm = float(self.grad_norm_sum) / count if count else math.nan
        step_lrs = [self._step_lr(step) for step in range(self.observed_at, self.last_epoch)]
        self.last_stats = IntervalStats(
            step=self.last_epoch,
            steps=steps,
            lr=step_lrs[-1],
            lr_mean=float(np.mean(step_lrs)),
            train_loss_mean=mean,
            train_loss_std=std,
            train_loss_slope=slope,
            val_loss=val_loss,
            grad_norm=float(grad_norm),
            update_ratio=self.update_ratio,
            nonfinite=nonfinite_steps > 0 or not math.isfinite(val_loss),
            nonfinite_steps=nonfinite_steps,
            tokens=0,  # not a feature, and unknown here
            seconds=math.nan,  # likewise
        )
        self.observed_at = self.last_epoch
        self._reset_measurements()
        self._act(self.features.update(self.last_stats, controller_lr=self.lr))

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python data (no tensors, no policy): safe for `torch.load(weights_only=True)`.

        Save it after `scheduler.step()`, like the model and optimizer.
        """
        builder = self.features
        return {
            "start_lr": self.start_lr,
            "lr": self.lr,
            "total_steps": self.total_steps,
            "eval_interval": self.eval_interval,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "step_count": self._step_count,
            "observed_at": self.observed_at,
            "features": {k: getattr(builder, k) for k in _BUILDER_FIELDS} if builder else None,
            "grad_norm_sum": float(self.grad_norm_sum),
            "grad_norm_count": int(self.grad_norm_count),
            "update_ratio": self.update_ratio,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a saved run: same policy and optimizer set-up; sets the groups' LRs."""
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ConfigError(f"not a PolicyScheduler state dict: it lacks {', '.join(missing)}")
        for key in ("total_steps", "eval_interval"):
            if state_dict[key] != getattr(self, key):
                raise ConfigError(
                    f"state dict has {key}={state_dict[key]!r}, this scheduler "
                    f"{getattr(self, key)!r}"
                )
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"state dict has {len(state_dict['base_lrs'])} param groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.start_lr = state_dict["start_lr"]
        self.lr = state_dict["lr"]
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict["step_count"]
        self.observed_at = state_dict["observed_at"]
        saved = state_dict["features"]
        self.features = None
        if saved is not None:
            self.features = self._observation_builder(saved["start_lr"], saved["initial_val_loss"])
            for key in _BUILDER_FIELDS:
                setattr(self.features, key, saved[key])
        self.grad_norm_sum = state_dict["grad_norm_sum"]
        self.grad_norm_count = state_dict["grad_norm_count"]
        self.update_ratio = state_dict["update_ratio"]
        self._snapshot = None
        self._set_group_lrs()

    # -- internals --------------------------------------------------------------------------

    def _act(self, observation: np.ndarray) -> None:
        """The policy's action on `observation`, applied as in `LRControlEnv.step`."""
        self.last_action = self.policy.act(observation)
        next_observation_at = min(
            (self.last_epoch // self.eval_interval + 1) * self.eval_interval, self.total_steps
        )
        self.lr = self.policy.next_lr(
            self.lr,
            self.last_action,
            first=self.last_epoch == 0,
            interval_steps=next_observation_at - self.last_epoch,
            total_steps=self.total_steps,
        )
        self._set_group_lrs()

    def _step_lr(self, step: int) -> float:
        """The LR of step `step` (0-based): the policy's LR times its warmup and cooldown
        factors (1 outside them)."""
        return self.policy.applied_lr(self.lr, step, total_steps=self.total_steps)

    def _observation_builder(self, start_lr: float, initial_val_loss: float) -> ObservationBuilder:
        return ObservationBuilder(
            start_lr, initial_val_loss, self.total_steps, self.policy.masked_features
        )

    def _set_group_lrs(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _reset_measurements(self) -> None:
        # The sum stays a tensor between observations: no device sync at every step.
        self.grad_norm_sum: torch.Tensor | float = 0.0
        self.grad_norm_count: torch.Tensor | int = 0
        self.update_ratio = math.nan

    def _is_interval_end(self, step: int) -> bool:
        return step % self.eval_interval == 0 or step == self.total_steps

    @torch.no_grad()
    def _measure_before_step(self) -> None:
        """Called before every `optimizer.step()`: gradient norm, and the weights before
        the interval's last step."""
        grads = [p.grad for p in self._params() if p.grad is not None]
        if grads:
            norm = _total_norm(grads)
            finite = torch.isfinite(norm)
            self.grad_norm_sum = self.grad_norm_sum + torch.where(finite, norm, 0.0)
            self.grad_norm_count = self.grad_norm_count + finite.long()
        if self._is_interval_end(self.last_epoch + 1):
            self._snapshot = [p.detach().clone() for p in self._params()]


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all tensors together, as `clip_grad_norm_` computes it."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(tensors)
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _train_loss_stats(
    train_loss: float | Sequence[float] | None, steps: int
) -> tuple[float, float, float, int]:
    """Mean, std, per-step slope and non-finite count of an interval's train losses,
    as `Trainer.run_interval` computes them (non-finite losses left out)."""
    if train_loss is None:
        return math.nan, math.nan, math.nan, 0
    if np.ndim(train_loss) == 0:  # the mean only: a non-finite one spoils the interval
        mean = float(train_loss)
        if not math.isfinite(mean):
            return math.nan, math.nan, math.nan, steps
        return mean, math.nan, math.nan, 0
    values = [float(v) for v in train_loss]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan, len(values)
    # Losses of evenly spaced steps (not every step) give the per-step slope too.
    slope = least_squares_slope(finite) * (len(values) / steps)
    return float(np.mean(finite)), float(np.std(finite)), slope, len(values) - len(finite)
