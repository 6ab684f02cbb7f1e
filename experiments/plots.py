"""PNG plots of runs and comparisons, drawn with matplotlib's object API (no pyplot state).

Every plot is rendered to memory and written atomically, so a crash never leaves a
half-written image, and no display is needed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lrpilot.files import atomic_write_bytes


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


def plot_run(trace: pd.DataFrame, path: Path, title: str) -> None:
    """Loss (validation and train) and LR against step for one run."""
    figure = Figure(figsize=(7, 6), layout="constrained")
    loss_ax, lr_ax = figure.subplots(2, 1, sharex=True)
    loss_ax.plot(trace["step"], trace["val_loss"], marker=".", label="validation")
    loss_ax.plot(trace["step"], trace["train_loss"], alpha=0.7, label="train (interval mean)")
    loss_ax.set_ylabel("loss (nats/byte)")
    loss_ax.legend()
    loss_ax.set_title(title)
    lr_ax.step(trace["step"], trace["lr"], where="pre")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    _save(figure, path)


def plot_comparison(results: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Loss curves, LR curves (means over evaluation seeds) and, per method, the final
    score by the workload's metric (test loss, or test accuracy) in `final_loss.png`."""
    evaluation = results[results["phase"] == "eval"]
    curves = evaluation.groupby(["label", "step"], sort=False)[["val_loss", "lr"]].mean()
    paths = []
    for column, name, ylabel, log in (
        ("val_loss", "loss_curves.png", "validation loss (nats/byte)", False),
        ("lr", "lr_curves.png", "learning rate", True),
    ):
        figure = Figure(figsize=(8, 5), layout="constrained")
        ax = figure.subplots()
        for label in summary["label"]:
            curve = curves.loc[label]
            ax.plot(curve.index, curve[column], marker=".", label=label)
        if log:
            ax.set_yscale("log")
        else:  # the first evaluation (L_0) would squash the interesting part
            tail = curves[column][curves.index.get_level_values("step") > 0].to_numpy()
            tail = tail[np.isfinite(tail)]
            if len(tail):
                ax.set_ylim(tail.min() - 0.05, np.percentile(tail, 90) + 0.05)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel}, mean over evaluation seeds")
        ax.legend(fontsize="small")
        _save(figure, out_dir / name)
        paths.append(out_dir / name)

    figure = Figure(figsize=(8, 0.5 * len(summary) + 1.5), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(summary))
    by_loss = summary["metric"].iloc[0] == "loss"
    means = summary["mean"] if by_loss else summary["accuracy"]  # accuracy = 1 - mean error
    ax.errorbar(means, positions, xerr=summary["std"].fillna(0.0), fmt="o", capsize=4)
    ax.set_yticks(positions, summary["label"])
    ax.invert_yaxis()
    metric = "test loss (lower is better)" if by_loss else "test accuracy (higher is better)"
    ax.set_xlabel(f"{metric}, mean ± std over evaluation seeds")
    _save(figure, out_dir / "final_loss.png")
    paths.append(out_dir / "final_loss.png")
    return paths


def plot_performance_profile(ratios: pd.DataFrame, path: Path, score: str) -> None:
    """For each method (a column of `ratios`: its mean `score` over the best method's,
    one row per workload; lower is better), the share of workloads within a factor tau of
    the best."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    finite = ratios.to_numpy()[np.isfinite(ratios.to_numpy())]
    top = max(1.02, float(finite.max()) * 1.01) if finite.size else 1.1
    taus = np.linspace(1.0, top, 400)
    for method in ratios.columns:
        values = ratios[method].dropna().to_numpy()
        shares = [(values <= tau).mean() if len(values) else 0.0 for tau in taus]
        ax.step(taus, shares, where="post", label=method)
    ax.set_xlabel(f"tau: mean {score} / best method's on the workload")
    ax.set_ylabel("share of workloads within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"performance profile over {len(ratios)} workloads")
    ax.legend(fontsize=7)
    _save(figure, path)
