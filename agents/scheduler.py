"""A learned lrpilot policy inside a training loop: `PolicyController`, and
`PolicyScheduler`, the PyTorch LR scheduler over it.

`PolicyController` is the one implementation of the policy in the loop. It keeps
the policy's LR, measures what the policy sees (through hooks on the optimizer),
builds the same observation as `LRControlEnv` at every evaluation, applies the
policy's action through the same `ActionRule`, and sets every parameter group's LR.
Three front ends drive it and add nothing but their wiring:

- `PolicyScheduler` (here): a `torch.optim.lr_scheduler.LRScheduler` for a plain
  PyTorch loop;
- `lrpilot.integrations.hf.LRPilotCallback`: a `transformers.TrainerCallback`;
- `lrpilot.integrations.lightning.LRPilotCallback`: a `lightning.pytorch.Callback`.

With `PolicyScheduler`, call `step()` after every `optimizer.step()`, as with any
scheduler, and `observe(train_losses, val_loss)` at every evaluation, every
`eval_interval` steps:

    policy = load_policy("default")
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
        losses.append(loss.detach())  # tensors: no device sync at every step
        if (step + 1) % 100 == 0 or step + 1 == 4000:
            scheduler.observe(losses, evaluate(model))  # or scheduler.step({...})
            losses = []

The LR. The policy has an LR of its own, which starts at `start_lr` (the first
group's initial LR unless given) and is what the observation shows. Each parameter
group trains at its own initial LR times (policy LR / `start_lr`), so the groups keep
the ratios they were built with, and a one-group run trains at the policy's LR.
Between observations the LR is constant, except in the warmup and cooldown of a
policy trained with them (`warmup_fraction`, `cooldown_fraction`), where each step's
LR is the policy's LR times the warmup or cooldown factor, exactly as in the env.

What the controller measures itself, through hooks on the optimizer:

- the gradient norm at each `optimizer.step()`, averaged over the interval. This is
  the norm of the gradients the optimizer is given: if the loop clips them first, it
  is the clipped norm, whereas lrpilot's runs measure before clipping. Pass
  `observe(..., grad_norm=mean of clip_grad_norm_'s returns)` to match them, and
  `measure_grad_norm=False`, so the hook does not read the gradients a second time.
  (The HF and Lightning callbacks measure before clipping themselves.)
- the update ratio ||Δw|| / ||w|| of the interval's last step, estimated by
  `SampledUpdateRatio` from a fixed random sample of the weights (4096 elements of
  each larger tensor; smaller tensors whole), not from a copy of every weight.

What the caller passes: the train losses of the interval (a sequence, of floats or of
0-d tensors, gives mean, std and slope; a float gives only the mean, and the std and
slope features are 0) and the validation loss. The policy was trained on the per-byte
cross-entropy of a language model; the features are scale-free (ratios and logs of
losses) and defined for losses >= 0 (`lrpilot.env.features` says what they do at 0 and
below); the initial validation loss must be > 0.

Under `torch.distributed` (initialised, more than one process), every rank calls
`observe` at the same steps; rank 0's policy makes the decision (from rank 0's
losses) and broadcasts it, so every rank trains at the same LR and holds the same
controller state. With NCCL, set each process's CUDA device first, as
`broadcast_object_list` needs.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrpilot.env.features import ObservationBuilder
from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.run import IntervalStats, least_squares_slope

UPDATE_RATIO_SAMPLE = 4096  # elements sampled per tensor for the update ratio
UPDATE_RATIO_SEED = 0  # the sample is drawn from this seed, the same at every step

_POLICY_ATTRIBUTES = ("act", "next_lr", "applied_lr", "lr_min", "lr_max", "masked_features")
_BUILDER_FIELDS = (
    "start_lr",
    "initial_val_loss",
    "total_steps",
    "previous_val_loss",
    "best_val_loss",
    "previous_grad_norm",
    "past",  # the last evaluations' feature vectors, for a policy with a history
)
_CONTROLLER_STATE_KEYS = (
    "start_lr",
    "lr",
    "total_steps",
    "eval_interval",
    "base_lrs",
    "steps_done",
    "observed_at",
    "features",
    "grad_norm_sum",
    "grad_norm_count",
    "update_ratio",
)


def check_policy(policy: Any) -> Any:
    """`policy` if it can drive a run (an lrpilot `Policy`, or an object with the same
    methods), else a one-line `ConfigError`."""
    missing = [name for name in _POLICY_ATTRIBUTES if not hasattr(policy, name)]
    if missing:
        raise ConfigError(
            f"policy must be an lrpilot Policy (load_policy(path)), got "
            f"{type(policy).__name__} without {', '.join(missing)}"
        )
    parameters = inspect.signature(policy.next_lr).parameters
    if "interval" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        raise ConfigError(
            f"policy's next_lr must take the keyword interval (the interval it sets), as "
            f"Policy.next_lr does; {type(policy).__name__}.next_lr does not"
        )
    return policy


def check_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """`optimizer` if it is a torch optimizer with parameters, else a `ConfigError`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
    if not optimizer.param_groups:
        raise ConfigError(f"optimizer {type(optimizer).__name__} has no parameter groups")
    if not any(group["params"] for group in optimizer.param_groups):
        raise ConfigError(f"optimizer {type(optimizer).__name__} has no parameters")
    return optimizer


