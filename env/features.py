"""Observation features: scale-free loss statistics built from `IntervalStats`.

`FEATURES` is the one table of what the controller sees: name, formula and why.
docs/design.md repeats it. Every value is finite: a non-finite input gives 0 and every
feature is clipped to [-FEATURE_CLIP, FEATURE_CLIP]. A feature set (`FEATURE_SETS`)
is a named prefix of `FEATURES`: `v2`, the default, is the first 13; `v2+sweep` adds
the `sweep` group. Policy files record their set and refuse one this lrpilot does not
compute; change a set's features, change its name.

Notation: `L_t` validation loss after interval t (`L_0` before training), `lr_0` the
start LR, `lr_t` the LR the controller set for interval t, `m_t`, `s_t`, `k_t` the
train-loss mean, standard deviation and per-step slope over the interval, `n_t` its
steps, `g_t` the mean gradient norm, `u_t` the update-to-weight ratio, `T` the step
budget. The `sweep` group reads the rolled-back LR sweep at the start of the run
(`lrpilot.lm.sweep`; `ActionRule.sweep_fraction`): `S` steps at LRs `r_j` rising
geometrically from `sweep_low * lr_0` to `sweep_high * lr_0`, `~l_j` the smoothed
train loss of step `j` (a debiased moving average, infinite from where the curve
diverged), `r*` the LR the curve suggests (fastai's valley). Its values are the same in
every observation of a run, and 0 in a run without a sweep.

Losses of 0 and below. The features are made for losses >= 0 (cross-entropy, MSE),
and are defined for a loss of exactly 0, as when a small data set is memorised:

- a log-ratio of two values (`log(L_t / L_{t-1})`, `log(L_t / L_0)`,
  `log(L_t / min L_i)`, `log(L_t / m_t)`, `log(g_t / g_{t-1})`) reads 0 when both
  are 0, `-FEATURE_CLIP` when only the numerator is 0 and `+FEATURE_CLIP` when only
  the denominator is: the values the clipped feature tends to as the value goes to 0;
- `k_t * n_t / m_t` and `s_t / m_t` read 0 when `m_t` is 0.

A loss that can be negative (a Gaussian negative log-likelihood, say) has no scale
these ratios can measure: wherever a loss in a ratio is negative, the feature reads 0,
as for a non-finite value. Shift such a loss by a constant bound (so it is >= 0) to
let the controller see it. For positive finite values every formula is the plain one
in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lrpilot.errors import ConfigError
from lrpilot.lm.run import IntervalStats
from lrpilot.lm.sweep import SweepResult

FEATURE_VERSION = "v2"  # the feature set of the env and of policy files unless one is named
REFERENCE_LR = 1e-3  # `log_lr` is measured from here, so typical LRs give small values
FEATURE_CLIP = 10.0


@dataclass(frozen=True)
class Feature:
    name: str
    formula: str
    why: str


# What every interval's statistics show (feature set v2).
BASE_FEATURES: tuple[Feature, ...] = (
    Feature("progress", "step / T", "where in the run we are: decay belongs near the end"),
    Feature(
        "log_lr",
        "log(lr_t / 1e-3)",
        "the LR itself: lets the controller learn which LRs are too high or too low",
    ),
    Feature("log_lr_rel_start", "log(lr_t / lr_0)", "how far the controller has moved the LR"),
    Feature("log_val_rel_prev", "log(L_t / L_{t-1})", "last interval's progress (= -reward)"),
    Feature("log_val_rel_init", "log(L_t / L_0)", "total progress so far"),
    Feature("log_val_rel_best", "log(L_t / min_{i<=t} L_i)", "> 0 when the loss went back up"),
    Feature(
        "train_slope_rel", "k_t * n_t / m_t", "is train loss still falling inside the interval"
    ),
    Feature("train_noise_rel", "s_t / m_t", "noise of the train loss: LR too high for the batch"),
    Feature("gen_gap", "log(L_t / m_t)", "validation against train loss: over- or underfitting"),
    Feature("log_grad_norm", "log(g_t)", "gradient scale"),
    Feature("log_grad_norm_change", "log(g_t / g_{t-1})", "gradients growing: instability ahead"),
    Feature(
        "log_update_ratio", "log(u_t)", "step size relative to the weights, LR made scale-free"
    ),
    Feature("nonfinite_fraction", "skipped steps / n_t", "the run is breaking down"),
)
SWEEP_POINTS = 5  # the sweep's smoothed loss at this many log-spaced LRs of its range
SWEEP_FEATURES: tuple[Feature, ...] = (
    *(
        Feature(
            f"sweep_loss_{k}",
            f"log(~l_j / L_0), j = round({k}/{SWEEP_POINTS - 1} * (S - 1)); +10 if diverged",
            "the loss-against-LR curve at a fixed point of the sweep's range",
        )
        for k in range(SWEEP_POINTS)
    ),
    Feature(
        "sweep_log_lr_suggested",
        "log(r* / lr_0)",
        "where the sweep says the run's LR lies, from the start LR",
    ),
)
FEATURES: tuple[Feature, ...] = (*BASE_FEATURES, *SWEEP_FEATURES)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
SWEEP_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in SWEEP_FEATURES)
# Each feature set's features: a prefix of FEATURES.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "v2": FEATURE_NAMES[: len(FEATURE_NAMES) - len(SWEEP_FEATURES)],
    "v2+sweep": FEATURE_NAMES,
}
NUM_FEATURES = len(FEATURE_SETS[FEATURE_VERSION])  # in the default set
# The features by what they read, for ablations and the docs; every feature is in one.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "progress": ("progress",),
    "absolute LR": ("log_lr",),
    "LR moved": ("log_lr_rel_start",),
    "loss": (
        "log_val_rel_prev",
        "log_val_rel_init",
        "log_val_rel_best",
        "train_slope_rel",
        "train_noise_rel",
        "gen_gap",
    ),
    "gradient norm": ("log_grad_norm", "log_grad_norm_change"),
    "update ratio": ("log_update_ratio",),
    "breakdown": ("nonfinite_fraction",),
    "sweep": SWEEP_FEATURE_NAMES,
}


def _log(x: float) -> float:
    return math.log(x) if x > 0 and math.isfinite(x) else math.nan


def log_ratio(numerator: float, denominator: float) -> float:
    """`log(numerator / denominator)` of two values >= 0, defined where either is 0.

    For two positive finite values it is exactly `_log(numerator / denominator)`. 0 / 0
    is 0 (no change); 0 / positive is `-FEATURE_CLIP` and positive / 0 is
    `+FEATURE_CLIP`, where the clipped feature goes as the value goes to 0. A negative
    or non-finite value gives NaN, which the observation reads as 0.
    """
    values = (numerator, denominator)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return math.nan
    if numerator == 0:
        return 0.0 if denominator == 0 else -FEATURE_CLIP
    if denominator == 0:
        return FEATURE_CLIP
    return _log(numerator / denominator)


def finite_clipped(values: list[float]) -> np.ndarray:
    """float32 vector with NaN/inf replaced by 0 and everything clipped to the bound."""
    array = np.asarray(values, dtype=np.float64)
    array[~np.isfinite(array)] = 0.0
    return np.clip(array, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


def check_history(history: int) -> int:
    """`history` (evaluations per observation) if it is an int >= 1, else a `ConfigError`."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError(f"history must be a whole number of evaluations >= 1, got {history!r}")
    return history


