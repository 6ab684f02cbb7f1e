"""`lrpilot benchmark --suite`: the protocol over a suite, its report, its resume."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import KILL_AFTER_STORES

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.experiments.report import best_tuned
from lrpilot.experiments.run_cache import RUNS_DIR

pytest.importorskip("prodigyopt")
pytest.importorskip("schedulefree")

OUTPUTS = ("results.csv", "summary.csv", "suite.csv")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    assert main(["benchmark", "--suite", "quick", "--jobs", "2", "--quiet", "--out", str(out)]) == 0
    return out


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["seconds"], errors="ignore")


def test_the_quick_suite_compares_every_method_on_every_workload(quick):
    summary = pd.read_csv(quick / "summary.csv")
    assert set(summary["workload"]) == {"tiny-pydoc", "tiny-pystdlib"}
    # `benchmark` runs the default controller, the rule priorhold, when no --policy is given
    methods = {"constant", "wsd", "priorhold (start 0.001)", "prodigy", "schedulefree"}
    for _, rows in summary.groupby("workload"):
        assert set(rows["label"]) == methods
        assert (rows["seeds"] == 2).all()
    suite = pd.read_csv(quick / "suite.csv").set_index("method")
    assert set(suite.index) == methods
    assert (suite["workloads"] == 2).all()
    assert suite.loc["constant", "LM steps (tuning + eval)"] > 0
    assert (quick / "performance_profile.png").stat().st_size > 0
    results = pd.read_csv(quick / "results.csv")
    assert {"workload", "test_loss", "val_loss", "method"} <= set(results.columns)
    text = (quick / "summary.md").read_text()
    assert "| prodigy |" in text and "| schedulefree |" in text and "Steps to target" in text
    # the reference of each workload's ratios: its best tuned schedule's row
    reference = best_tuned(summary)
    schedules = summary[summary["kind"] == "schedule"]
    assert reference["mean"].to_dict() == schedules.groupby("workload")["mean"].min().to_dict()
    assert (reference["ratio_to_best"] == 1.0).all() and set(reference["label"]) <= {
        "constant",
        "wsd",
    }


def test_a_suite_killed_and_restarted_equals_an_uninterrupted_one(quick, tmp_path):
    # killed in the suite's second workload, three runs in
    flags = ["benchmark", "--suite", "quick", "--quiet", "--out", str(tmp_path)]
    first = len(list((quick / "tiny-pydoc" / RUNS_DIR).glob("*/run.json")))
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_STORES, str(first + 3), *flags],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "tiny-pydoc" / "summary.csv").is_file()  # the first one finished
    assert not (tmp_path / "tiny-pystdlib" / "summary.csv").exists()
    assert len(list((tmp_path / "tiny-pystdlib" / RUNS_DIR).glob("*/run.json"))) == 3
    assert main(flags) == 0
    for name in OUTPUTS:
        pd.testing.assert_frame_equal(
            _without_timing(pd.read_csv(tmp_path / name)),
            _without_timing(pd.read_csv(quick / name)),
        )
    assert (tmp_path / "summary.md").read_text() == (quick / "summary.md").read_text()


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ("nope", "unknown suite 'nope'"),
        ("missing.toml", "suite file not found"),
        ("empty.toml", "is empty: give at least one [[workloads]]"),
        ("twice.toml", "names a workload folder twice: a"),
        ("shared.toml", "seed(s) 1 are both tuning and evaluation seeds"),
        ("badworkload.toml", "unknown workload 'huge'"),
        ("unknownkey.toml", "unknownkey.toml'] unknown key(s): speed"),
        ("lrrange5.toml", "lr_range must be a list of 2 numbers, got 5"),
        ("lrrangeab.toml", "lr_range must be a list of 2 numbers, got ['a', 'b']"),
        ("warmupsx.toml", "warmups must be a list of numbers, got ['x']"),
        ("evalseeds1.toml", "eval_seeds must be a list of integers, got 1"),
        ("startfast.toml", "start_lrs must be a list of numbers, got ['fast']"),
        ("schedulestring.toml", "schedules must be a list of strings, got 'constant'"),
        ("latin1.toml", "is not UTF-8 text"),
        ("escape.toml", "got '../escaped'"),
        ("absolute.toml", "got '/tmp/x'"),
        ("dot.toml", "got '.'"),
        ("samefolder.toml", "names a workload folder twice: W1, w1"),
        ("entryrange.toml", "workload 'a': lr_range must be LOW,HIGH with 0 < LOW < HIGH"),
    ],
)
def test_a_bad_suite_is_one_line_exit_2(suite, message, tmp_path, capsys):
    entry = '[[workloads]]\nname = "a"\nworkload = "tiny"\n'
    files = {
        "empty.toml": 'name = "empty"\n',
        "twice.toml": entry + entry,
        "shared.toml": "tune_seeds = [1]\neval_seeds = [1, 2]\n" + entry,
        "badworkload.toml": '[[workloads]]\nname = "a"\nworkload = "huge"\n',
        "unknownkey.toml": "speed = 2\n" + entry,
        "lrrange5.toml": "lr_range = 5\n" + entry,
        "lrrangeab.toml": 'lr_range = ["a", "b"]\n' + entry,
        "warmupsx.toml": 'warmups = ["x"]\n' + entry,
        "evalseeds1.toml": "eval_seeds = 1\n" + entry,
        "startfast.toml": 'start_lrs = ["fast"]\n' + entry,
        "schedulestring.toml": 'schedules = "constant"\n' + entry,
        "latin1.toml": 'description = "caf\u00e9"\n'.encode("latin-1") + entry.encode(),
        "escape.toml": entry.replace('"a"', '"../escaped"'),
        "absolute.toml": entry.replace('"a"', '"/tmp/x"'),
        "dot.toml": entry.replace('"a"', '"."'),
        "samefolder.toml": entry.replace('"a"', '"w1"') + entry.replace('"a"', '"W1"'),
        "entryrange.toml": entry + "lr_range = [1e-2, 1e-3]\n",
    }
    for name, text in files.items():
        if isinstance(text, bytes):
            (tmp_path / name).write_bytes(text)
        else:
            (tmp_path / name).write_text(text)
    spec = suite if suite == "nope" else str(tmp_path / suite)
    code = main(["benchmark", "--suite", spec, "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_suite_table_counts_the_workloads_a_policy_beats_every_tuning_free_optimizer_on():
    from lrpilot.experiments.suite import suite_table

    rows = []
    for workload, policy, prodigy, schedulefree in (("a", 1.0, 1.1, 1.2), ("b", 1.0, 1.1, 0.9)):
        for label, kind, mean in (
            ("wsd", "schedule", 1.0),
            ("policy (start 0.001)", "policy", policy),
            ("prodigy", "tuningfree", prodigy),
            ("schedulefree", "tuningfree", schedulefree),
        ):
            rows.append(
                {"workload": workload, "label": label, "kind": kind, "method": label[:6]}
                | {"mean": mean}
                | {"ratio_to_best": mean, "diverged": 0, "total_steps": 10}
            )
    table = suite_table(pd.DataFrame(rows)).set_index("method")
    beats = table["workloads it beats every tuning-free optimizer on"]
    assert beats["policy (start 0.001)"] == 1  # on "a"; on "b" schedule-free is better
    assert beats["wsd"] is None and beats["prodigy"] is None


def test_an_output_folder_holds_one_experiment(tmp_path):
    from lrpilot.experiments.folders import claim_folder

    claim_folder(tmp_path, "compare", {"run": {"steps": 20}, "policy": None}, force=False)
    claim_folder(tmp_path, "compare", {"run": {"steps": 20}, "policy": None}, force=False)  # resume
    with pytest.raises(ConfigError, match=r"differs in command, protocol, run.steps\)"):
        claim_folder(tmp_path, "benchmark", {"run": {"steps": 40}, "protocol": {}}, force=False)
    claim_folder(tmp_path, "benchmark", {"run": {"steps": 40}}, force=True)  # asked for
    assert json.loads((tmp_path / "config.json").read_text())["command"] == "benchmark"


def test_a_suite_into_a_comparison_folder_is_refused_before_any_run(tmp_path, capsys):
    from lrpilot.experiments.folders import claim_folder

    claim_folder(tmp_path, "compare", {"policy": None}, force=False)
    code = main(["benchmark", "--suite", "quick", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "holds another experiment" in err and "--force" in err, err
    assert not (tmp_path / "tiny-pydoc").exists()


def test_the_validation_suite_shares_no_workload_corpus_or_seed_with_heldout():
    from lrpilot.experiments.suite import load_suite

    validation, heldout = load_suite("validation"), load_suite("heldout")

    def corpora(suite) -> set[str]:
        found = set()
        for entry in suite.entries:
            settings = entry.inline or {}
            found.add(entry.run.corpus or settings.get("corpus") or settings.get("data"))
        return found - {None}

    assert len(validation.entries) >= 6
    assert not {e.name for e in validation.entries} & {e.name for e in heldout.entries}
    assert not corpora(validation) & corpora(heldout)
    seeds = set(validation.protocol.tune_seeds) | set(validation.protocol.eval_seeds)
    assert not seeds & (set(heldout.protocol.tune_seeds) | set(heldout.protocol.eval_seeds))
    grid = validation.protocol.grid()
    assert max(b / a for a, b in itertools.pairwise(grid)) <= 2 + 1e-9
    assert len(validation.protocol.tune_seeds) == 2
