import json
import subprocess
import sys

import pandas as pd
import pytest

from lrpilot.cli import main
from lrpilot.lm.trace import TRACE_COLUMNS

FAST = ["--steps", "6", "--eval-every", "3", "--batch-size", "4", "--quiet", "--device", "cpu"]


def test_run_writes_trace_config_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", "--schedule", "warmup_cosine", "--lr", "3e-3", *FAST, "--out", str(out)]) == 0
    )
    trace = pd.read_csv(out / "trace.csv")
    assert list(trace.columns) == list(TRACE_COLUMNS)
    assert trace["interval"].tolist() == [0, 1, 2]
    assert trace["step"].tolist() == [0, 3, 6]
    assert trace["tokens"].iloc[-1] == 6 * 4 * 16
    config = json.loads((out / "config.json").read_text())
    assert config["schedule"] == "warmup_cosine" and config["task"]["start_lr"] == 3e-3
    assert config["task"]["workload"]["family"] == "byte_gpt"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(trace["val_loss"].iloc[-1])
    # The test loss is measured once, after the last interval.
    assert trace["test_loss"].iloc[:-1].isna().all() and trace["test_loss"].iloc[-1] > 0
    assert summary["test_loss"] == pytest.approx(trace["test_loss"].iloc[-1])
    assert "final val_loss" in capsys.readouterr().out


def test_same_seed_same_trace(tmp_path):
    for name in ("a", "b"):
        main(["run", "--seed", "7", *FAST, "--out", str(tmp_path / name)])
    a, b = (pd.read_csv(tmp_path / n / "trace.csv").drop(columns="seconds") for n in "ab")
    pd.testing.assert_frame_equal(a, b)


def test_plateau_and_short_last_interval(tmp_path):
    out = tmp_path / "plateau"
    args = ["run", "--schedule", "plateau", "--steps", "7", "--eval-every", "3"]
    assert main([*args, "--batch-size", "4", "--quiet", "--out", str(out)]) == 0
    assert pd.read_csv(out / "trace.csv")["step"].tolist() == [0, 3, 6, 7]


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    short = tmp_path / "short.txt"
    short.write_bytes(b"0123456789")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return [
        (["--corpus", str(tmp_path / "missing")], "corpus path does not exist"),
        (["--corpus", str(empty)], "corpus is empty"),
        (["--corpus", str(short)], "shorter than one block"),
        (["--corpus", "wikipedia"], "'wikipedia'"),
        (["--schedule", "cosin"], "schedule must be one of constant,"),
        (["--workload", "huge"], "unknown workload 'huge'"),
        (["--workload", "nope.toml"], "workload file not found: 'nope.toml'"),
        (["--workload", "nope.py:make_run"], "workload file not found"),
        (["--lr", "0"], "lr must be positive, got 0.0"),
        (["--lr=-1e-3"], "lr must be positive, got -0.001"),
        (["--steps", "0"], "steps must be positive, got 0"),
        (
            ["--eval-every", "10", "--steps", "5"],
            "eval_every (10) must not exceed the step budget (5)",
        ),
        (["--lr", "abc"], "expected a number, got 'abc'"),
    ], blocker


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    cases, blocker = _bad_inputs(tmp_path)
    for i, (flags, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = main(
            ["run", "--steps", "6", "--eval-every", "3", "--quiet", *flags, "--out", str(out)]
        )
        assert code == 2, flags
        err = capsys.readouterr().err
        assert message in err, (flags, err)
        assert err.count("\n") == 1, err
        assert not (out / "trace.csv").exists()
    code = main(["run", *FAST, "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "output folder is not writable" in err and "a-file" in err


def test_cli_process_reports_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "run", "--schedule", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()]
        and "schedule must be one of" in result.stderr
    )
    assert "Traceback" not in result.stderr
