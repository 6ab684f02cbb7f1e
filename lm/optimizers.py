"""The tuning-free optimizers a user would pick to skip LR tuning, as competitors.

Each replaces a run's own optimizer on the same parameter groups (their weight decay
kept) and comes with the LR multiplier its authors recommend, run once per seed with
no tuning:

- `prodigy`: Prodigy (`prodigyopt`), which estimates the LR scale itself, at `lr=1`
  under a cosine decay of that multiplier (the authors' recommendation), its other
  settings at their defaults;
- `prodigy_warmup`: Prodigy as its authors advise for short runs: `safeguard_warmup=True`
  and a 5% linear warmup before the cosine decay;
- `schedulefree`: schedule-free AdamW (`schedulefree.AdamWScheduleFree`) at its
  documented default LR (0.0025) with a warmup over the first 5% of the budget (its
  README recommends a warmup) and a constant LR after it; `StepRun` calls its
  `train()` and `eval()` around every evaluation.

Both need the extra `pip install 'lrpilot[tuningfree]'`.
"""

from __future__ import annotations

from collections.abc import Callable

from lrpilot.errors import ConfigError
from lrpilot.lm.run import StepRun
from lrpilot.lm.schedules import lr_function, make_schedule

TUNING_FREE = ("prodigy", "prodigy_warmup", "schedulefree")
MISSING_EXTRA = "the tuning-free optimizers need the extra: pip install 'lrpilot[tuningfree]'"
SCHEDULEFREE_LR = 0.0025  # AdamWScheduleFree's default
SCHEDULEFREE_WARMUP = 0.05  # of the step budget
PRODIGY_WARMUP = 0.05  # of the step budget, for prodigy_warmup
NOMINAL_LRS = {"prodigy": 1.0, "prodigy_warmup": 1.0, "schedulefree": SCHEDULEFREE_LR}


def check_tuning_free(names: tuple[str, ...]) -> None:
    """A one-line `ConfigError` for an unknown name, or for a missing extra."""
    unknown = [name for name in names if name not in TUNING_FREE]
    if unknown:
        raise ConfigError(
            f"unknown tuning-free optimizer(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(TUNING_FREE)}"
        )
    for name in names:
        _module(name)


def _module(name: str):
    try:
        if name.startswith("prodigy"):
            import prodigyopt

            return prodigyopt
        import schedulefree

        return schedulefree
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None


def use_tuning_free(run: StepRun, name: str, total_steps: int) -> Callable[[int], float]:
    """Give `run` the tuning-free optimizer `name`; the per-step LR to train it at."""
    check_tuning_free((name,))
    if name.startswith("prodigy"):
        prodigy, warmed = _module(name).Prodigy, name == "prodigy_warmup"
        run.set_lr(NOMINAL_LRS[name])
        run.replace_optimizer(
            lambda groups: prodigy(groups, lr=NOMINAL_LRS[name], safeguard_warmup=warmed)
        )
        if warmed:
            schedule = make_schedule(
                "warmup_cosine", run.optimizer, total_steps, warmup=PRODIGY_WARMUP
            )
        else:
            schedule = make_schedule("cosine", run.optimizer, total_steps)
        return lr_function(schedule, run.optimizer)
    adamw = _module(name).AdamWScheduleFree
    warmup = max(1, round(SCHEDULEFREE_WARMUP * total_steps))
    run.set_lr(SCHEDULEFREE_LR)
    run.replace_optimizer(lambda groups: adamw(groups, lr=SCHEDULEFREE_LR, warmup_steps=warmup))
    run.optimizer.train()
    return lambda _step: SCHEDULEFREE_LR
