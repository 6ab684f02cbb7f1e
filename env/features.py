"""Observation features: scale-free loss statistics built from `IntervalStats`, the
sizes of the run (`RunContext`) that fix the optimal LR in scaling-law fits, and the
rolled-back LR sweep at the run's start (`SweepResult`).

`FEATURES` is the one table of what a controller may see: name, formula and why.
docs/design.md repeats it. Every value is finite: a non-finite input gives 0 and every
feature is clipped to [-FEATURE_CLIP, FEATURE_CLIP].

Feature sets. `FEATURE_SETS` names, per version, the features an observation holds, in
order: the features of its `FEATURE_GROUPS`, group after group. Each set extends the
one before it (a test checks it), so a feature has the same index in every set that
holds it. Policy files record the set they were trained on (`feature_version`), and
the env and the in-loop controller build the observation of that set; new training
uses `FEATURE_VERSION`. Change what a set holds, add a version.

Notation: `L_t` validation loss after interval t (`L_0` before training), `lr_0` the
start LR, `lr_t` the LR the controller set for interval t, `m_t`, `s_t`, `k_t` the
train-loss mean, standard deviation and per-step slope over the interval, `n_t` its
steps, `g_t` the mean gradient norm, `u_t` the update-to-weight ratio, `T` the step
budget; `N` the parameters the optimizer trains, `F` their weight matrices' mean fan-in
and `B` the tokens (or examples) per optimizer step (`lrpilot.lm.run_context`).

The context features (`log_params`, `log_fan_in`, `log_tokens_per_step`, `log_budget`)
are constant over a run and are in every observation, the initial one included: the
sizes are known before the first step. Each is a log around a reference size, so
typical runs give small values.

The `sweep` group reads the rolled-back LR sweep at the start of the run
(`lrpilot.lm.sweep`; `ActionRule.sweep_fraction`): `S` steps at LRs `r_j` rising
geometrically from the rule's `lr_min` to its `lr_max` (absolute LRs, whatever the
start LR), `~l_j` the smoothed train loss of step `j` (a debiased moving average,
infinite from where the curve diverged), `r*` the LR the curve suggests (fastai's
valley). The sweep's range is fixed, so its log-spaced points `sweep_loss_k` read the
loss at fixed LRs (the nearest step's). Its values are the same in every observation
of a run, and 0 in a run without a sweep.

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
from lrpilot.lm.run_context import RunContext
from lrpilot.lm.sweep import SweepResult

REFERENCE_LR = 1e-3  # `log_lr` is measured from here, so typical LRs give small values
# The context features are measured from these sizes, so typical runs give small values.
REFERENCE_PARAMS = 1e6
REFERENCE_FAN_IN = 64
REFERENCE_TOKENS_PER_STEP = 1e3
REFERENCE_BUDGET = 1e3
FEATURE_CLIP = 10.0
SWEEP_POINTS = 5  # the sweep's smoothed loss at this many log-spaced LRs of its range


@dataclass(frozen=True)
class Feature:
    name: str
    formula: str
    why: str


FEATURES: tuple[Feature, ...] = (
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
    Feature(
        "log_params",
        "log(N / 1e6)",
        "model size: the optimal LR falls as models grow",
    ),
    Feature(
        "log_fan_in",
        "log(F / 64)",
        "width: Adam's optimal LR for a weight matrix scales about as 1 / fan-in (muP)",
    ),
    Feature(
        "log_tokens_per_step",
        "log(B / 1e3)",
        "batch size: larger batches take larger LRs, up to the critical batch size",
    ),
    Feature(
        "log_budget",
        "log(T / 1e3)",
        "run length: the optimal LR falls as the step budget grows",
    ),
    *(
        Feature(
            f"sweep_loss_{k}",
            f"log(~l_j / L_0), j = round({k}/{SWEEP_POINTS - 1} * (S - 1)); +10 if diverged",
            "the loss-against-LR curve at a fixed LR of the sweep's range",
        )
        for k in range(SWEEP_POINTS)
    ),
    Feature(
        "sweep_log_lr_suggested",
        "log(r* / 1e-3)",
        "the LR the sweep suggests for the run",
    ),
)
# The features by what they read, for feature sets, ablations and the docs; every
# feature is in one.
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
    "context": ("log_params", "log_fan_in", "log_tokens_per_step", "log_budget"),
    "sweep": (*(f"sweep_loss_{k}" for k in range(SWEEP_POINTS)), "sweep_log_lr_suggested"),
}
_V2_GROUPS = (
    "progress",
    "absolute LR",
    "LR moved",
    "loss",
    "gradient norm",
    "update ratio",
    "breakdown",
)
# The groups of each feature set, in observation order: a set extends the one before it.
FEATURE_SET_GROUPS: dict[str, tuple[str, ...]] = {
    "v2": _V2_GROUPS,
    "v3": (*_V2_GROUPS, "context", "sweep"),
}
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    version: tuple(name for group in groups for name in FEATURE_GROUPS[group])
    for version, groups in FEATURE_SET_GROUPS.items()
}
FEATURE_VERSION = "v3"  # the set new training uses
FEATURE_NAMES: tuple[str, ...] = FEATURE_SETS[FEATURE_VERSION]
NUM_FEATURES = len(FEATURE_NAMES)
CONTEXT_FEATURES = FEATURE_GROUPS["context"]
SWEEP_FEATURES = FEATURE_GROUPS["sweep"]


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


def feature_names(version: str) -> tuple[str, ...]:
    """The features of set `version`, in observation order, or a one-line `ConfigError`."""
    if not isinstance(version, str) or version not in FEATURE_SETS:
        raise ConfigError(
            f"unknown feature set {version!r}; this lrpilot computes "
            f"{', '.join(map(repr, FEATURE_SETS))}"
        )
    return FEATURE_SETS[version]


def reads_context(version: str) -> bool:
    """Whether the observations of set `version` hold the run's sizes (`RunContext`)."""
    return any(name in CONTEXT_FEATURES for name in feature_names(version))


