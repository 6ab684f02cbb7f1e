"""One training run, advanced interval by interval: the `TrainingRun` protocol, and
`StepRun`, the one implementation behind every workload.

A workload says *what* to train, for one seed, as `RunParts`: the model, its
optimizer, the training batches, the loss of a batch, and two evaluations, the
validation loss (what a controller observes) and the test loss (the score, on data
the controller never sees). `StepRun` trains the parts and measures, itself, what
every controller is shown (`IntervalStats`): train-loss mean, std and slope, the
gradient norm, the update-to-weight ratio, non-finite steps; and the run's sizes
(`RunContext`: parameters, mean fan-in, tokens per step).

    parts = RunParts(model, optimizer, batches, loss=..., validation_loss=...,
                     test_loss=...)
    run = StepRun(parts)
    stats = run.train(20, lr=3e-3)  # or a function of the global step
    run.test().loss                 # once, at the end
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lrpilot.errors import ConfigError, require_positive_int
from lrpilot.lm.run_context import RunContext
from lrpilot.lm.run_parts import RunParts, batch_length, check_run_parts, described
from lrpilot.lm.sweep import Snapshot, SweepResult, model_tensors

LRSpec = float | Callable[[int], float]  # a constant LR, or the LR for a global step


@dataclass(frozen=True)
class IntervalStats:
    """What one evaluation interval of training measured."""

    step: int  # global step count at the end of the interval
    steps: int  # optimizer steps attempted in this interval
    lr: float  # LR of the interval's last step
    lr_mean: float  # mean LR over the interval
    train_loss_mean: float  # over the finite steps
    train_loss_std: float
    train_loss_slope: float  # least-squares slope of train loss per step
    val_loss: float  # the workload's validation loss after the interval
    grad_norm: float  # mean gradient norm before clipping
    update_ratio: float  # ||delta w|| / ||w|| of the interval's last step
    nonfinite: bool  # a non-finite loss or gradient was seen (those steps were skipped)
    nonfinite_steps: int
    tokens: int  # training tokens (or examples) consumed in this interval
    seconds: float  # wall time of the interval, validation included


@dataclass(frozen=True)
class TestResult:
    """The score of a finished run, on its test split."""

    loss: float
    accuracy: float = math.nan  # classification workloads; NaN for language models
    items: int = 0  # predicted tokens (or examples) the test loss averages over


@runtime_checkable
class TrainingRun(Protocol):
    """One seeded training run, advanced interval by interval.

    Everything in lrpilot that trains (the environment, fixed schedules, replay,
    compare, the benchmarks) drives a run only through this protocol.
    """

    step: int  # optimizer steps taken so far
    tokens: int  # training tokens (or examples) consumed so far
    optimizer: torch.optim.Optimizer  # what fixed schedules are attached to

    def sweep(self, lrs: list[float]) -> SweepResult:
        """One step at each of `lrs`, then the weights and optimizer state put back
        exactly (the rolled-back LR sweep); the steps count and their batches are used."""
        ...

    def train(self, steps: int, lr: LRSpec) -> IntervalStats:
        """Train `steps` optimizer steps at `lr` (a float, or a function of the step)."""
        ...

    def set_lr(self, lr: float) -> None:
        """Set the first parameter group's LR to `lr`, the others' in proportion."""
        ...

    def evaluate(self) -> float:
        """The validation loss: what a controller observes."""
        ...

    def test(self) -> TestResult:
        """The test loss (and accuracy): the score, never shown to a controller."""
        ...

    def context(self) -> RunContext:
        """The run's sizes: parameters, mean fan-in, tokens per step."""
        ...


def interval_lengths(total_steps: int, eval_every: int) -> list[int]:
    """Steps of each evaluation interval of a run; the last one takes the remainder."""
    full, rest = divmod(total_steps, eval_every)
    return [eval_every] * full + ([rest] if rest else [])