def check_feature_version(version: str) -> str:
    """`version` if it names a feature set, else a `ConfigError` naming the known ones."""
    if version not in FEATURE_SETS:
        raise ConfigError(
            f"unknown feature set {version!r}; this lrpilot computes {', '.join(FEATURE_SETS)}"
        )
    return version


def observation_size(history: int, version: str = FEATURE_VERSION) -> int:
    """Values in an observation of `history` evaluations of feature set `version`."""
    return len(FEATURE_SETS[check_feature_version(version)]) * check_history(history)


def sweep_feature_values(
    sweep: SweepResult | None, start_lr: float, initial_loss: float
) -> list[float]:
    """The `sweep` group's values (see `SWEEP_FEATURES`): all 0 without a sweep.

    `start_lr` is the LR the sweep's range is relative to (`lr_0`, as the run trains
    it) and `initial_loss` is `L_0`."""
    if sweep is None:
        return [0.0] * len(SWEEP_FEATURES)
    curve = sweep.smoothed_losses
    last = len(curve) - 1
    points = [curve[round(k / (SWEEP_POINTS - 1) * last)] for k in range(SWEEP_POINTS)]
    losses = [FEATURE_CLIP if v == math.inf else log_ratio(v, initial_loss) for v in points]
    return [*losses, _log(sweep.suggested_lr / start_lr)]


