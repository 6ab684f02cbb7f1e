"""The metric a workload's users read: compare tunes and ranks by it, tables print both
test metrics, the run cache ignores it, and a bad one is a one-line error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lrpilot.experiments.compare as compare_module
from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.experiments.compare import CompareConfig, compare
from lrpilot.experiments.compare_config import Protocol
from lrpilot.experiments.replay import REPLAY_COLUMNS
from lrpilot.experiments.run_cache import RunSpec
from lrpilot.experiments.suite import load_suite, suite_markdown, suite_table
from lrpilot.lm.workloads import load_workload, with_overrides
from lrpilot.settings import RunSettings

GRID = (1e-3, 1e-2)  # 3 peaks: 1e-3, 3.16e-3, 1e-2
MIDDLE = math.sqrt(GRID[0] * GRID[1])
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def scripted_scores(lr: float) -> tuple[float, float]:
    """(test loss, test accuracy) of an overfitting classifier: the test loss is lowest
    at the lowest peak LR, the accuracy highest in the middle of the grid."""
    distance = abs(math.log10(lr / MIDDLE))
    return 0.5 + 100 * lr, 0.9 - 0.4 * distance


class ScriptedCache:
    """A run cache whose traces are made up from `scripted_scores` (nothing trains)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def run(self, specs: list[RunSpec]) -> None:
        pass

    def close(self) -> None:
        pass

    def trace(self, spec: RunSpec) -> pd.DataFrame:
        test_loss, accuracy = scripted_scores(spec.lr)
        trace = pd.DataFrame(np.nan, index=range(2), columns=list(REPLAY_COLUMNS))
        trace["interval"], trace["step"] = [0, 1], [0, spec.steps]
        trace["lr"], trace["val_loss"], trace["nonfinite"] = spec.lr, [2.0, 1.0], False
        trace.loc[1, ["test_loss", "test_accuracy"]] = test_loss, accuracy
        return trace


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(compare_module, "RunCache", ScriptedCache)


def classify_compare(metric: str | None = None) -> CompareConfig:
    protocol = Protocol(
        schedules=("constant",),
        controllers=("rangestop",),
        lr_grid=3,
        lr_range=GRID,
        warmups=(),
        eval_seeds=(1, 2),
        start_lrs=(1e-3, GRID[1]),
    )
    run = RunSettings(workload="classify", steps=20, eval_every=10, device="cpu")
    return CompareConfig(run=run, protocol=protocol, metric=metric)


def test_a_classifier_is_tuned_and_ranked_by_accuracy_where_the_test_loss_disagrees(
    scripted, tmp_path
):
    summary = compare(classify_compare(), tmp_path, progress=False).set_index("label")
    assert (summary["metric"] == "accuracy").all()
    assert summary.loc["constant", "lr"] == pytest.approx(MIDDLE)  # not the lowest loss's
    assert summary.loc["constant", "accuracy"] == pytest.approx(0.9)
    assert summary.loc["constant", "test_loss"] == pytest.approx(scripted_scores(MIDDLE)[0])
    # ranked by the error rate: (1 - 0.9 + 0.4 x 0.5) / (1 - 0.9) at a half decade away
    assert summary.loc["rangestop (start 0.001)", "ratio_to_best"] == pytest.approx(3.0)
    assert summary.loc["rangestop (start 0.001)", "losses"] == 2
    assert math.isnan(summary.loc["constant", "steps_to_target"])  # no validation accuracy
    markdown = (tmp_path / "summary.md").read_text()
    header = markdown.splitlines()[2]
    assert "| test accuracy (mean ± std) | test loss | val loss | ÷ best tuned (test error) |" in (
        header
    )
    assert "| 0.900 ± 0.000 | 0.8162 |" in markdown
    assert "Ranked by the test error, 1 - accuracy" in markdown
    assert json.loads((tmp_path / "config.json").read_text())["metric"] == "accuracy"


def test_a_classifier_ranked_by_loss_picks_the_lowest_test_loss(scripted, tmp_path):
    summary = compare(classify_compare("loss"), tmp_path, progress=False).set_index("label")
    assert (summary["metric"] == "loss").all()
    assert summary.loc["constant", "lr"] < GRID[0]  # the low edge, widened
    header = (tmp_path / "summary.md").read_text().splitlines()[2]
    assert "| test loss (mean ± std) | val loss | test accuracy | ÷ best tuned |" in header


