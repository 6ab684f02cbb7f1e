"""Workloads from the command line: a user's Python function, TOML files of every family,
and one-line errors for every kind of bad workload."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from lrpilot.cli import main
from lrpilot.lm.workloads import load_workload

ROOT = Path(__file__).parent.parent
CUSTOM = f"{ROOT / 'examples' / 'custom_workload.py'}:make_run"
WORKLOAD_FILES = sorted((ROOT / "examples" / "workloads").glob("*.toml"))


def test_the_shipped_policy_replays_on_a_users_own_training(tmp_path):
    out = tmp_path / "replay"
    flags = ["--seeds", "1", "--steps", "100", "--eval-every", "20", "--quiet"]
    assert (
        main(["replay", "--policy", "default", "--workload", CUSTOM, *flags, "--out", str(out)])
        == 0
    )
    trace = pd.read_csv(out / "seed_1" / "trace.csv")
    assert trace["step"].tolist() == [0, 20, 40, 60, 80, 100]
    assert trace["val_loss"].notna().all() and (trace["val_loss"] > 0).all()
    assert trace["test_loss"].iloc[:-1].isna().all() and trace["test_loss"].iloc[-1] > 0
    assert trace["lr"].nunique() > 1  # the policy moved the LR
    assert trace["grad_norm"].iloc[1:].gt(0).all() and trace["update_ratio"].iloc[1:].gt(0).all()


def test_a_users_workload_gives_the_same_numbers_for_the_same_seed():
    workload = load_workload(CUSTOM)

    def measured(seed: int) -> list[dict]:
        run = workload.make_run(seed)
        rows = [dataclasses.asdict(run.train(10, 3e-3)) for _ in range(2)]
        rows.append({"test": run.test().loss})
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert measured(3) == measured(3)
    assert measured(3) != measured(4)


@pytest.mark.parametrize("path", WORKLOAD_FILES, ids=[p.stem for p in WORKLOAD_FILES])
def test_compare_runs_the_default_controller_on_each_example_workload_file(path, tmp_path):
    if load_workload(str(path)).family == "hf_causal_lm":
        pytest.importorskip("transformers")
    flags = ["--schedules", "constant", "--lr-grid", "2", "--steps", "20", "--eval-every", "10"]
    flags += ["--eval-seeds", "1", "--policy", "default", "--quiet", "--out", str(tmp_path)]
    assert main(["compare", "--workload", str(path), *flags]) == 0
    results = pd.read_csv(tmp_path / "results.csv")
    last = results.groupby("run").last()
    assert (last["step"] == 20).all() and last["test_loss"].notna().all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["label"]) == {"constant", "priorhold (start 0.001)"}  # the default
    if "classification" in path.stem:
        assert last["test_accuracy"].between(0, 1).all()


def test_lrpilot_train_takes_a_users_workload(tmp_path):
    out = tmp_path / "run"
    flags = ["--preset", "tiny", "--workload", CUSTOM, "--timesteps", "32", "--quiet"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    config = (out / "config.toml").read_text()
    assert "custom_workload.py:make_run" in config and "corpora" not in config


BAD_WORKLOADS = {
    "missing.toml": None,
    "unknown_family.toml": 'family = "vision"\n',
    "unknown_field.toml": 'family = "byte_gpt"\nn_layers = 2\n',
    "not_toml.toml": "family = \n",
    "too_wide.toml": 'family = "byte_gpt"\nn_embd = 30\nn_head = 4\n',
    "wrong_return.py": "def make_run(seed):\n    return {'model': None}\n",
    "raises.py": "def make_run(seed):\n    raise RuntimeError('no data here')\n",
    "broken.py": "import not_a_module_anywhere\n",
}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.toml", "workload file not found"),
        ("unknown_family.toml", "unknown workload family 'vision'"),
        ("unknown_field.toml", "unknown_field.toml'] unknown key(s): n_layers"),
        ("not_toml.toml", "is not valid TOML"),
        ("too_wide.toml", "n_embd (30) must be divisible by n_head (4)"),
        ("missing.py:make_run", "workload file not found"),
        ("wrong_return.py:make_run", "must return lrpilot.RunParts, got dict"),
        ("wrong_return.py:make_it", "has no function 'make_it'"),
        ("raises.py:make_run", "raised RuntimeError: no data here"),
        ("broken.py:make_run", "failed to import: ModuleNotFoundError"),
        ("wrong_return.py", "a Python workload is FILE.py:FUNCTION"),
    ],
)
def test_a_bad_workload_is_one_line_exit_2(spec, message, tmp_path, capsys):
    for name, text in BAD_WORKLOADS.items():
        if text is not None:
            (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--workload",
            str(tmp_path / spec),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "trace.csv").exists()


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("sentence,class\nhello,a\nbye,b\n", "has no 'text' or 'label' column"),
        ("text,label\n" + "".join(f"line {i},same\n" for i in range(400)), "has only one class"),
    ],
)
def test_a_bad_classification_csv_is_one_line_exit_2(csv, message, tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(csv)
    workload = tmp_path / "classify.toml"
    workload.write_text(f'family = "text_classification"\ndata = "{data}"\nval_examples = 8\n')
    code = main(
        [
            "run",
            "--workload",
            str(workload),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err


def test_a_model_that_does_not_fit_the_corpus_is_one_line_exit_2(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_bytes(b"0123456789" * 20)
    code = main(
        [
            "run",
            "--workload",
            "base",
            "--corpus",
            str(short),
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "shorter than one block" in err and len(err.strip().splitlines()) == 1
