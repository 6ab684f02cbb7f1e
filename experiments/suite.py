"""`lrpilot benchmark --suite NAME`: the comparison protocol over a suite of workloads.

A suite is a TOML file (`experiments/suites/NAME.toml`, or a path): the protocol's
settings (schedules, peak-LR grid, warmups, tuning and evaluation seeds, the policy's
start LRs, the tuning-free optimizers) and a list of `[[workloads]]`, each a workload
(`workload = SPEC`, or a `family` with its settings inline) with a `name`, optional
`corpus`, `batch_size`, `steps`, `eval_every` and `lr_range` of its own.

Each workload is one `lrpilot compare` into `OUT/<name>/` (its runs cached there, so
an interrupted suite resumes where it stopped); then the suite's report:

- `results.csv`: every workload's long results table, with a `workload` column;
- `summary.csv`: one row per workload x method (the compare summaries);
- `suite.csv` and `summary.md`: per method over the suite, the median and worst ratio
  of its mean test loss to the best tuned schedule's, the workloads it won (a lower
  mean test loss than the best tuned schedule), the policy's robustness (worst / best
  mean test loss over its start LRs), divergences and the LM steps spent;
- `performance_profile.png`: for each method, the share of workloads on which its
  mean test loss is within a factor tau of the best method's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lrpilot.errors import ConfigError
from lrpilot.experiments.compare import compare
from lrpilot.experiments.compare_config import CompareConfig
from lrpilot.experiments.plots import plot_performance_profile
from lrpilot.experiments.report import markdown_table
from lrpilot.files import atomic_write_csv, atomic_write_text, ensure_writable_dir
from lrpilot.lm.workloads import workload_from_dict
from lrpilot.ray_backend import RayBackend

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

UNTUNED_START = 1e-3  # the policy's start LR in the suite's main rows
# The protocol settings a suite may set; each is a `CompareConfig` field.
PROTOCOL_KEYS = (
    "schedules",
    "lr_grid",
    "lr_range",
    "warmups",
    "tune_seeds",
    "eval_seeds",
    "start_lrs",
    "tuning_free",
    "controllers",
)
ENTRY_KEYS = ("name", "workload", "corpus", "batch_size", "steps", "eval_every", "lr_range")


@dataclass(frozen=True)
class SuiteEntry:
    """One workload of a suite and the settings its comparison changes."""

    name: str
    workload: str  # a spec; an inline workload is written to OUT/<name>/workload.toml
    inline: dict[str, Any] | None = None  # the inline workload's settings, if any
    overrides: dict[str, Any] = field(default_factory=dict)  # CompareConfig fields


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    protocol: dict[str, Any]  # CompareConfig fields shared by every workload
    entries: tuple[SuiteEntry, ...]

    def config(self, entry: SuiteEntry, policy: str | None, jobs: int, device: str):
        """The comparison of one workload of the suite."""
        return CompareConfig(
            policy=policy,
            workload=entry.workload,
            jobs=jobs,
            device=device,
            **(self.protocol | entry.overrides),
        )


def suite_names() -> list[str]:
    folder = resources.files("lrpilot.experiments") / "suites"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_suite(spec: str) -> Suite:
    """A suite by name (`quick`, `heldout`, `gpu`) or from a TOML file; checked whole."""
    if spec.endswith(".toml"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"suite file not found: {spec!r}")
        text, base = path.read_text(), path.parent
    else:
        file = resources.files("lrpilot.experiments") / "suites" / f"{spec}.toml"
        if not file.is_file():
            raise ConfigError(f"unknown suite {spec!r}; choose from {', '.join(suite_names())}")
        text, base = file.read_text(), Path(str(file)).parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"suite {spec!r} is not valid TOML: {exc}") from None
    return suite_from_dict(data, spec, base)


def suite_from_dict(data: dict[str, Any], where: str, base: Path) -> Suite:
    settings = dict(data)
    name = str(settings.pop("name", where))
    description = str(settings.pop("description", ""))
    entries_data = settings.pop("workloads", [])
    unknown = sorted(set(settings) - set(PROTOCOL_KEYS))
    if unknown:
        raise ConfigError(f"suite {where!r}: unknown setting(s) {', '.join(unknown)}")
    if not isinstance(entries_data, list) or not entries_data:
        raise ConfigError(f"suite {where!r} is empty: give at least one [[workloads]]")
    entries = []
    for i, raw in enumerate(entries_data, 1):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise ConfigError(f"suite {where!r}: workload {i} needs a name")
        entry = dict(raw)
        entry_name = str(entry.pop("name"))
        overrides = {k: entry.pop(k) for k in ENTRY_KEYS if k in entry and k != "workload"}
        if "workload" in entry:
            spec = str(entry.pop("workload"))
            if entry:
                raise ConfigError(
                    f"suite {where!r}, workload {entry_name!r}: unknown key(s) "
                    f"{', '.join(sorted(entry))} (give `workload = SPEC` or a family inline)"
                )
            if spec.endswith(".toml") or ".py:" in spec:
                spec = str((base / spec).resolve()) if not Path(spec).is_absolute() else spec
            entries.append(SuiteEntry(entry_name, spec, None, overrides))
        else:
            entry.setdefault("name", entry_name)
            workload_from_dict(entry, f"suite {where!r}, workload {entry_name!r}")  # checked
            entries.append(SuiteEntry(entry_name, "", entry, overrides))
    names = [entry.name for entry in entries]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ConfigError(f"suite {where!r} names a workload twice: {', '.join(doubled)}")
    suite = Suite(name, description, settings, tuple(entries))
    # Every comparison's settings checked before any run (an inline workload's own
    # settings were checked above; its comparison's, on a built-in one).
    for entry in suite.entries:
        if entry.inline is not None:
            entry = SuiteEntry(entry.name, "tiny", None, {})
        suite.config(entry, None, 1, "cpu")
    return suite


def _inline_spec(entry: SuiteEntry, folder: Path) -> str:
    """An inline workload as a TOML file in its comparison folder (what compare reads)."""
    import tomli_w

    path = folder / "workload.toml"
    text = tomli_w.dumps(entry.inline)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return str(path)


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike,
    policy: str | None = "default",
    jobs: int = 1,
    device: str = "cpu",
    progress: bool = True,
    backend: RayBackend | None = None,
) -> pd.DataFrame:
    """Compare every method on every workload of `suite` into `out_dir`; returns the
    suite table (per method). Re-running continues from the cached runs."""
    out = ensure_writable_dir(out_dir)
    summaries, results = [], []
    for index, entry in enumerate(suite.entries, 1):
        folder = ensure_writable_dir(out / entry.name)
        if entry.inline is not None:
            entry = dataclasses.replace(entry, workload=_inline_spec(entry, folder))
        if progress:
            print(f"[{index}/{len(suite.entries)}] {entry.name}", flush=True)
        config = suite.config(entry, policy, jobs, device)
        summary = compare(config, folder, progress=progress, backend=backend)
        summaries.append(summary.assign(workload=entry.name))
        frame = pd.read_csv(folder / "results.csv")
        results.append(frame.assign(workload=entry.name))
    per_workload = pd.concat(summaries, ignore_index=True)
    table = suite_table(per_workload)
    atomic_write_csv(out / "results.csv", pd.concat(results, ignore_index=True))
    atomic_write_csv(out / "summary.csv", per_workload)
    atomic_write_csv(out / "suite.csv", table)
    atomic_write_text(out / "summary.md", suite_markdown(suite, per_workload, table))
    plot_performance_profile(profile_ratios(per_workload), out / "performance_profile.png")
    return table


def profile_ratios(per_workload: pd.DataFrame) -> pd.DataFrame:
    """workload x method: mean test loss over the best method's on that workload (each
    tuned schedule, the tuning-free optimizers and the policy from the untuned start)."""
    rows = per_workload[
        (per_workload["kind"] != "policy") | np.isclose(per_workload["lr"], UNTUNED_START)
    ]
    means = rows.pivot_table(index="workload", columns="label", values="mean")
    return means.div(means.min(axis=1), axis=0)


def suite_table(per_workload: pd.DataFrame) -> pd.DataFrame:
    """Per method over the suite: median and worst ratio to the best tuned schedule,
    workloads won, robustness of the policy, on how many workloads each policy row
    beats every tuning-free optimizer (a lower mean test loss than the best of them),
    divergences and LM steps."""
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
    policy = per_workload[per_workload["kind"] == "policy"]
    if not policy.empty:
        spread = policy.groupby("workload")["mean"].agg(lambda m: m.max() / m.min())
        table["policy robustness (worst / best start LR), worst workload"] = [
            float(spread.max()) if kind == "policy" else math.nan for kind in table["kind"]
        ]
    tuning_free = per_workload[per_workload["kind"] == "tuningfree"]
    if not policy.empty and not tuning_free.empty:
        best_free = tuning_free.groupby("workload")["mean"].min()
        beaten = {}
        for label, group in policy.groupby("label", sort=False):
            means = group.set_index("workload")["mean"]
            beaten[label] = int((means < best_free.reindex(means.index)).sum())
        column = [beaten.get(label) for label in table["method"]]  # None: not a policy
        table["workloads it beats every tuning-free optimizer on"] = pd.Series(column, dtype=object)
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
    columns = {
        "workload": "workload",
        "label": "method",
        "mean": "test loss (mean)",
        "ratio_to_best": "÷ best tuned",
        "diff_ci_low": "diff CI low",
        "diff_ci_high": "diff CI high",
        "steps_to_target": "steps to target",
        "wins": "wins",
        "losses": "losses",
        "diverged": "diverged",
        "total_steps": "LM steps",
    }
    frame = per_workload[list(columns)].rename(columns=columns)
    lines += [markdown_table(frame.map(_fmt)), ""]
    lines += [
        "- Test loss: on each workload's test split, which no controller observes; mean over "
        f"the evaluation seeds {', '.join(map(str, suite.protocol.get('eval_seeds', [])))}.",
        "- ÷ best tuned: the method's mean test loss over the best tuned schedule's; its "
        "paired difference has a 95% bootstrap interval over seeds.",
        "- Steps to target: median over seeds of the first step at which the validation loss "
        "reaches the best tuned schedule's mean final validation loss (never: not reached).",
        "- A workload won: a mean test loss below the best tuned schedule's.",
    ]
    return "\n".join(lines) + "\n"