def test_a_changed_metric_is_another_experiment_with_the_same_runs(scripted, tmp_path):
    compare(classify_compare(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"differs in metric\)"):
        compare(classify_compare("loss"), tmp_path, progress=False)
    accuracy = compare_module.prepare(classify_compare()).common
    assert compare_module.prepare(classify_compare("loss")).common == accuracy  # run keys


def test_the_metric_is_no_setting_of_the_runs():
    classify = load_workload("classify")
    assert classify.metric == "accuracy" and load_workload("tiny").metric == "loss"
    by_loss = with_overrides(classify, metric="loss")
    assert by_loss.metric == "loss" and by_loss.to_dict() == classify.to_dict()
    assert "metric" not in classify.to_dict()


def test_the_suite_tables_print_both_metrics_and_which_ranks():
    rows = []
    for workload, metric in (("lm", "loss"), ("cls", "accuracy")):
        for label, kind, mean, accuracy in (
            ("wsd", "schedule", 0.3, 0.7),
            ("policy (start 0.001)", "policy", 0.15, 0.85),
        ):
            rows.append(
                {"workload": workload, "label": label, "kind": kind, "method": label[:6]}
                | {"metric": metric, "mean": mean, "ratio_to_best": mean / 0.3}
                | {"test_loss": 2.0 + mean, "accuracy": math.nan if metric == "loss" else accuracy}
                | {"diff_ci_low": 0.0, "diff_ci_high": 0.0, "steps_to_target": math.nan}
                | {"wins": 0, "losses": 0, "diverged": 0, "total_steps": 10}
            )
    per_workload = pd.DataFrame(rows)
    markdown = suite_markdown(load_suite("quick"), per_workload, suite_table(per_workload))
    assert (
        "| workload | method | ranked by | test loss (mean) | test accuracy (mean) | ÷ best tuned |"
        in markdown
    )
    assert "| cls | policy (start 0.001) | test accuracy | 2.1500 | 0.8500 | 0.5000 |" in markdown
    assert "| lm | policy (start 0.001) | test loss | 2.1500 | — | 0.5000 |" in markdown
    assert "Ranked by test accuracy: the score is the test error, 1 - accuracy" in markdown


def test_the_suite_table_scores_every_controller_and_the_policy_against_each_optimizer():
    rows = []
    labels = ("policy (start 0.001)", "policy (start 0.01)", "rangestop (start 0.001)")
    labels += ("rangestop (start 0.01)", "prodigy", "schedulefree")
    means = {"a": (1.0, 1.2, 1.0, 1.5, 1.1, 1.3), "b": (1.0, 1.0, 1.2, 1.2, 1.1, 0.9)}  # scores
    kinds = {"policy": "policy", "rangestop": "controller"}
    for workload, scores in means.items():
        for label, mean in {"wsd": 1.0, **dict(zip(labels, scores, strict=True))}.items():
            method = label.split(" ")[0]
            kind = kinds.get(method, "schedule" if method == "wsd" else "tuningfree")
            rows.append(
                {"workload": workload, "label": label, "kind": kind, "method": method}
                | {"mean": mean, "ratio_to_best": mean, "diverged": 0, "total_steps": 10}
            )
    table = suite_table(pd.DataFrame(rows)).set_index("method")
    robustness = table["robustness (worst / best start LR), worst workload"]
    assert robustness["policy (start 0.01)"] == pytest.approx(1.2)
    assert robustness["rangestop (start 0.001)"] == pytest.approx(1.5)
    assert math.isnan(robustness["wsd"])
    every = table["workloads it beats every tuning-free optimizer on"]
    prodigy = table["workloads it beats prodigy on"]
    schedulefree = table["workloads it beats schedulefree on"]
    assert every["policy (start 0.001)"] == 1 and prodigy["policy (start 0.001)"] == 2
    assert schedulefree["rangestop (start 0.01)"] == 0 and prodigy["rangestop (start 0.01)"] == 0
    assert schedulefree["rangestop (start 0.001)"] == 1 and prodigy["rangestop (start 0.001)"] == 1
    assert every["wsd"] is None and schedulefree["prodigy"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metric", "acc"], "metric must be one of loss, accuracy, got 'acc'"),
        (["--metric", "accuracy"], "byte_gpt runs measure no test accuracy"),
        (
            ["--workload", "WORKLOAD.toml"],
            "metric 'accuracy': byte_gpt runs measure no test accuracy",
        ),
        (["--workload", "CLASSIFY.toml"], "metric must be one of loss, accuracy, got 'error'"),
    ],
)
def test_a_bad_metric_is_one_line_exit_2(flags, message, tmp_path, capsys):
    (tmp_path / "WORKLOAD.toml").write_text('family = "byte_gpt"\nmetric = "accuracy"\n')
    (tmp_path / "CLASSIFY.toml").write_text('family = "text_classification"\nmetric = "error"\n')
    flags = [str(tmp_path / flag) if flag.endswith(".toml") else flag for flag in flags]
    code = main(["compare", *flags, "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_bad_metric_in_a_suite_is_one_line_exit_2(tmp_path, capsys):
    suites = {
        "entry.toml": ('workload = "tiny"\nmetric = "accuracy"\n', "runs measure no test accuracy"),
        "inline.toml": (
            'family = "byte_gpt"\nmetric = "accuracy"\n',
            "runs measure no test accuracy",
        ),
        "python.toml": (
            f'workload = "{EXAMPLES / "custom_workload.py"}:make_run"\nmetric = "accuracy"\n',
            "metric 'accuracy': a custom workload is ranked by test loss; use metric = 'loss'",
        ),
    }
    for name, (entry, message) in suites.items():
        (tmp_path / name).write_text(f'[[workloads]]\nname = "a"\n{entry}')
        out = str(tmp_path / "out")
        code = main(["benchmark", "--suite", str(tmp_path / name), "--quiet", "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (name, err)
    assert not (tmp_path / "out").exists()
