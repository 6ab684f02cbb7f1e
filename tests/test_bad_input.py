"""Bad input, tried as a new user would: each case is refused with exit code 2 and one
line on stderr naming the problem and the value, without a traceback; legal input next
to it does what the documentation says. Runs are a few steps of tiny models."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
from conftest import make_policy

# Imported now: the code a test runs without root's rights cannot read root's Python.
import lrpilot.experiments.replay
import lrpilot.experiments.runs
import lrpilot.lm.text_classification
from lrpilot.agents.policy_file import shipped_policy_path
from lrpilot.cli import main
from lrpilot.lm import memory
from lrpilot.lm.byte_gpt import ByteGPTWorkload
from lrpilot.lm.model import GPT, ModelConfig
from lrpilot.lm.text_classification import ByteClassifier, classifier_num_params
from lrpilot.lm.text_datasets import read_csv

FAST = ["--steps", "4", "--eval-every", "2", "--quiet", "--device", "cpu"]
MICRO = {
    "family": "byte_gpt",
    "n_embd": 16,
    "n_head": 2,
    "batch_size": 4,
    "val_windows": 4,
    "test_tokens": 256,
}


def lrpilot(args: list[str], capsys) -> tuple[int, str]:
    """`lrpilot ARGS` in this process: its exit code and its stderr."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *fragments: str) -> None:
    """Exit code 2 and one line on stderr, holding every fragment, no traceback."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def succeeds(args: list, capsys) -> None:
    code, err = lrpilot(args, capsys)
    assert code == 0, err


def write_toml(path: Path, settings: dict) -> Path:
    path.write_text(tomli_w.dumps(settings))
    return path


# -- workload settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        ({"corpus": 5}, ["corpus must be a string, got 5"]),
        ({"weight_decay": math.inf}, ["weight_decay must be a finite number, got inf"]),
        ({"name": [1, 2]}, ["name must be a string, got [1, 2]"]),
        ({"grad_clip": math.nan}, ["grad_clip must be a finite number, got nan"]),
        ({"beta1": True}, ["beta1 must be a number, got True"]),
        (
            {"n_embd": 100_000, "n_head": 4},
            ["(n_layer=1, n_embd=100000, block_size=16) has 120,054,300,000 parameters", "GB"],
        ),
        (
            {"family": "text_classification", "n_embd": 400_000},
            ["has 2,560,135,600,002 parameters", "this machine has"],
        ),
    ],
    ids=["corpus", "weight_decay", "name", "grad_clip", "beta1", "n_embd", "classifier"],
)
def test_a_bad_workload_setting_is_refused(settings, fragments, tmp_path, capsys):
    if "parameters" in fragments[0] and memory.machine_memory_bytes() is None:
        pytest.skip("this machine's memory cannot be read, so no model is refused for its size")
    toml = write_toml(tmp_path / "w.toml", settings if "family" in settings else MICRO | settings)
    code, err = lrpilot(["run", "--workload", toml, *FAST, "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, f"workload file {str(toml)!r}", *fragments)
    assert not (tmp_path / "out").exists()


def test_the_memory_check_is_skipped_where_memory_cannot_be_read(monkeypatch):
    def unreadable(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(os, "sysconf", unreadable)
    assert memory.machine_memory_bytes() is None
    ByteGPTWorkload(n_embd=100_000, n_head=4)  # only described: nothing is allocated


def test_parameter_counts_from_the_sizes_match_the_built_models():
    config = ModelConfig(n_layer=3, n_head=2, n_embd=16, block_size=8)
    assert config.num_params() == GPT(config).num_params()
    for args in [(3, 256, 16, 1), (8, 10, 8, 2)]:
        built = sum(p.numel() for p in ByteClassifier(*args).parameters())
        assert classifier_num_params(*args) == built


def test_hf_parameter_counts_match_the_built_models():
    pytest.importorskip("transformers")
    from lrpilot.lm.hf_causal_lm import HFCausalLMWorkload

    for architecture in ("gpt2", "llama"):
        workload = HFCausalLMWorkload(architecture=architecture, n_embd=16)
        built = sum(p.numel() for p in workload.build_model(0).parameters())
        assert workload.num_params() == built, architecture


# -- unreadable files ----------------------------------------------------------------------

NOBODY = 65534


@contextlib.contextmanager
def without_root_rights():
    """Run the body with the rights of an ordinary user: as root, under the effective
    user id `NOBODY` (so chmod 000 denies reading, as it does for a user)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(NOBODY)
    except PermissionError:
        pytest.skip("running as root without the right to change the effective user id")
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_dir():
    """A folder any user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="lrpilot-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def unreadable(path: Path) -> Path:
    path.chmod(0o000)
    return path


def test_unreadable_inputs_are_refused(shared_dir, capsys):
    text = b"some text to learn from. " * 400
    (shared_dir / "corpus.txt").write_bytes(text)
    secret = unreadable(shared_dir / "corpus.txt")
    holding = shared_dir / "holding"
    holding.mkdir()
    (holding / "a.txt").write_bytes(text)
    (holding / "b.txt").write_bytes(text)
    unreadable(holding / "b.txt")
    closed = shared_dir / "closed"
    closed.mkdir()
    (closed / "a.txt").write_bytes(text)
    unreadable(closed)
    nested = shared_dir / "nested"
    (nested / "inner").mkdir(parents=True)
    (nested / "inner" / "a.txt").write_bytes(text)
    unreadable(nested / "inner")
    toml = unreadable(write_toml(shared_dir / "w.toml", MICRO))
    data = shared_dir / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\nx,a\ny,b\n")
    (data / "test.csv").write_text("text,label\nx,a\n")
    unreadable(data / "train.csv")
    classify = write_toml(
        shared_dir / "classify.toml", {"family": "text_classification", "data": str(data)}
    )
    trace = shared_dir / "trace.csv"
    trace.write_text("step,lr\n0,0.001\n2,0.001\n")
    unreadable(trace)
    python = shared_dir / "user.py"
    python.write_text("def make_run(seed):\n    pass\n")
    unreadable(python)
    out = ["--out", shared_dir / "out"]
    cases = [
        (["run", "--corpus", secret], ["corpus cannot be read", repr(str(secret))]),
        (["run", "--corpus", holding], [repr(str(holding / "b.txt")), "Permission denied"]),
        (["run", "--corpus", closed], [f"corpus cannot be read: {str(closed)!r}"]),
        (["run", "--corpus", nested], [repr(str(nested / "inner")), "Permission denied"]),
        (["run", "--workload", toml], [f"cannot read workload {str(toml)!r}: Permission denied"]),
        (["run", "--workload", classify], [f"CSV file {str(data / 'train.csv')!r} cannot be"]),
        (["replay", "--trace", trace], [f"trace file cannot be read: {str(trace)!r}"]),
        (["run", "--workload", f"{python}:make_run"], ["failed to import: PermissionError"]),
    ]
    for args, fragments in cases:
        with without_root_rights():
            code, err = lrpilot([*args, *FAST, *out], capsys)
        assert_refused(code, err, "Permission denied", *fragments)
    assert not (shared_dir / "out").exists()


# -- text-classification CSV files ---------------------------------------------------------


def write_rows(path: Path, texts: list[str]) -> Path:
    """A CSV of `id,text,label` rows, each text in quotes, as a spreadsheet writes them."""
    lines = ["id,text,label"] + [f'{i},"{t}",{"ab"[i % 2]}' for i, t in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("broken", "fragments"),
    [
        ('he said "hi', ["broken quote in the row starting at line 12"]),
        ('say hi"', ["broken quote in the row starting at line 12", "stopped at line 13"]),
        ('"unclosed', ["broken quote in the row starting at line 12"]),
    ],
)
def test_a_csv_with_a_broken_quote_is_refused_with_its_line(broken, fragments, tmp_path, capsys):
    texts = [f"sample text {i}" for i in range(60)]
    texts[10] = broken  # row 10 is on line 12, after the header
    data = write_rows(tmp_path / "data.csv", texts)
    classify = write_toml(tmp_path / "c.toml", {"family": "text_classification", "data": str(data)})
    code, err = lrpilot(["run", "--workload", classify, *FAST, "--out", tmp_path / "o"], capsys)
    assert_refused(code, err, f"CSV file {str(data)!r}", *fragments)


def test_csv_rows_are_read_strictly_and_quoted_line_breaks_are_text(tmp_path, capsys):
    texts = [f"sample text {i}" for i in range(60)]
    texts[3] = 'two\nlines, with a comma and a doubled "" quote'
    texts, labels = read_csv(write_rows(tmp_path / "data.csv", texts))
    assert len(texts) == len(labels) == 60
    assert texts[3] == b'two\nlines, with a comma and a doubled " quote'
    (tmp_path / "short.csv").write_text("text,label\nhello,a\nworld\nagain,b\n")
    classify = write_toml(
        tmp_path / "c.toml", {"family": "text_classification", "data": str(tmp_path / "short.csv")}
    )
    code, err = lrpilot(["run", "--workload", classify, *FAST, "--out", tmp_path / "o"], capsys)
    assert_refused(code, err, "the row at line 3 has 1 fields, the header 2")


# -- a user's own training, FILE.py:FUNCTION -----------------------------------------------

USER_WORKLOAD = """
import torch
from lrpilot import RunParts