def context_features(context: RunContext, steps: int) -> dict[str, float]:
    """The context features of a run of `steps` steps with sizes `context` (unclipped)."""
    return {
        "log_params": _log(context.params / REFERENCE_PARAMS),
        "log_fan_in": _log(context.mean_fan_in / REFERENCE_FAN_IN),
        "log_tokens_per_step": _log(context.tokens_per_step / REFERENCE_TOKENS_PER_STEP),
        "log_budget": _log(steps / REFERENCE_BUDGET),
    }


def check_history(history: int) -> int:
    """`history` (evaluations per observation) if it is an int >= 1, else a `ConfigError`."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError(f"history must be a whole number of evaluations >= 1, got {history!r}")
    return history


def observation_size(history: int, version: str = FEATURE_VERSION) -> int:
    """Values in an observation of `history` evaluations of feature set `version`."""
    return len(feature_names(version)) * check_history(history)


def sweep_feature_values(sweep: SweepResult | None, initial_loss: float) -> dict[str, float]:
    """The `sweep` group's values (unclipped): all 0 without a sweep.

    `initial_loss` is `L_0`, the loss the sweep's curve is measured against."""
    if sweep is None:
        return dict.fromkeys(SWEEP_FEATURES, 0.0)
    curve = sweep.smoothed_losses
    last = len(curve) - 1
    points = [curve[round(k / (SWEEP_POINTS - 1) * last)] for k in range(SWEEP_POINTS)]
    losses = [FEATURE_CLIP if v == math.inf else log_ratio(v, initial_loss) for v in points]
    values = [*losses, _log(sweep.suggested_lr / REFERENCE_LR)]
    return dict(zip(SWEEP_FEATURES, values, strict=True))


def check_masked_features(
    masked: tuple[str, ...], version: str = FEATURE_VERSION
) -> tuple[str, ...]:
    """`masked` as a tuple of features of set `version`, or a `ConfigError` naming the
    unknown."""
    masked = tuple(masked)
    names = feature_names(version)
    unknown = [name for name in masked if name not in names]
    if unknown:
        raise ConfigError(
            f"unknown feature(s) to mask: {', '.join(map(repr, unknown))}; "
            f"features of set {version!r} are {', '.join(names)}"
        )
    return masked


