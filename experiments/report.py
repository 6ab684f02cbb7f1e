"""The summary of a comparison: per method, the test loss and its paired difference to
the best tuned schedule, with wins, losses and the LM steps each method spent.

One implementation for `lrpilot compare`, the demo and the benchmarks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.files import atomic_write_csv, atomic_write_text

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom (standard
# table values); above 30 the Cornish-Fisher expansion below is within 1e-3 of them.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_critical_95(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        return math.nan
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_difference(values: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Mean of `values - reference` over paired seeds, with its 95% t-interval."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, math.nan, math.nan
    half = t_critical_95(len(diff) - 1) * float(diff.std(ddof=1)) / math.sqrt(len(diff))
    return mean, mean - half, mean + half


SUMMARY_COLUMNS = (
    "label",
    "kind",
    "lr",
    "warmup",
    "seeds",
    "mean",
    "std",
    "val_mean",
    "accuracy",
    "ratio_to_best",
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


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, over the evaluation seeds.

    `runs` has one row per run: label, kind, phase, seed, lr, warmup (a schedule's warmup
    fraction; NaN if none), score (the scored test loss), val_score (the scored final
    validation loss), accuracy (test; NaN for language models), steps and diverged.
    The reference is the tuned schedule with the lowest mean score; every method is
    compared with it seed by seed (a win is a strictly lower final loss on that seed).
    """
    evaluation = runs[runs["phase"] == "eval"]
    scores = evaluation.pivot_table(index="seed", columns="label", values="score")
    schedules = evaluation[evaluation["kind"] == "schedule"]["label"].unique()
    best = min(schedules, key=lambda label: (scores[label].mean(), label))
    rows = []
    for label, group in evaluation.groupby("label", sort=False):
        mine = scores[label].dropna()
        reference = scores[best].loc[mine.index]
        diff, low, high = paired_difference(mine.to_numpy(), reference.to_numpy())
        tuning = runs[(runs["phase"] == "tune") & (runs["label"] == label)]
        tuning_steps = int(tuning["steps"].sum())
        eval_steps = int(group["steps"].sum())
        rows.append(
            {
                "label": label,
                "kind": group["kind"].iloc[0],
                "lr": float(group["lr"].iloc[0]),
                "warmup": float(group["warmup"].iloc[0]),
                "seeds": len(mine),
                "mean": float(mine.mean()),
                "std": float(mine.std(ddof=1)) if len(mine) > 1 else math.nan,
                "val_mean": float(group["val_score"].mean()),
                "accuracy": float(group["accuracy"].mean()),
                "ratio_to_best": float(mine.mean() / reference.mean()),
                "diff_to_best": diff,
                "diff_ci_low": low,
                "diff_ci_high": high,
                "wins": int((mine < reference).sum()),
                "losses": int((mine > reference).sum()),
                "diverged": int(group["diverged"].sum()),
                "tuning_steps": tuning_steps,
                "eval_steps": eval_steps,
                "total_steps": tuning_steps + eval_steps,
                "note": "reference (best tuned schedule)" if label == best else "",
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `frame`'s cells as they print."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_markdown(summary: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The human-readable summary: one table, numbers rounded for reading."""

    def interval(row) -> str:
        if row["note"].startswith("reference"):
            return "—"
        if math.isnan(row["diff_ci_low"]):
            return f"{row['diff_to_best']:+.4f}"
        return f"{row['diff_to_best']:+.4f} [{row['diff_ci_low']:+.4f}, {row['diff_ci_high']:+.4f}]"

    table = pd.DataFrame(
        {
            "method": summary["label"],
            "peak / start LR": summary["lr"].map(lambda v: f"{v:.3g}"),
            "warmup": summary["warmup"].map(lambda v: "—" if math.isnan(v) else f"{v:.0%}"),
            "test loss (mean ± std)": [
                f"{m:.4f} ± {s:.4f}" if not math.isnan(s) else f"{m:.4f}"
                for m, s in zip(summary["mean"], summary["std"], strict=True)
            ],
            "val loss": summary["val_mean"].map(lambda v: f"{v:.4f}"),
            "test accuracy": summary["accuracy"].map(
                lambda v: "—" if math.isnan(v) else f"{v:.3f}"
            ),
            "÷ best tuned": summary["ratio_to_best"].map(lambda v: f"{v:.4f}"),
            "paired diff to best [95% CI]": summary.apply(interval, axis=1),
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