def least_squares_slope(values: list[float]) -> float:
    """Least-squares slope of `values` per index (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


@torch.no_grad()
def weight_update_ratio(before: list[torch.Tensor], after: list[torch.nn.Parameter]) -> float:
    """||w_after - w_before|| / ||w_before|| over all parameters: the step size, scale-free."""
    pairs = zip(after, before, strict=True)
    delta = torch.stack([torch.linalg.vector_norm(a - b) for a, b in pairs])
    weight = torch.stack([torch.linalg.vector_norm(b) for b in before])
    return float(delta.norm() / weight.norm().clamp_min(1e-12))


class StepRun:
    """A `TrainingRun` over `RunParts`: the training loop and its measurements.

    `train(steps, lr)` sets the first parameter group's LR to `lr` and every other
    group's in proportion, as the optimizer was built (a muP-style or a lower
    embedding LR keeps its ratio). A step whose loss or gradient is not finite is
    skipped and counted; the caller decides whether to end the run.
    """

    def __init__(self, parts: RunParts, where: str = "the workload") -> None:
        self.where = where  # names the workload in error messages
        self.parts = check_run_parts(parts, where)
        self.model = parts.model
        self.optimizer = parts.optimizer
        first = float(self.optimizer.param_groups[0]["lr"])
        # Each group's LR relative to the first's, as the workload set them.
        self.group_ratios = [
            float(group["lr"]) / first if first > 0 else 1.0
            for group in self.optimizer.param_groups
        ]
        self.step = 0
        self.tokens = 0
        self._batches: Iterator[Any] = iter(parts.batches)
        self._items_in = parts.items_in or batch_length
        self._first_batch_items: int | None = None  # what `context()` counts per step
        self._peeked: list[Any] = []  # the first batch, when `context()` came before it

    def replace_optimizer(self, make: Callable[[list[dict]], torch.optim.Optimizer]) -> None:
        """Train on with the optimizer `make(groups)` builds from this run's parameter
        groups (their params, weight decay and LRs): how a tuning-free optimizer takes a
        workload's place."""
        groups = [
            {
                "params": group["params"],
                "weight_decay": group.get("weight_decay", 0.0),
                "lr": group["lr"],
            }
            for group in self.optimizer.param_groups
        ]
        self.optimizer = make(groups)
        if len(self.optimizer.param_groups) != len(self.group_ratios):
            raise ConfigError("the replacement optimizer must keep the run's parameter groups")

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def set_lr(self, lr: float) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.group_ratios, strict=True):
            group["lr"] = lr * ratio

    def _next_batch(self) -> Any:
        if self._peeked:
            return self._peeked.pop()
        try:
            batch = next(self._batches)
        except StopIteration:
            raise ConfigError(
                f"the workload's training batches ran out after {self.step} steps"
            ) from None
        if self._first_batch_items is None:
            self._first_batch_items = self._items_in(batch)
        return batch

    def context(self) -> RunContext:
        """The run's sizes (`RunContext`): the optimizer's parameters, and the items of the
        first training batch as tokens per step (asked before any step, it takes that
        batch out of the stream early and trains on it at the first step)."""
        if self._first_batch_items is None:
            self._peeked.append(self._next_batch())
        return RunContext.measure(self.params, tokens_per_step=self._first_batch_items)

    def _optimizer_mode(self, mode: str) -> None:
        """Schedule-free optimizers evaluate at other weights than they train at: they
        have `train()` and `eval()`, which must be called around evaluations."""
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    def _number(self, value: Any, name: str) -> float:
        """`value` as a float if it is a number (or a one-element tensor), else a
        `ConfigError` naming the workload's function `name` that returned it."""
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value.item())
        if isinstance(value, int | float | np.number) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{self.where}: {name} must return a number, got {described(value)}")

    def _loss(self, batch: Any) -> torch.Tensor:
        """The workload's loss of `batch`, checked: a one-element tensor with a gradient."""
        loss = self.parts.loss(batch)
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(
                f"{self.where}: loss(batch) must return a scalar torch.Tensor, got "
                f"{described(loss)}"
            )
        if loss.numel() != 1:
            raise ConfigError(
                f"{self.where}: loss(batch) must return a scalar (the mean over the batch), "
                f"got a tensor of shape {tuple(loss.shape)}"
            )
        if not loss.requires_grad:
            raise ConfigError(
                f"{self.where}: loss(batch) returned a tensor without a gradient (computed "
                f"under torch.no_grad(), detached, or from parameters that do not require grad)"
            )
        return loss

    @torch.inference_mode()
    def _evaluation(self, evaluate: Callable[[], Any], name: str) -> float:
        was_training = self.model.training
        self.model.eval()
        self._optimizer_mode("eval")
        try:
            return self._number(evaluate(), name)
        finally:
            self._optimizer_mode("train")
            self.model.train(was_training)

    def evaluate(self) -> float:
        return self._evaluation(self.parts.validation_loss, "validation_loss()")

    def test(self) -> TestResult:
        loss = self._evaluation(self.parts.test_loss, "test_loss()")
        accuracy = self.parts.test_accuracy
        return TestResult(
            loss=loss,
            accuracy=math.nan
            if accuracy is None
            else self._evaluation(accuracy, "test_accuracy()"),
            items=self.parts.test_items,
        )

    def _train_step(
        self, lr: float, params: list[torch.nn.Parameter], clip: float, measure: bool = False
    ) -> tuple[float | None, float, float]:
        """One optimizer step at `lr` on the next batch: its loss, gradient norm and (with
        `measure`, else 0) update ratio; the loss is None when it or the gradient is not
        finite (the step is skipped, its batch used)."""
        if not math.isfinite(lr) or lr < 0:
            raise ConfigError(f"learning rate must be finite and >= 0, got {lr!r}")
        self.set_lr(lr)
        batch = self._next_batch()
        loss = self._loss(batch)
        loss_value = loss.item()
        self.step += 1
        self.tokens += self._items_in(batch)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            return None, math.nan, 0.0
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True).item()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None, math.nan, 0.0
        before = [p.detach().clone() for p in params] if measure else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ratio = weight_update_ratio(before, params) if before is not None else 0.0
        return loss_value, grad_norm, update_ratio

    def sweep(self, lrs: list[float]) -> SweepResult:
        """The rolled-back LR sweep (`lrpilot.lm.sweep`): one step at each of `lrs`,
        recording the train losses, then the weights, buffers and optimizer state put
        back exactly. The steps count in `step` and `tokens`; their batches are used up."""
        params = self.params
        clip = self.parts.grad_clip if self.parts.grad_clip is not None else math.inf
        in_model = {id(t) for t in model_tensors(self.model)}
        tensors = model_tensors(self.model) + [p for p in params if id(p) not in in_model]
        snapshot = Snapshot(tensors, self.optimizer)
        self.model.train()
        losses = []
        try:
            for lr in lrs:
                loss_value, _, _ = self._train_step(float(lr), params, clip)
                losses.append(math.nan if loss_value is None else loss_value)
        finally:
            snapshot.restore()
        return SweepResult(lrs=tuple(float(lr) for lr in lrs), losses=tuple(losses))

    def train(self, steps: int, lr: LRSpec) -> IntervalStats:
        require_positive_int("steps", steps)
        lr_at = lr if callable(lr) else (lambda _step: lr)
        params = self.params
        clip = self.parts.grad_clip if self.parts.grad_clip is not None else math.inf
        start = time.perf_counter()
        losses: list[float] = []
        grad_norms: list[float] = []
        lrs: list[float] = []
        nonfinite_steps = 0
        update_ratio = 0.0
        tokens_before = self.tokens
        self.model.train()
        for i in range(steps):
            step_lr = float(lr_at(self.step))
            lrs.append(step_lr)
            last = i == steps - 1
            loss_value, grad_norm, ratio = self._train_step(step_lr, params, clip, last)
            if loss_value is None:
                nonfinite_steps += 1
                continue
            update_ratio = ratio if last else update_ratio
            losses.append(loss_value)
            grad_norms.append(grad_norm)
        val_loss = self.evaluate()
        return IntervalStats(
            step=self.step,
            steps=steps,
            lr=lrs[-1],
            lr_mean=float(np.mean(lrs)),
            train_loss_mean=float(np.mean(losses)) if losses else math.nan,
            train_loss_std=float(np.std(losses)) if losses else math.nan,
            train_loss_slope=least_squares_slope(losses),
            val_loss=val_loss,
            grad_norm=float(np.mean(grad_norms)) if grad_norms else math.nan,
            update_ratio=update_ratio,
            nonfinite=nonfinite_steps > 0 or not math.isfinite(val_loss),
            nonfinite_steps=nonfinite_steps,
            tokens=self.tokens - tokens_before,
            seconds=time.perf_counter() - start,
        )
