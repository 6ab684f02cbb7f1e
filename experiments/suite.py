"""`lrpilot benchmark --suite NAME`: the comparison protocol over a suite of workloads.

A suite is a TOML file (`experiments/suites/NAME.toml`, or a path): the protocol's
settings (schedules, peak-LR grid, warmups, tuning and evaluation seeds, the policy's
start LRs, the tuning-free optimizers) and a list of `[[workloads]]`, each a workload
(`workload = SPEC`, or a `family` with its settings inline) with a `name`, optional
`corpus`, `batch_size`, `steps`, `eval_every`, `lr_range` and `metric` of its own.

Each workload is one `lrpilot compare` into `OUT/<name>/` (its runs cached there, so
an interrupted suite resumes where it stopped); then the suite's report:

- `results.csv`: every workload's long results table, with a `workload` column;
- `summary.csv`: one row per workload x method (the compare summaries);
- `suite.csv` and `summary.md`: per method over the suite, the median and worst ratio
  of its mean score to the best tuned schedule's, the workloads it won (a lower mean
  score than the best tuned schedule), divergences and the LM steps spent; for the
  policy and each controller, its robustness (worst / best mean score over its start
  LRs) and the workloads on which it beats every tuning-free optimizer, and each one;
- `performance_profile.png`: for each method, the share of workloads on which its
  mean score is within a factor tau of the best method's.

A workload's score is its metric (`lrpilot.experiments.scoring`): the test loss, or
the test error 1 - accuracy for one ranked by accuracy, so that lower is better and a
ratio <= 1 ties or beats the reference on every workload.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lrpilot.config import checked, from_dict, low_high, packaged_names, read_toml
from lrpilot.errors import ConfigError
from lrpilot.experiments.compare import compare, prepare
from lrpilot.experiments.compare_config import CompareConfig, Protocol
from lrpilot.experiments.folders import claim_folder
from lrpilot.experiments.plots import plot_performance_profile
from lrpilot.experiments.report import markdown_table
from lrpilot.experiments.scoring import RANKED_BY, score_name, score_ratio
from lrpilot.files import atomic_write_csv, atomic_write_text, ensure_writable_dir
from lrpilot.lm.workloads import spec_in_folder, workload_from_dict
from lrpilot.ray_backend import RayBackend
from lrpilot.settings import RunSettings

UNTUNED_START = 1e-3  # the policy's start LR in the suite's main rows
RUN_KEYS = ("workload", "corpus", "batch_size", "steps", "eval_every")  # RunSettings fields
FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SuiteEntry:
    """One workload of a suite: its folder name, its run, and its own peak-LR range."""

    name: str
    run: RunSettings  # an inline workload's spec is its TOML file, written at run time
    inline: dict[str, Any] | None = None  # the inline workload's settings, if any
    lr_range: tuple[float, float] | None = None  # replaces the protocol's
    metric: str | None = None  # replaces the workload's own (an inline one has its own)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(
                f"a suite workload's name is its folder: letters, digits, -, _ and . "
                f"(not . or ..), got {name!r}"
            )


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    protocol: Protocol  # shared by every workload
    entries: tuple[SuiteEntry, ...]

    def with_controllers(self, controllers: tuple[str, ...]) -> Suite:
        """The suite with these baseline controllers in place of its own (checked)."""
        protocol = dataclasses.replace(self.protocol, controllers=controllers)
        return dataclasses.replace(self, protocol=protocol)

    def config(self, entry: SuiteEntry, policy: str | None, jobs: int, device: str):
        """The comparison of one workload of the suite."""
        protocol = self.protocol
        if entry.lr_range is not None:
            protocol = dataclasses.replace(protocol, lr_range=entry.lr_range)
        run = dataclasses.replace(entry.run, device=device)
        return CompareConfig(
            run=run, protocol=protocol, policy=policy, jobs=jobs, metric=entry.metric
        )


def suite_names() -> list[str]:
    return packaged_names("suites")


def load_suite(spec: str) -> Suite:
    """A suite by name (`quick`, `heldout`, ...) or from a TOML file; checked whole."""
    data, base = read_toml(spec, "suite", "suites")
    return suite_from_dict(data, spec, base)


def suite_from_dict(data: dict[str, Any], where: str, base: Path) -> Suite:
    settings = dict(data)
    name, description = settings.pop("name", where), settings.pop("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise ConfigError(f"suite {where!r}: name and description must be strings")
    entries_data = settings.pop("workloads", [])
    protocol = from_dict(Protocol, settings, f"suite {where!r}")
    if not isinstance(entries_data, list):
        raise ConfigError(
            f"suite {where!r}: workloads must be a list of [[workloads]] tables, "
            f"got {entries_data!r}"
        )
    if not entries_data:
        raise ConfigError(f"suite {where!r} is empty: give at least one [[workloads]]")
    entries = [_entry(raw, i, where, base) for i, raw in enumerate(entries_data, 1)]
    folded = [entry.name.casefold() for entry in entries]
    doubled = sorted({e.name for e in entries if folded.count(e.name.casefold()) > 1})
    if doubled:
        raise ConfigError(f"suite {where!r} names a workload folder twice: {', '.join(doubled)}")
    suite = Suite(name, description, protocol, tuple(entries))
    for entry in suite.entries:  # every comparison's settings checked before any run
        if entry.inline is not None:  # (its workload was checked when it was read)
            entry = dataclasses.replace(entry, run=dataclasses.replace(entry.run, workload="tiny"))
        try:
            suite.config(entry, None, 1, "cpu")
        except ConfigError as exc:
            raise ConfigError(f"suite {where!r}, workload {entry.name!r}: {exc}") from None
    return suite


def _entry(raw: Any, index: int, where: str, base: Path) -> SuiteEntry:
    """One `[[workloads]]` table: `workload = SPEC` (with a `metric` of its own, if
    given), or a family and its settings inline, with the run settings and `lr_range` of
    its own."""
    if not isinstance(raw, dict):
        raise ConfigError(f"suite {where!r}: workload {index} must be a table, got {raw!r}")
    if "name" not in raw:
        raise ConfigError(f"suite {where!r}: workload {index} needs a name")
    entry = dict(raw)
    name = entry.pop("name")
    at = f"suite {where!r}, workload {name!r}"
    lr_range = entry.pop("lr_range", None)
    if lr_range is not None:
        try:
            lr_range = checked(tuple[float, float], lr_range, "lr_range", low_high)
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
    run = {key: entry.pop(key) for key in RUN_KEYS if key in entry}
    inline = metric = None
    if "workload" in run:
        metric = entry.pop("metric", None)
        if entry:
            raise ConfigError(
                f"{at}: unknown key(s) {', '.join(sorted(entry))} (give `workload = SPEC` "
                f"or a family inline)"
            )
        run["workload"] = spec_in_folder(run["workload"], base)
    else:
        inline = entry | {"name": entry.get("name", name)}
        workload_from_dict(inline, at)  # checked now
    return SuiteEntry(name, from_dict(RunSettings, run, at), inline, lr_range, metric)


def with_inline_spec(entry: SuiteEntry, folder: Path) -> SuiteEntry:
    """An inline workload as a TOML file in `folder` (what compare reads), and the entry
    naming it; an entry with a spec of its own as it is."""
    if entry.inline is None:
        return entry
    import tomli_w

    path = folder / "workload.toml"
    text = tomli_w.dumps(entry.inline)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return dataclasses.replace(entry, run=dataclasses.replace(entry.run, workload=str(path)))


def _records(suite: Suite, policy: str | None, device: str, backend) -> dict[str, dict]:
    """Every workload's comparison checked (policy, data, device) before anything is
    written, and what its folder will record."""
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        for entry in suite.entries:
            folder = Path(scratch) / entry.name
            folder.mkdir()
            config = suite.config(with_inline_spec(entry, folder), policy, 1, device)
            try:
                records[entry.name] = prepare(config, backend).record
            except ConfigError as exc:
                raise ConfigError(f"workload {entry.name!r}: {exc}") from None
    return records


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike,
    policy: str | None = "default",
    jobs: int = 1,
    device: str = "auto",
    progress: bool = True,
    backend: RayBackend | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """Compare every method on every workload of `suite` into `out_dir`; returns the
    suite table (per method). Re-running continues from the cached runs; a folder that
    holds another suite is refused unless `force`."""
    record = {"suite": suite.name, "workloads": _records(suite, policy, device, backend)}
    out = ensure_writable_dir(out_dir)
    claim_folder(out, "benchmark", record, force)
    summaries, results = [], []
    for index, entry in enumerate(suite.entries, 1):
        folder = ensure_writable_dir(out / entry.name)
        entry = with_inline_spec(entry, folder)
        if progress:
            print(f"[{index}/{len(suite.entries)}] {entry.name}", flush=True)
        config = suite.config(entry, policy, jobs, device)
        summary = compare(config, folder, progress=progress, backend=backend, force=force)
        summaries.append(summary.assign(workload=entry.name))
        frame = pd.read_csv(folder / "results.csv")
        results.append(frame.assign(workload=entry.name))
    per_workload = pd.concat(summaries, ignore_index=True)
    table = suite_table(per_workload)
    atomic_write_csv(out / "results.csv", pd.concat(results, ignore_index=True))
    atomic_write_csv(out / "summary.csv", per_workload)
    atomic_write_csv(out / "suite.csv", table)
    atomic_write_text(out / "summary.md", suite_markdown(suite, per_workload, table))
    score = score_name(per_workload.groupby("workload")["metric"].first())
    plot_performance_profile(profile_ratios(per_workload), out / "performance_profile.png", score)
    return table


def profile_ratios(per_workload: pd.DataFrame) -> pd.DataFrame:
    """workload x method: mean score over the best method's on that workload (each
    tuned schedule, the tuning-free optimizers and the policy from the untuned start)."""
    rows = per_workload[
        (per_workload["kind"] != "policy") | np.isclose(per_workload["lr"], UNTUNED_START)
    ]
    means = rows.pivot_table(index="workload", columns="label", values="mean")
    return means.apply(lambda row: row.map(lambda m: score_ratio(m, row.min())), axis=1)


UNTUNED_KINDS = ("policy", "controller")  # run from each start LR, untuned


def suite_table(per_workload: pd.DataFrame) -> pd.DataFrame:
    """Per method over the suite (its mean scores, lower is better): median and worst
    ratio to the best tuned schedule, workloads won, divergences and LM steps; and for
    each row of the policy and of each controller, its robustness (the worst over
    workloads of worst / best mean score over its start LRs) and on how many workloads
    it beats every tuning-free optimizer (a lower mean score than the best of them), and
    each one."""
    rows = []
    for label, group in per_workload.groupby("label", sort=False):
        ratios = group["ratio_to_best"]
        row = {
            "method": label,
            "kind": group["kind"].iloc[0],
            "workloads": len(group),
            "median ratio to best tuned": float(ratios.median()),
            "worst ratio to best tuned": float(ratios.max()),
            "workloads won": int((ratios < 1).sum()),
            "diverged runs": int(group["diverged"].sum()),
            "LM steps (tuning + eval)": int(group["total_steps"].sum()),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    untuned = per_workload[per_workload["kind"].isin(UNTUNED_KINDS)]
    if untuned.empty:
        return table
    robustness = {}
    for _, group in untuned.groupby("method", sort=False):
        spread = group.groupby("workload")["mean"].agg(lambda m: score_ratio(m.max(), m.min()))
        robustness |= dict.fromkeys(group["label"], float(spread.max()))
    column = "robustness (worst / best start LR), worst workload"
    table[column] = [robustness.get(label, math.nan) for label in table["method"]]
    tuning_free = per_workload[per_workload["kind"] == "tuningfree"]
    if tuning_free.empty:
        return table
    means = untuned.pivot_table(index="workload", columns="label", values="mean")
    free = tuning_free.pivot_table(index="workload", columns="label", values="mean")
    free = free.reindex(means.index)

    def wins(reference: pd.Series) -> pd.Series:
        """Per row: the workloads it has a lower mean score than `reference` on (None:
        not a row of the policy or a controller)."""
        counts = {label: int((means[label] < reference).sum()) for label in means.columns}
        return pd.Series([counts.get(label) for label in table["method"]], dtype=object)

    table["workloads it beats every tuning-free optimizer on"] = wins(free.min(axis=1))
    for name in tuning_free["label"].unique():
        table[f"workloads it beats {name} on"] = wins(free[name])
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isinf(value):
            return "never"
        return "—" if math.isnan(value) else f"{value:.4g}" if value >= 10 else f"{value:.4f}"
    return str(value)


def suite_markdown(suite: Suite, per_workload: pd.DataFrame, table: pd.DataFrame) -> str:
    lines = [f"# Suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["## Over the suite", "", markdown_table(table.map(_fmt)), ""]
    lines += ["## Per workload", ""]
    ranked_by = per_workload["metric"].map(RANKED_BY)
    columns = {
        "workload": "workload",
        "label": "method",
        "ranked by": "ranked by",
        "test_loss": "test loss (mean)",
        "accuracy": "test accuracy (mean)",
        "ratio_to_best": "÷ best tuned",
        "diff_ci_low": "diff CI low",
        "diff_ci_high": "diff CI high",
        "steps_to_target": "steps to target",
        "wins": "wins",
        "losses": "losses",
        "diverged": "diverged",
        "total_steps": "LM steps",
    }
    frame = per_workload.assign(**{"ranked by": ranked_by})[list(columns)].rename(columns=columns)
    lines += [markdown_table(frame.map(_fmt)), ""]
    lines += [
        "- Test loss: on each workload's test split, which no controller observes; mean over "
        f"the evaluation seeds {', '.join(map(str, suite.protocol.eval_seeds))}.",
        "- ÷ best tuned: the method's mean test loss over the best tuned schedule's; its "
        "paired difference has a 95% bootstrap interval over seeds.",
        "- Steps to target: median over seeds of the first step at which the validation loss "
        "reaches the best tuned schedule's mean final validation loss (never: not reached).",
        "- A workload won: a mean test loss below the best tuned schedule's.",
    ]
    if (per_workload["metric"] == "accuracy").any():
        lines.append(
            "- Ranked by test accuracy: the score is the test error, 1 - accuracy, so that "
            "lower is better as for the loss; that workload's ratios, differences, wins, "
            "robustness and profile are of the test error, (1 - accuracy) / (1 - the best "
            "tuned schedule's accuracy), and it has no steps to target (—: the runs observe "
            "no validation accuracy)."
        )
    return "\n".join(lines) + "\n"
