"""The summary of a comparison: per method, its score (by the workload's metric: test
loss, or test accuracy ranked as the test error) and its paired difference to the best
tuned schedule, with both test metrics, wins, losses and the LM steps each method spent.

One implementation for `lrpilot compare`, the demo and the benchmarks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from lrpilot.experiments.scoring import score_ratio
from lrpilot.files import atomic_write_csv, atomic_write_text

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # the intervals are reproducible


def paired_difference(values: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Mean of `values - reference` over paired seeds, with its 95% bootstrap interval
    (`scipy.stats.bootstrap`, BCa; the percentile interval where BCa is undefined)."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    mean = float(diff.mean())
    if len(diff) < 2 or not np.isfinite(diff).all():
        return mean, math.nan, math.nan
    if np.ptp(diff) == 0:  # every seed the same difference: nothing to resample
        return mean, mean, mean
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate cases: handled below
            result = scipy.stats.bootstrap(
                (diff,),
                np.mean,
                confidence_level=0.95,
                n_resamples=BOOTSTRAP_RESAMPLES,
                method=method,
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return mean, float(low), float(high)
    return mean, math.nan, math.nan


def steps_to_target(steps: list[int], val_losses: list[float], target: float) -> float:
    """The first step at which a run's validation loss is at or below `target`; inf if
    it never gets there (time to target, as AlgoPerf scores, on the validation curve)."""
    for step, loss in zip(steps, val_losses, strict=True):
        if loss <= target:
            return float(step)
    return math.inf


SUMMARY_COLUMNS = (
    "label",
    "kind",
    "method",
    "lr",
    "warmup",
    "seeds",
    "metric",
    "mean",
    "std",
    "test_loss",
    "val_mean",
    "accuracy",
    "ratio_to_best",
    "steps_to_target",
    "reached_target",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
    "wins",
    "losses",
    "diverged",
    "tuning_steps",
    "eval_steps",
    "total_steps",
    "note",
)


def summarize(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method, over the evaluation seeds, ranked by `metric` ("loss" or "accuracy").

    `runs` has one row per run: label, kind, method, phase, seed, lr, warmup (a
    schedule's warmup fraction; NaN if none), score (lower is better: the scored test
    loss, or the test error 1 - accuracy, `lrpilot.experiments.scoring`), test_loss and
    accuracy (scored; accuracy NaN for language models), val_score (the scored final
    validation loss), steps and diverged. `mean` and `std` are of the score, and so are
    the ratio, the paired difference and the wins.
    The reference is the tuned schedule with the lowest mean score; every method is
    compared with it seed by seed (a win is a strictly lower score on that seed).
    Ranked by loss, with the columns `curve_steps` and `curve_val` (each run's
    validation curve), each method's time to target is the median over seeds of the
    step at which its validation loss first reaches the reference's mean final
    validation loss (inf when fewer than half its seeds reach it), and `reached_target`
    counts those seeds; ranked by accuracy there is none (NaN): the runs observe no
    validation accuracy.
    """
    evaluation = runs[runs["phase"] == "eval"]
    scores = evaluation.pivot_table(index="seed", columns="label", values="score")
    schedules = evaluation[evaluation["kind"] == "schedule"]["label"].unique()
    best = min(schedules, key=lambda label: (scores[label].mean(), label))
    target = float(evaluation[evaluation["label"] == best]["val_score"].mean())
    rows = []
    for label, group in evaluation.groupby("label", sort=False):
        mine = scores[label].dropna()
        reference = scores[best].loc[mine.index]
        diff, low, high = paired_difference(mine.to_numpy(), reference.to_numpy())
        tuning = runs[(runs["phase"] == "tune") & (runs["label"] == label)]
        tuning_steps = int(tuning["steps"].sum())
        eval_steps = int(group["steps"].sum())
        if "curve_steps" in group and metric == "loss":
            reach = sorted(
                steps_to_target(steps, losses, target)
                for steps, losses in zip(group["curve_steps"], group["curve_val"], strict=True)
            )
            to_target = float(np.median(reach)) if reach else math.nan
            reached = sum(math.isfinite(r) for r in reach)
        else:
            to_target, reached = math.nan, 0
        rows.append(
            {
                "label": label,
                "kind": group["kind"].iloc[0],
                "method": group["method"].iloc[0],
                "lr": float(group["lr"].iloc[0]),
                "warmup": float(group["warmup"].iloc[0]),
                "seeds": len(mine),
                "metric": metric,
                "mean": float(mine.mean()),
                "std": float(mine.std(ddof=1)) if len(mine) > 1 else math.nan,
                "test_loss": float(group["test_loss"].mean()),
                "val_mean": float(group["val_score"].mean()),
                "accuracy": float(group["accuracy"].mean()),
                "ratio_to_best": score_ratio(float(mine.mean()), float(reference.mean())),
                "steps_to_target": to_target,
                "reached_target": reached,
                "diff_to_best": diff,
                "diff_ci_low": low,
                "diff_ci_high": high,
                "wins": int((mine < reference).sum()),
                "losses": int((mine > reference).sum()),
                "diverged": int(group["diverged"].sum()),
                "tuning_steps": tuning_steps,
                "eval_steps": eval_steps,
                "total_steps": tuning_steps + eval_steps,
                "note": REFERENCE_NOTE if label == best else "",
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


REFERENCE_NOTE = "reference (best tuned schedule)"


def best_tuned(summary: pd.DataFrame) -> pd.DataFrame:
    """The best tuned schedule's row of each workload of a suite's `summary.csv` (the
    reference every ratio is to), indexed by workload: its `mean` score, `lr`, ...."""
    reference = summary[summary["note"].fillna("") == REFERENCE_NOTE]
    return reference.set_index("workload")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `frame`'s cells as they print."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_markdown(summary: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The human-readable summary: one table, numbers rounded for reading; its first
    score column is the metric that ranks."""

    def interval(row) -> str:
        if row["note"].startswith("reference"):
            return "—"
        if math.isnan(row["diff_ci_low"]):
            return f"{row['diff_to_best']:+.4f}"
        return f"{row['diff_to_best']:+.4f} [{row['diff_ci_low']:+.4f}, {row['diff_ci_high']:+.4f}]"

    def mean_std(means: pd.Series, digits: int) -> list[str]:
        return [
            f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"
            for m, s in zip(means, summary["std"], strict=True)
        ]

    losses = summary["test_loss"].map(lambda v: f"{v:.4f}")
    val_losses = summary["val_mean"].map(lambda v: f"{v:.4f}")
    ratios = summary["ratio_to_best"].map(lambda v: f"{v:.4f}")
    if summary["metric"].iloc[0] == "loss":
        scores = {
            "test loss (mean ± std)": mean_std(summary["mean"], 4),
            "val loss": val_losses,
            "test accuracy": summary["accuracy"].map(
                lambda v: "—" if math.isnan(v) else f"{v:.3f}"
            ),
            "÷ best tuned": ratios,
            "paired diff to best [95% CI]": summary.apply(interval, axis=1),
        }
    else:  # ranked by accuracy: ratio and differences of the test error
        scores = {
            "test accuracy (mean ± std)": mean_std(summary["accuracy"], 3),
            "test loss": losses,
            "val loss": val_losses,
            "÷ best tuned (test error)": ratios,
            "paired diff in test error to best [95% CI]": summary.apply(interval, axis=1),
        }
    table = pd.DataFrame(
        {
            "method": summary["label"],
            "peak / start LR": summary["lr"].map(lambda v: f"{v:.3g}"),
            "warmup": summary["warmup"].map(lambda v: "—" if math.isnan(v) else f"{v:.0%}"),
            **scores,
            "steps to target": [
                "never" if math.isinf(v) else ("—" if math.isnan(v) else f"{v:.0f}")
                for v in summary["steps_to_target"]
            ],
            "wins / losses": [
                f"{w} / {lo}" for w, lo in zip(summary["wins"], summary["losses"], strict=True)
            ],
            "diverged": summary["diverged"],
            "LM steps (tuning + eval)": [
                f"{t} + {e}"
                for t, e in zip(summary["tuning_steps"], summary["eval_steps"], strict=True)
            ],
        }
    )
    lines = [f"# {title}", "", markdown_table(table), ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_result_table(
    folder: str | Path, stem: str, table: pd.DataFrame, title: str, command: str, footer: str = ""
) -> str:
    """Write a benchmark's table as `stem.csv` and `stem.md` (title, the command that
    reproduces it, the table, `footer`), each atomically; returns the Markdown."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(folder / f"{stem}.csv", table)
    text = f"# {title}\n\n`{command}`\n\n{markdown_table(table)}\n"
    if footer:
        text += f"\n{footer}\n"
    atomic_write_text(folder / f"{stem}.md", text)
    return text