def parts(seed, loss=None, validation_loss=None):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4)
    y = x.sum(1, keepdim=True)

    def batches():
        while True:
            yield x, y

    def mean_loss(batch):
        inputs, targets = batch
        return ((model(inputs) - targets) ** 2).mean()

    return RunParts(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        batches=batches(),
        loss=loss or mean_loss,
        validation_loss=validation_loss or (lambda: mean_loss((x, y)).item()),
        test_loss=lambda: mean_loss((x, y)).item(),
    )


def without_gradient(seed):
    run = parts(seed)
    return parts(seed, loss=lambda batch: run.loss(batch).detach())


def python_float(seed):
    run = parts(seed)
    return parts(seed, loss=lambda batch: run.loss(batch).item())


def per_sample(seed):
    run = parts(seed)
    return parts(seed, loss=lambda batch: (run.model(batch[0]) - batch[1]).squeeze(1) ** 2)


def raises(seed):
    def loss(batch):
        raise ValueError("the labels are missing\\nsecond line")

    return parts(seed, loss=loss)


def string_validation(seed):
    return parts(seed, validation_loss=lambda: "0.5")


def numbers(seed):
    return parts(seed, validation_loss=lambda: torch.tensor(0.5))
"""


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user.py"
    path.write_text(USER_WORKLOAD)
    return path


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("without_gradient", "loss(batch) returned a tensor without a gradient"),
        ("python_float", "loss(batch) must return a scalar torch.Tensor, got float "),
        ("per_sample", "loss(batch) must return a scalar (the mean over the batch), got a tensor "),
        ("raises", "loss(batch) raised ValueError: the labels are missing"),
        ("string_validation", "validation_loss() must return a number, got str '0.5'"),
    ],
)
def test_a_users_bad_loss_is_refused(function, fragment, user_file, tmp_path, capsys):
    spec = f"{user_file}:{function}"
    code, err = lrpilot(["run", "--workload", spec, *FAST, "--out", tmp_path / "o"], capsys)
    assert_refused(code, err, f"user.py:{function}(0): ", fragment)


def test_a_users_evaluation_may_return_a_one_element_tensor(user_file, tmp_path, capsys):
    spec = f"{user_file}:numbers"
    code, _ = lrpilot(["run", "--workload", spec, *FAST, "--out", tmp_path / "o"], capsys)
    assert code == 0
    assert pd.read_csv(tmp_path / "o" / "trace.csv")["val_loss"].tolist() == [0.5, 0.5, 0.5]


# -- strict JSON ---------------------------------------------------------------------------


def strict_json(text: str):
    """`json.loads`, refusing NaN and Infinity as a strict parser does."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_written_is_strict_json_a_diverged_run_included(tmp_path, capsys):
    micro = write_toml(tmp_path / "micro.toml", MICRO)
    flags = ["--workload", micro, *FAST]
    succeeds(["run", *flags, "--lr", "1e12", "--out", tmp_path / "run"], capsys)
    diverged = tmp_path / "huge_lrs.csv"
    diverged.write_text("step,lr\n0,1e12\n2,1e12\n4,1e12\n")
    succeeds(["replay", "--trace", diverged, *flags, "--out", tmp_path / "open"], capsys)
    succeeds(["replay", "--policy", "default", *flags, "--out", tmp_path / "closed"], capsys)
    grid = ["--schedules", "constant", "--lr-grid", "2", "--lr-range", "1e-3,1e12"]
    seeds = ["--tune-seeds", "0", "--eval-seeds", "1", "--jobs", "1"]
    succeeds(["compare", *flags, *grid, *seeds, "--out", tmp_path / "compare"], capsys)
    train = ["--preset", "tiny", "--workload", micro, "--timesteps", "16", "--quiet"]
    succeeds(["train", *train, "--out", tmp_path / "train"], capsys)
    written = sorted(tmp_path.rglob("*.json"))
    folders = {path.relative_to(tmp_path).parts[0] for path in written}
    assert folders == {"run", "open", "closed", "compare", "train"}
    for path in written:
        strict_json(path.read_text())
    summary = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert summary["diverged"] and summary["final_val_loss"] is None
    assert summary["test_accuracy"] is None  # a language model has none
    assert strict_json((tmp_path / "open" / "seed_1" / "summary.json").read_text())["diverged"]