class ObservationBuilder:
    """Turns the stream of `IntervalStats` of one run into observation vectors of the
    feature set `version`.

    `context`: the run's sizes (`RunContext`), which a set with context features needs
    (a `ConfigError` without them) and any other set ignores.

    `masked` features always read 0: how an ablation hides a feature from the
    controller while the observation keeps its shape.

    `history`: the observation holds the feature vectors of the last `history`
    evaluations, newest first (`history` times the set's size; evaluations before the
    run's start read 0). A history of more than one lets a policy see how the run
    answered its last LR changes, which one evaluation cannot show.

    `sweep`: the `sweep` group's values (`sweep_feature_values`), shown in every
    observation of the run; without it they read 0. A set without the group ignores it.
    """

    def __init__(
        self,
        start_lr: float,
        initial_val_loss: float,
        steps: int,
        masked: tuple[str, ...] = (),
        history: int = 1,
        *,
        version: str = FEATURE_VERSION,
        context: RunContext | None = None,
        sweep: dict[str, float] | None = None,
    ) -> None:
        self.version = version
        self.names = feature_names(version)
        self.masked = check_masked_features(masked, version)
        self.history = check_history(history)
        self.start_lr = start_lr
        self.initial_val_loss = initial_val_loss
        self.steps = steps
        self.context: dict[str, float] = {}  # the context features, when the set reads them
        if reads_context(version):
            if not isinstance(context, RunContext):
                raise ConfigError(
                    f"feature set {version!r} reads the run's sizes: give a RunContext "
                    f"(parameters, fan-in, tokens per step), got {context!r}"
                )
            self.context = context_features(context, steps)
        self.sweep_values = sweep if sweep is not None else sweep_feature_values(None, 0.0)
        self.previous_val_loss = initial_val_loss
        self.best_val_loss = initial_val_loss
        self.previous_grad_norm = math.nan
        # The vectors of the last `history - 1` evaluations, newest first.
        self.past: list[list[float]] = [[0.0] * len(self.names) for _ in range(history - 1)]

    def initial(self) -> np.ndarray:
        """The observation at reset: the start LR, the run's sizes and the sweep; nothing
        trained yet."""
        nothing = dict.fromkeys(self.names, 0.0)
        return self._vector(nothing | {"log_lr": _log(self.start_lr / REFERENCE_LR)})

    def _vector(self, values: dict[str, float]) -> np.ndarray:
        """The observation of `values` (by name) with the context and sweep features,
        then the past evaluations."""
        values = values | self.context | self.sweep_values
        newest = finite_clipped(
            [0.0 if name in self.masked else values[name] for name in self.names]
        )
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
        values = {
            "progress": stats.step / self.steps,
            "log_lr": _log(controller_lr / REFERENCE_LR),
            "log_lr_rel_start": _log(controller_lr / self.start_lr),
            "log_val_rel_prev": log_ratio(val, self.previous_val_loss),
            "log_val_rel_init": log_ratio(val, self.initial_val_loss),
            "log_val_rel_best": log_ratio(val, self.best_val_loss),
            "train_slope_rel": (
                stats.train_loss_slope * stats.steps / mean if mean > 0 else math.nan
            ),
            "train_noise_rel": stats.train_loss_std / mean if mean > 0 else math.nan,
            "gen_gap": log_ratio(val, mean),
            "log_grad_norm": _log(stats.grad_norm),
            "log_grad_norm_change": log_ratio(stats.grad_norm, self.previous_grad_norm),
            "log_update_ratio": _log(stats.update_ratio),
            "nonfinite_fraction": stats.nonfinite_steps / stats.steps,
        }
        if math.isfinite(val):
            self.previous_val_loss = val
        if math.isfinite(stats.grad_norm):
            self.previous_grad_norm = stats.grad_norm
        return self._vector(values)