# -- the update ratio, without a copy of the weights --------------------------------------------


class SampledUpdateRatio:
    """||w_after - w_before|| / ||w_before|| of one optimizer step, over all parameters.

    ||w_before|| is exact (a norm of each tensor, no copy). ||Δw|| is estimated: a
    tensor of at most `sample_size` elements is copied whole, so its part is exact; of
    a larger tensor only `sample_size` elements, drawn at random (with replacement)
    from the seed `seed`, are kept, and its squared change is estimated as
    numel / sample_size times their summed squared change. The generator is seeded
    afresh at every measurement, so every step measures the same elements. The memory
    it holds during one step is `sample_size` values and indices per large tensor,
    whatever the model's size; between measurements it holds nothing.
    `sample_size=None` copies every tensor whole: the exact ratio, as
    `lrpilot.lm.run.weight_update_ratio` computes it.

        ratio = SampledUpdateRatio()
        ratio.before_step(params)
        optimizer.step()
        update_ratio = ratio.after_step(params)

    It lives here for now; `lm/run.py`'s `StepRun` could measure with it too.
    """

    def __init__(
        self, sample_size: int | None = UPDATE_RATIO_SAMPLE, seed: int = UPDATE_RATIO_SEED
    ):
        if sample_size is not None:
            require_positive_int("update_ratio_sample", sample_size)
        self.sample_size = sample_size
        self.seed = seed
        self._indices: list[torch.Tensor | None] = []  # per tensor; None: the whole tensor
        self._values_before: list[torch.Tensor] = []
        self._weight_norm: torch.Tensor | None = None

    def _is_sampled(self, tensor: torch.Tensor) -> bool:
        return self.sample_size is not None and tensor.numel() > self.sample_size

    @torch.no_grad()
    def before_step(self, params: Sequence[torch.Tensor]) -> None:
        """Keep the sampled weights (and the exact weight norm) before the step."""
        generator = torch.Generator().manual_seed(self.seed)
        self._indices, self._values_before, norms = [], [], []
        for param in params:
            weights = param.detach()
            norms.append(torch.linalg.vector_norm(weights))
            if self._is_sampled(weights):
                drawn = torch.randint(weights.numel(), (self.sample_size,), generator=generator)
                indices = drawn.sort().values.to(weights.device)  # sorted: a faster gather
                self._indices.append(indices)
                self._values_before.append(weights.reshape(-1)[indices])
            else:
                self._indices.append(None)
                self._values_before.append(weights.clone())
        self._weight_norm = torch.stack(norms).norm()

    @torch.no_grad()
    def after_step(self, params: Sequence[torch.Tensor]) -> float:
        """The update ratio of the step since `before_step`; frees what it kept."""
        if self._weight_norm is None:
            raise RuntimeError("SampledUpdateRatio.after_step() needs before_step() first")
        changes = []
        kept = zip(params, self._indices, self._values_before, strict=True)
        for param, indices, before in kept:
            weights = param.detach()
            if indices is None:
                changes.append(torch.linalg.vector_norm(weights - before))
            else:
                change = torch.linalg.vector_norm(weights.reshape(-1)[indices] - before)
                changes.append(change * math.sqrt(weights.numel() / indices.numel()))
        ratio = float(torch.stack(changes).norm() / self._weight_norm.clamp_min(1e-12))
        self._indices, self._values_before, self._weight_norm = [], [], None
        return ratio