# -- output folders and the settings' own checks ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["run", "--out", ""], ["out must not be empty"]),
        (["compare", "--out", "x", "--policy", ""], ["policy must not be empty"]),
        (["compare", "--out", "x", "--lr-range", "1e-3,nan"], ["lr_range must hold finite"]),
        (["train", "--out", "x", "--resume", "--seed", "7"], ["seed: for a new run"]),
        (["run", "--out", "x", "--l", "1e-3"], ["unrecognized arguments: --l"]),  # no abbreviations
    ],
)
def test_settings_refuse_what_no_run_can_use(args, fragments, tmp_path, capsys):
    with contextlib.chdir(tmp_path):
        code, err = lrpilot([*args, *(FAST if args[0] != "train" else [])], capsys)
    assert_refused(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even --out


def test_a_comparison_folder_is_known_by_what_its_runs_depend_on(tmp_path, capsys):
    policy = tmp_path / "p.safetensors"
    shutil.copy(shipped_policy_path("tiny"), policy)
    out = tmp_path / "out"
    flags = [*FAST, "--schedules", "constant", "--lr-grid", "2", "--eval-seeds", "1"]
    flags += ["--tune-seeds", "0", "--batch-size", "4", "--out", out]
    succeeds(["compare", "--policy", policy, *flags], capsys)
    with contextlib.chdir(tmp_path):  # the same policy and device, spelled otherwise
        succeeds(["compare", "--policy", "p.safetensors", *flags, "--device", "auto"], capsys)
    make_policy(seed=3).save(policy)  # another policy under the same path
    code, err = lrpilot(["compare", "--policy", policy, *flags], capsys)
    assert_refused(code, err, "differs in policy")


def test_a_refused_benchmark_leaves_its_folder_empty(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('[[workloads]]\nname = "a"\nworkload = "tiny"\ncorpus = "/nonexistent"\n')
    code, err = lrpilot(
        ["benchmark", "--suite", suite, "--policy", "none", "--out", tmp_path / "o"], capsys
    )
    assert_refused(code, err, "workload 'a'", "/nonexistent")
    assert not (tmp_path / "o").exists()


def test_windows_are_spread_within_a_split_of_any_length():
    from lrpilot.lm.byte_gpt import spread

    for n in (82_268_144, 2**25 + 3):  # float32 steps round the last index past n - 1
        assert int(spread(n, 32).max()) < n
    assert spread(10, 4).tolist() == [0, 3, 6, 9]