def check_masked_features(masked: tuple[str, ...]) -> tuple[str, ...]:
    """`masked` as a tuple of known feature names, or a `ConfigError` naming the unknown."""
    masked = tuple(masked)
    unknown = [name for name in masked if name not in FEATURE_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown feature(s) to mask: {', '.join(map(repr, unknown))}; "
            f"features are {', '.join(FEATURE_NAMES)}"
        )
    return masked


class ObservationBuilder:
    """Turns the stream of `IntervalStats` of one run into observation vectors.

    `masked` features always read 0: how an ablation hides a feature from the
    controller while the observation keeps its shape.

    `history`: the observation holds the feature vectors of the last `history`
    evaluations, newest first (`history` times the set's features; evaluations before
    the run's start read 0). A history of more than one lets a policy see how the run
    answered its last LR changes, which one evaluation cannot show.

    `version` names the feature set (`FEATURE_SETS`); `sweep` is the `sweep` group's
    values (`sweep_feature_values`), shown in every observation of the run.
    """

    def __init__(
        self,
        start_lr: float,
        initial_val_loss: float,
        steps: int,
        masked: tuple[str, ...] = (),
        history: int = 1,
        version: str = FEATURE_VERSION,
        sweep: list[float] | None = None,
    ) -> None:
        self.masked = check_masked_features(masked)
        self.history = check_history(history)
        self.size = len(FEATURE_SETS[check_feature_version(version)])
        indices = [FEATURE_NAMES.index(name) for name in self.masked]
        self._masked_indices = [index for index in indices if index < self.size]
        self.sweep_values = list(sweep) if sweep is not None else [0.0] * len(SWEEP_FEATURES)
        self.start_lr = start_lr
        self.initial_val_loss = initial_val_loss
        self.steps = steps
        self.previous_val_loss = initial_val_loss
        self.best_val_loss = initial_val_loss
        self.previous_grad_norm = math.nan
        # The vectors of the last `history - 1` evaluations, newest first.
        self.past: list[list[float]] = [[0.0] * self.size for _ in range(history - 1)]

    def initial(self) -> np.ndarray:
        """The observation at reset: the start LR, the sweep, and nothing trained yet."""
        values = [0.0] * len(BASE_FEATURES)
        values[FEATURE_NAMES.index("log_lr")] = _log(self.start_lr / REFERENCE_LR)
        return self._vector(values)

    def _vector(self, base: list[float]) -> np.ndarray:
        values = [*base, *self.sweep_values][: self.size]
        for index in self._masked_indices:
            values[index] = 0.0
        newest = finite_clipped(values)
        stacked = np.concatenate([newest, np.asarray(self.past, dtype=np.float32).reshape(-1)])
        if self.history > 1:
            self.past = [newest.tolist(), *self.past[:-1]]
        return stacked

    def update(self, stats: IntervalStats, controller_lr: float) -> np.ndarray:
        """The observation after one interval whose LR the controller set to
        `controller_lr` (in a warmup or cooldown its steps trained at less; the LR features show
        the controller's LR)."""
        val, mean = stats.val_loss, stats.train_loss_mean
        if math.isfinite(val):
            self.best_val_loss = min(self.best_val_loss, val)
        values = [
            stats.step / self.steps,
            _log(controller_lr / REFERENCE_LR),
            _log(controller_lr / self.start_lr),
            log_ratio(val, self.previous_val_loss),
            log_ratio(val, self.initial_val_loss),
            log_ratio(val, self.best_val_loss),
            stats.train_loss_slope * stats.steps / mean if mean > 0 else math.nan,
            stats.train_loss_std / mean if mean > 0 else math.nan,
            log_ratio(val, mean),
            _log(stats.grad_norm),
            log_ratio(stats.grad_norm, self.previous_grad_norm),
            _log(stats.update_ratio),
            stats.nonfinite_steps / stats.steps,
        ]
        if math.isfinite(val):
            self.previous_val_loss = val
        if math.isfinite(stats.grad_norm):
            self.previous_grad_norm = stats.grad_norm
        return self._vector(values)
