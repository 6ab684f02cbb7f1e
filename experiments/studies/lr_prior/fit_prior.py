"""A prior of a run's peak LR from its sizes: fitted on the training distribution.

Scaling-law fits give the optimal LR as a power law in the run's sizes (parameters,
tokens per step, budget; `../shared/REFERENCES.md`). This study measures, for each
workload of `training.toml` (none of `heldout`'s or `validation`'s workloads, corpora
or seeds), the best WSD peak of a factor-2 grid, then fits

    log(lr* / 1e-3) = c_0 + sum_k c_k x_k

over the context features `x_k` of `lrpilot.env.features` (`log_params`, `log_fan_in`,
`log_tokens_per_step`, `log_budget`, each the log of a size over a reference), by least
squares. The subset of features is chosen by a rule fixed before the fit: the lowest
leave-one-out RMSE of log lr*, fewer features on a tie within 0.01.

    lrpilot benchmark --suite experiments/studies/lr_prior/training.toml --policy none \
        --jobs 2 --out runs/lr-prior-training
    python experiments/studies/lr_prior/fit_prior.py --results runs/lr-prior-training

Each workload's lr* is its best peak by the score the suite tunes by (the test metric
on the tuning seed), moved by a parabola through the best and its two neighbours in
log LR (at most half a grid step; the grid is widened where the best lies on an edge).
`--check-suite` (a suite name, with `--check-results`, its benchmark folder) also prints
how far the prior lands from that suite's best tuned peaks (a design check on
`validation`, never a fit) and writes the prior of each of its workloads as
`SUITE-start-lrs.csv`, the start LRs `range_test_oracle/oracle.py --start-lrs` reads.

Writes `workloads.csv` (each workload's sizes, grid and lr*), `fits.csv` (every subset's
coefficients and errors), `prior.json` (the chosen fit as the `ActionRule` settings of a
prior: `prior_lr` and the powers) and `prior.md` into `--out` (default: this folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from lrpilot.env.actions import PRIOR_POWERS, ActionRule
from lrpilot.env.features import REFERENCE_LR, context_features
from lrpilot.experiments.report import best_tuned, markdown_table
from lrpilot.experiments.scoring import score
from lrpilot.experiments.suite import load_suite, with_inline_spec
from lrpilot.files import atomic_write_csv, atomic_write_json, atomic_write_text
from lrpilot.lm.run_context import RunContext

HERE = Path(__file__).resolve().parent
FEATURES = tuple(PRIOR_POWERS)  # the context features


def refined_optimum(lrs: np.ndarray, scores: np.ndarray) -> float:
    """The grid's best LR, moved to the vertex of the parabola through it and its two
    neighbours in log LR (by at most half a grid step; none at an edge or a non-convex
    triple)."""
    order = np.argsort(lrs)
    x, y = np.log(lrs[order]), scores[order]
    best = int(np.argmin(y))
    if best in (0, len(x) - 1):
        return float(np.exp(x[best]))
    (x0, x1, x2), (y0, y1, y2) = x[best - 1 : best + 2], y[best - 1 : best + 2]
    curvature = (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)
    if curvature <= 0:
        return float(np.exp(x1))
    half_step = min(x1 - x0, x2 - x1) / 2
    # the vertex of the parabola through the three points
    vertex = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / (
        (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    )
    return float(np.exp(np.clip(vertex, x1 - half_step, x1 + half_step)))


def workload_sizes(suite_name: str, results: Path) -> pd.DataFrame:
    """Each workload's sizes (`RunContext`, measured by building its run), budget and
    context features, indexed by name."""
    suite = load_suite(suite_name)
    rows = {}
    for entry in suite.entries:
        entry = with_inline_spec(entry, results / entry.name)
        task = entry.run.task(suite.protocol.tune_seeds[0], 1e-3)
        context = task.make_run("cpu").context()
        rows[entry.name] = dataclasses.asdict(context) | {"steps": task.steps}
        rows[entry.name] |= context_features(context, task.steps)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("workload")


def best_peaks(results: Path) -> pd.DataFrame:
    """Each workload's tuning grid (per peak LR: the best schedule and warmup's mean score
    over the tuning seeds) and lr*."""
    runs = pd.read_csv(results / "results.csv")
    summary = pd.read_csv(results / "summary.csv")
    metrics = dict(zip(summary["workload"], summary["metric"], strict=False))
    final = runs[runs["phase"] == "tune"].groupby(["workload", "run"]).tail(1)
    final = final.assign(
        score=[
            score(row.test_loss, row.test_accuracy, metrics[row.workload])
            for row in final.itertuples()
        ]
    )
    rows = []
    for workload, grid in final.groupby("workload"):
        # per peak, the best schedule and warmup's mean over the tuning seeds
        settings = grid.fillna({"warmup": 0}).groupby(["peak_or_start_lr", "method", "warmup"])
        means = settings["score"].mean().groupby(level=0).min()
        lrs, scores = means.index.to_numpy(float), means.to_numpy(float)
        rows.append({
            "workload": workload,
            "grid best": float(lrs[np.argmin(scores)]),
            "lr*": refined_optimum(lrs, scores),
            "grid": " ".join(f"{lr:.3g}:{s:.4f}" for lr, s in zip(lrs, scores, strict=True)),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("workload")


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients [c_0, c_1, ...] of y ~ c_0 + x @ c[1:]."""
    design = np.column_stack([np.ones(len(x)), x])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def predict(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coefficients[0] + x @ coefficients[1:]


def fit_subsets(table: pd.DataFrame) -> pd.DataFrame:
    """Every subset of FEATURES: its coefficients on all workloads, its in-sample and its
    leave-one-out RMSE of log lr*."""
    y = np.log(table["lr*"].to_numpy() / REFERENCE_LR)
    rows = []
    for size in range(len(FEATURES) + 1):
        for subset in itertools.combinations(FEATURES, size):
            x = table[list(subset)].to_numpy(float).reshape(len(table), size)
            coefficients = least_squares(x, y)
            held_out = []
            for i in range(len(y)):
                keep = np.arange(len(y)) != i
                held_out.append(predict(least_squares(x[keep], y[keep]), x[i : i + 1])[0])
            rows.append({
                "features": " + ".join(subset) or "(constant)",
                "size": size,
                "rmse": float(np.sqrt(np.mean((predict(coefficients, x) - y) ** 2))),
                "loo rmse": float(np.sqrt(np.mean((np.array(held_out) - y) ** 2))),
                "coefficients": " ".join(f"{c:.6g}" for c in coefficients),
            })  # fmt: skip
    return pd.DataFrame(rows)


def chosen(fits: pd.DataFrame) -> pd.Series:
    """The rule fixed before the fit: the lowest leave-one-out RMSE; among the subsets
    within 0.01 of it, the fewest features (then the lowest RMSE)."""
    near = fits[fits["loo rmse"] <= fits["loo rmse"].min() + 0.01]
    return near.sort_values(["size", "loo rmse"]).iloc[0]


def prior_of(choice: pd.Series) -> dict[str, float]:
    """The chosen fit as the `ActionRule` settings of its prior (`prior_lr`, the LR at
    the reference sizes, and the powers)."""
    names = [] if choice["size"] == 0 else choice["features"].split(" + ")
    intercept, *powers = (float(c) for c in choice["coefficients"].split())
    return {"prior_lr": REFERENCE_LR * float(np.exp(intercept))} | {
        PRIOR_POWERS[name]: power for name, power in zip(names, powers, strict=True)
    }


def prior_lrs(prior: dict[str, float], sizes: pd.DataFrame) -> pd.Series:
    """The prior's LR (as `ActionRule.start_lr` sets it) for each row of `sizes`."""
    rule = ActionRule(**prior)
    lrs = [
        rule.start_lr(
            REFERENCE_LR,
            RunContext(int(row.params), float(row.mean_fan_in), int(row.tokens_per_step)),
            int(row.steps),
        )
        for row in sizes.itertuples()
    ]
    return pd.Series(lrs, index=sizes.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default=str(HERE / "training.toml"), help="the fit's suite")
    parser.add_argument("--results", required=True, help="its benchmark folder")
    parser.add_argument("--check-suite", help="a suite to check the prior on (validation)")
    parser.add_argument("--check-results", help="that suite's benchmark folder")
    parser.add_argument("--out", default=str(HERE), help="folder for the tables")
    args = parser.parse_args()
    if bool(args.check_suite) != bool(args.check_results):
        parser.error("--check-suite and --check-results go together")
    results = Path(args.results)
    sizes, peaks = workload_sizes(args.suite, results), best_peaks(results)
    missing = sorted(set(sizes.index) - set(peaks.index))
    if missing:
        parser.error(
            f"{results} has no tuning runs of {', '.join(missing)}: finish the suite first"
        )
    table = sizes.join(peaks)
    fits = fit_subsets(table)
    choice = chosen(fits)
    prior = prior_of(choice)
    table["prior"] = prior_lrs(prior, table)
    table["prior / lr*"] = table["prior"] / table["lr*"]
    lines = [
        "# A prior of the peak LR from the run's sizes",
        "",
        f"{len(table)} training workloads; every subset of the context features, by "
        "leave-one-out RMSE of log lr*:",
        "",
        markdown_table(fits.sort_values("loo rmse").round(4)),
        "",
        f"Chosen (lowest leave-one-out RMSE, fewest features within 0.01): "
        f"**{choice['features']}**, coefficients (intercept first) {choice['coefficients']}; "
        f"lr = 1e-3 * exp(c_0 + sum c_k x_k). As `ActionRule` settings (`prior.json`):",
        "",
        "```toml",
        *(f"{name} = {value:.6g}" for name, value in prior.items()),
        "```",
        "",
        markdown_table(
            table[[*FEATURES, "grid best", "lr*", "prior", "prior / lr*"]].reset_index().round(4)
        ),
    ]
    if args.check_suite:
        check = pd.read_csv(Path(args.check_results) / "summary.csv")
        tuned = best_tuned(check)
        sizes = workload_sizes(args.check_suite, Path(args.check_results))
        rows = pd.DataFrame({"best tuned": tuned["label"], "peak": tuned["lr"]})
        rows["prior"] = prior_lrs(prior, sizes).reindex(rows.index)
        rows["prior / peak"] = rows["prior"] / rows["peak"]
        factors = np.exp(np.abs(np.log(rows["prior / peak"])))
        lines += [
            "",
            f"## The prior on `{args.check_suite}` (a check, not a fit)",
            "",
            markdown_table(rows.reset_index().round(5)),
            "",
            f"Median factor off {np.median(factors):.2f}, worst {factors.max():.2f}.",
        ]
        # the prior as each workload's start LR, for range_test_oracle.py --start-lrs
        starts = rows["prior"].rename("start_lr").rename_axis("workload").reset_index()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_csv(Path(args.out) / f"{Path(args.check_suite).stem}-start-lrs.csv", starts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "workloads.csv", table.reset_index(names="workload"))
    atomic_write_csv(out / "fits.csv", fits)
    atomic_write_json(out / "prior.json", prior)
    atomic_write_text(out / "prior.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