# -- the one implementation -------------------------------------------------------------------


class PolicyController:
    """The policy in a training loop: its LR, its measurements, its decisions.

    Args:
        optimizer: the torch optimizer whose groups' LRs it sets (for a wrapper, such
            as accelerate's, the optimizer inside it: its hooks are where steps happen).
        policy: an lrpilot `Policy` (`load_policy(path)`), or any object with `act`,
            `next_lr` (with the keyword `interval`: the interval it sets), `applied_lr`,
            `lr_min`, `lr_max` and `masked_features`.
        total_steps: the run's optimizer steps (the `progress` feature is step / T).
        eval_interval: steps between observations; the last interval takes the rest.
        start_lr: the policy's LR at the start; the first group's initial LR by default.
            Clipped to the policy's range, as the env does.
        update_ratio_sample: elements per tensor `SampledUpdateRatio` samples; None
            measures the exact ratio (a copy of every weight at each interval's end).
        measure_grad_norm: measure the gradient norm in the optimizer's pre-step hook;
            False when the front end calls `record_grad_norm` itself.

    The front end calls `count_step()` after every optimizer step, `observe(...)` at
    every evaluation (the first one, before any step, with only `val_loss=L_0`), and
    `apply_lrs()` when it wants the groups' LRs written for the next step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any,
        total_steps: int,
        eval_interval: int,
        *,
        start_lr: float | None = None,
        update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE,
        measure_grad_norm: bool = True,
    ) -> None:
        check_optimizer(optimizer)
        check_policy(policy)
        require_positive_int("total_steps", total_steps)
        require_positive_int("eval_interval", eval_interval)
        if eval_interval > total_steps:
            raise ConfigError(
                f"eval_interval ({eval_interval}) is larger than total_steps ({total_steps})"
            )
        self.optimizer = optimizer
        self.policy = policy
        self.total_steps = total_steps
        self.eval_interval = eval_interval
        # Each group's LR as the user built it: the policy's LR multiplies these.
        self.base_lrs = [
            float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups
        ]
        self.start_lr = positive_float(
            "start_lr", self.base_lrs[0] if start_lr is None else start_lr
        )
        self.lr = float(np.clip(self.start_lr, policy.lr_min, policy.lr_max))  # the policy's LR
        self.features: ObservationBuilder | None = None  # made once L_0 is known
        self.steps_done = 0  # optimizer steps counted so far
        self.observed_at = 0  # step of the last observation
        self.last_stats: IntervalStats | None = None  # what the last observation saw
        self.last_action: Any = None
        self.update_ratio_estimator = SampledUpdateRatio(update_ratio_sample)
        self._measure_grad_norm = measure_grad_norm
        self._measuring_update = False  # between the hooks of an interval's last step
        self._reset_measurements()

        controller = weakref.ref(self)  # the hooks must not keep a dropped controller alive

        def before_optimizer_step(_optimizer, _args, _kwargs) -> None:
            alive = controller()
            if alive is not None:
                alive._before_optimizer_step()

        def after_optimizer_step(_optimizer, _args, _kwargs) -> None:
            alive = controller()
            if alive is not None:
                alive._after_optimizer_step()

        self._hooks = [
            optimizer.register_step_pre_hook(before_optimizer_step),
            optimizer.register_step_post_hook(after_optimizer_step),
        ]

    # -- what the front ends call -------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the policy has seen L_0 and taken its first action."""
        return self.features is not None

    def is_interval_end(self, step: int) -> bool:
        """Whether step count `step` ends an interval (an observation is due)."""
        return step % self.eval_interval == 0 or step == self.total_steps

    def multiplier(self, step: int | None = None) -> float:
        """What every group's initial LR is multiplied by at step `step` (0-based; the
        next step by default): the policy's LR, warmed up or cooled down, / `start_lr`."""
        return self.step_lr(step) / self.start_lr

    def step_lr(self, step: int | None = None) -> float:
        """The policy's LR at step `step` (the next step by default), times its warmup and
        cooldown factors (1 outside them)."""
        step = self.steps_done if step is None else step
        return self.policy.applied_lr(self.lr, step, total_steps=self.total_steps)

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
        norm = torch.as_tensor(norm).detach()
        if norm.dtype in (torch.float16, torch.bfloat16):  # sum in float32, not in half
            norm = norm.float()
        finite = torch.isfinite(norm)
        self.grad_norm_sum = self.grad_norm_sum + torch.where(finite, norm, 0.0)
        self.grad_norm_count = self.grad_norm_count + finite.long()

    def observe(
        self,
        train_loss: float | Sequence[float] | torch.Tensor | None = None,
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
            initial = positive_float("initial validation loss", val_loss)
            self.features = self._observation_builder(self.lr, initial)
            self._act(self.features.initial())
            return
        steps = self.steps_done - self.observed_at
        if steps == 0:
            raise RuntimeError("observe() needs at least one step() since the last observation")
        mean, std, slope, nonfinite_steps = _train_loss_stats(train_loss, steps)
        if grad_norm is None:
            count = int(self.grad_norm_count)
            grad_norm = float(self.grad_norm_sum) / count if count else math.nan
        step_lrs = [self.step_lr(step) for step in range(self.observed_at, self.steps_done)]
        self.last_stats = IntervalStats(
            step=self.steps_done,
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
        self.observed_at = self.steps_done
        self._reset_measurements()
        self._act(self.features.update(self.last_stats, controller_lr=self.lr))

    def close(self) -> None:
        """Remove the optimizer hooks (the controller then measures nothing)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain Python data (no tensors, no policy): JSON- and `weights_only`-safe."""
        builder = self.features
        return {
            "start_lr": self.start_lr,
            "lr": self.lr,
            "total_steps": self.total_steps,
            "eval_interval": self.eval_interval,
            "base_lrs": list(self.base_lrs),
            "steps_done": self.steps_done,
            "observed_at": self.observed_at,
            "features": {k: getattr(builder, k) for k in _BUILDER_FIELDS} if builder else None,
            "grad_norm_sum": float(self.grad_norm_sum),
            "grad_norm_count": int(self.grad_norm_count),
            "update_ratio": self.update_ratio,
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], *, kind: str = "PolicyController", this: str = ""
    ) -> None:
        """Continue a saved run (same policy and optimizer set-up); sets the groups' LRs.

        `kind` and `this` name the front end in errors ("PolicyScheduler", "scheduler").
        """
        this = this or kind
        if not isinstance(state_dict, Mapping):
            raise ConfigError(f"not a {kind} state dict: got {type(state_dict).__name__}")
        missing = [key for key in _CONTROLLER_STATE_KEYS if key not in state_dict]
        if missing:
            raise ConfigError(f"not a {kind} state dict: it lacks {', '.join(missing)}")
        for key in ("total_steps", "eval_interval"):
            if state_dict[key] != getattr(self, key):
                raise ConfigError(
                    f"state dict has {key}={state_dict[key]!r}, this {this} {getattr(self, key)!r}"
                )
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"state dict has {len(state_dict['base_lrs'])} param groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.start_lr = float(state_dict["start_lr"])
        self.lr = float(state_dict["lr"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self.steps_done = int(state_dict["steps_done"])
        self.observed_at = int(state_dict["observed_at"])
        self.features = None
        if state_dict["features"] is not None:
            self._load_feature_state(state_dict["features"])
        self.grad_norm_sum = float(state_dict["grad_norm_sum"])
        self.grad_norm_count = int(state_dict["grad_norm_count"])
        self.update_ratio = float(state_dict["update_ratio"])
        self._measuring_update = False
        self.apply_lrs()

    # -- internals ------------------------------------------------------------------------------

    def _act(self, observation: np.ndarray) -> None:
        """The policy's action on `observation`, applied as in `LRControlEnv.step`: rank 0
        decides, every rank applies."""
        decision = None
        if _rank() == 0:
            action = self.policy.act(observation)
            next_observation_at = min(
                (self.steps_done // self.eval_interval + 1) * self.eval_interval,
                self.total_steps,
            )
            lr = self.policy.next_lr(
                self.lr,
                action,
                interval=self.steps_done // self.eval_interval,
                interval_steps=next_observation_at - self.steps_done,
                total_steps=self.total_steps,
            )
            decision = (action, lr, self._feature_state())
        action, lr, feature_state = _broadcast_from_rank_zero(decision)
        self.last_action, self.lr = action, float(lr)
        if _rank() != 0:  # rank 0's features too: every rank holds the same state
            self._load_feature_state(feature_state)
        self.apply_lrs()

    def _observation_builder(self, start_lr: float, initial_val_loss: float) -> ObservationBuilder:
        return ObservationBuilder(
            start_lr,
            initial_val_loss,
            self.total_steps,
            self.policy.masked_features,
            history=getattr(self.policy, "history", 1),
        )

    def _feature_state(self) -> dict[str, Any] | None:
        builder = self.features
        return {key: getattr(builder, key) for key in _BUILDER_FIELDS} if builder else None

    def _load_feature_state(self, state: Mapping[str, Any]) -> None:
        self.features = self._observation_builder(state["start_lr"], state["initial_val_loss"])
        history = self.features.history
        past = state.get("past", [])  # saved before observations had a history: none
        if len(past) != history - 1:
            raise ConfigError(
                f"the saved state holds {len(past)} past evaluations; this policy observes "
                f"{history} at a time (is it the policy the state was saved with?)"
            )
        for key in _BUILDER_FIELDS:
            setattr(self.features, key, state[key] if key != "past" else list(past))

    def parameters(self) -> list[torch.Tensor]:
        """Every parameter of every group, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _reset_measurements(self) -> None:
        # The sum stays a tensor between observations: no device sync at every step.
        self.grad_norm_sum: torch.Tensor | float = 0.0
        self.grad_norm_count: torch.Tensor | int = 0
        self.update_ratio = math.nan

    @torch.no_grad()
    def _before_optimizer_step(self) -> None:
        """Before every `optimizer.step()`: the gradient norm, and the sampled weights
        before the interval's last step."""
        params = self.parameters()
        if self._measure_grad_norm:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self.record_grad_norm(total_norm(grads))
        if self.is_interval_end(self.steps_done + 1):
            self.update_ratio_estimator.before_step(params)
            self._measuring_update = True

    def _after_optimizer_step(self) -> None:
        if self._measuring_update:
            self.update_ratio = self.update_ratio_estimator.after_step(self.parameters())
            self._measuring_update = False


# -- the PyTorch scheduler front end ----------------------------------------------------------


class PolicyScheduler(LRScheduler):
    """Sets the LR from a learned lrpilot policy, once per evaluation interval.

    Args:
        optimizer: any torch optimizer. Every param group's LR becomes its initial
            LR x (policy LR / `start_lr`), so groups keep their ratios.
        policy: an lrpilot `Policy` (`load_policy(path)`), or any object with `act`,
            `next_lr` (with the keyword `interval`: the interval it sets), `applied_lr`,
            `lr_min`, `lr_max` and `masked_features`.
        total_steps: the run's optimizer steps (the `progress` feature is step / T).
        eval_interval: steps between observations; the last interval takes the rest.
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

    `last_epoch` counts the `step()` calls: the optimizer steps done. `last_stats` (an
    `IntervalStats`) and `last_action` are what the policy saw and did at the last
    observation, for logging. `controller` is the `PolicyController` doing the work.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any,
        total_steps: int,
        eval_interval: int,
        start_lr: float | None = None,
        initial_val_loss: float | None = None,
        *,
        update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE,
        measure_grad_norm: bool = True,
    ) -> None:
        self.controller = PolicyController(
            optimizer,
            policy,
            total_steps,
            eval_interval,
            start_lr=start_lr,
            update_ratio_sample=update_ratio_sample,
            measure_grad_norm=measure_grad_norm,
        )
        super().__init__(optimizer)
        self.base_lrs = list(self.controller.base_lrs)
        if initial_val_loss is not None:
            self.observe(val_loss=initial_val_loss)

    # What the policy saw and did, and its settings, read from the controller.
    policy = property(lambda self: self.controller.policy)
    total_steps = property(lambda self: self.controller.total_steps)
    eval_interval = property(lambda self: self.controller.eval_interval)
    start_lr = property(lambda self: self.controller.start_lr)
    lr = property(lambda self: self.controller.lr, doc="the policy's LR")
    features = property(lambda self: self.controller.features)
    observed_at = property(lambda self: self.controller.observed_at)
    last_stats = property(lambda self: self.controller.last_stats)
    last_action = property(lambda self: self.controller.last_action)

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
        train_loss: float | Sequence[float] | torch.Tensor | None = None,
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
        state = dict(state_dict)
        if "steps_done" not in state and "last_epoch" in state:  # saved by lrpilot <= 0.1
            state["steps_done"] = state["last_epoch"]
        missing = [key for key in ("last_epoch", "step_count") if key not in state]
        if missing:
            raise ConfigError(f"not a PolicyScheduler state dict: it lacks {', '.join(missing)}")
        self.controller.load_state_dict(state, kind="PolicyScheduler", this="scheduler")
        self.base_lrs = list(self.controller.base_lrs)
        self.last_epoch = state["last_epoch"]
        self._step_count = state["step_count"]
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopSettings:
    """The settings a framework callback takes before it knows its trainer, each checked
    when given (None: taken from the trainer later)."""

    eval_interval: int | None = None
    total_steps: int | None = None
    start_lr: float | None = None
    initial_val_loss: float | None = None
    update_ratio_sample: int | None = UPDATE_RATIO_SAMPLE

    def __post_init__(self) -> None:
        for name in ("eval_interval", "total_steps", "update_ratio_sample"):
            if getattr(self, name) is not None:
                require_positive_int(name, getattr(self, name))
        if self.start_lr is not None:
            positive_float("start_lr", self.start_lr)
        if self.initial_val_loss is not None:
            positive_float("initial validation loss", self.initial_val_loss)


def positive_float(name: str, value: Any) -> float:
    """`value` as a float if it is a positive finite number, else a `ConfigError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return number


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all tensors together, as `clip_grad_norm_` computes it."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(tensors)
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _rank() -> int:
    """This process's rank under an initialised `torch.distributed`; 0 otherwise."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    return 0


def _broadcast_from_rank_zero(value: Any) -> Any:
    """`value` as rank 0 has it, on every rank (itself when not distributed)."""
    distributed = torch.distributed
    if not (
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    ):
        return value
    box = [value]
    distributed.broadcast_object_list(box, src=0)
    return box[0]


def _as_floats(values: Any) -> list[float] | float:
    """Train losses as Python floats (a number stays one number). Tensors are stacked
    on one device first, so a list of losses kept on a GPU costs one sync, here."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().tolist()  # a 0-d tensor gives one float
    try:
        values = list(values)
    except TypeError:  # a single number
        return float(values)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    device = tensors[0].device
    stacked = torch.stack([torch.as_tensor(v).detach().reshape(()).to(device) for v in values])
    return stacked.cpu().tolist()


def _train_loss_stats(
    train_loss: float | Sequence[float] | torch.Tensor | None, steps: int
) -> tuple[float, float, float, int]:
    """Mean, std, per-step slope and non-finite count of an interval's train losses,
    as `StepRun.train` computes them (non-finite losses left out)."""
    if train_loss is None:
        return math.nan, math.nan, math.nan, 0
    values = _as_floats(train_loss)
    if isinstance(values, float):  # the mean only: a non-finite one spoils the interval
        if not math.isfinite(values):
            return math.nan, math.nan, math.nan, steps
        return values, math.nan, math.nan, 0
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan, len(values)
    # Losses of evenly spaced steps (not every step) give the per-step slope too.
    slope = least_squares_slope(finite) * (len(values) / steps)
    return float(np.mean(finite)), float(np.std(finite)), slope, len(values) - len(finite)
