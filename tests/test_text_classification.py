"""The text-classification workload: the built-in data set, training, determinism,
user CSV data sets and their errors. Tiny sizes keep the file fast on a CPU."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.run import TrainingRun
from lrpilot.lm.text_classification import PAD, ByteClassifier, TextClassificationWorkload, encode
from lrpilot.lm.text_datasets import pystdlib_dataset, pystdlib_files

TINY = {"max_bytes": 64, "n_embd": 16, "batch_size": 16, "steps": 20, "eval_every": 10}


def tiny(**changes) -> TextClassificationWorkload:
    return TextClassificationWorkload(**{**TINY, "val_examples": 64, **changes})


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "id,text,label") -> None:
    lines = [header] + [f'{i},"{text}",{label}' for i, (text, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def animal_rows(n: int) -> list[tuple[str, str]]:
    """Texts of two easy classes and a third, 'NA' (text that must stay text)."""
    rows = []
    for i in range(n):
        rows.append((f"the cat {i} sat on the mat and purred", "cat"))
        rows.append((f"a dog {i} barked at the mailman, woof", "dog"))
        rows.append(("NA", "none"))
    return rows


def without_seconds(stats):
    return dataclasses.replace(stats, seconds=0.0)


# --- the built-in data set --------------------------------------------------------


def test_pystdlib_dataset_has_balanced_classes_and_files_split_apart():
    dataset = pystdlib_dataset(256)
    assert len(dataset.classes) >= 5
    assert list(dataset.classes) == sorted(dataset.classes)
    for labels in (dataset.train_labels, dataset.test_labels):
        counts = Counter(labels)
        assert set(counts) == set(range(len(dataset.classes)))  # every class in both
        assert min(counts.values()) >= 0.5 * max(counts.values())
    assert len(dataset.train_texts) <= 600 * len(dataset.classes)
    assert all(len(text) == 256 or len(text) >= 128 for text in dataset.train_texts)

    files = pystdlib_files()
    assert set(files) == set(dataset.classes)
    all_train = {f for train, _ in files.values() for f in train}
    all_test = {f for _, test in files.values() for f in test}
    assert all_train and all_test and not all_train & all_test
    for package, (train, test) in files.items():
        assert train and test
        assert all(f.startswith(f"{package}/") for f in (*train, *test))
        assert not any("site-packages" in f or "/test/" in f for f in (*train, *test))
    # Passages of one file never land in both splits (a copied license line may).
    shared = set(dataset.train_texts) & set(dataset.test_texts)
    assert len(shared) <= 0.02 * len(dataset.test_texts)


def test_pystdlib_dataset_is_cached_and_digest_follows_max_bytes():
    assert pystdlib_dataset(64) is pystdlib_dataset(64)
    assert tiny().digest() == tiny(n_embd=32).digest()  # the model is not the data
    assert tiny().digest() != tiny(max_bytes=128).digest()  # passages of other sizes


def test_default_workload_builds_a_run():
    workload = TextClassificationWorkload()
    assert workload.name == "classify" and workload.data == "pystdlib"
    assert workload.to_dict()["family"] == "text_classification"
    settings = {k: v for k, v in workload.to_dict().items() if k != "family"}
    assert TextClassificationWorkload(**settings) == workload
    run = workload.make_run(0)
    assert isinstance(run, TrainingRun)
    dataset = workload.dataset()
    assert run.parts.test_items == len(dataset.test_texts)
    assert math.isclose(run.evaluate(), math.log(len(dataset.classes)), rel_tol=1e-5)


def test_classify_is_the_builtin_text_classification_workload():
    from lrpilot.lm.workloads import load_workload, workload_from_dict

    workload = load_workload("classify")
    assert workload == TextClassificationWorkload()
    assert workload_from_dict(tiny().to_dict()) == tiny()


# --- training ---------------------------------------------------------------------


def test_run_lowers_the_validation_loss_and_reports_test_scores():
    workload = tiny(n_embd=32, batch_size=64, steps=60, eval_every=20, test_examples=200)
    run = workload.make_run(seed=0)
    before = run.evaluate()
    stats = [run.train(20, lr=3e-3) for _ in range(3)]
    assert stats[-1].step == 60 and stats[-1].tokens == 20 * 64
    assert stats[-1].val_loss < before - 0.02  # 0.045 to 0.10 over seeds 0-5
    assert not any(s.nonfinite for s in stats)
    result = run.test()
    assert math.isfinite(result.loss)
    assert 0.0 <= result.accuracy <= 1.0
    assert result.items == 200


def test_same_seed_same_numbers_other_seed_other_numbers():
    def numbers(seed):
        run = tiny().make_run(seed)
        stats = [without_seconds(run.train(10, lr=3e-3)) for _ in range(2)]
        return stats, run.test()

    first, again, other = numbers(1), numbers(1), numbers(2)
    assert first == again
    assert first[0] != other[0]


def test_validation_examples_are_never_trained_on():
    run = tiny(val_examples=100).make_run(0)
    n_train = len(run.dataset.train_texts)
    assert run._val[1].numel() == 100
    assert run._train[1].numel() == n_train - 100
    trained = {tuple(row.tolist()) for row in run._train[0]}
    held_out = [tuple(row.tolist()) for row in run._val[0]]
    assert sum(row in trained for row in held_out) <= 2  # duplicate passages only


def test_encoder_ignores_padding_and_handles_empty_text():
    model = ByteClassifier(
        n_classes=3, max_bytes=16, n_embd=16, n_layer=1, generator=torch.Generator()
    )
    torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(1))
    model.eval()
    texts = [b"short", b"", b"a longer text of bytes"]
    with torch.no_grad():
        padded = model(encode(texts, 16))
        alone = torch.cat([model(encode([t], 16)) for t in texts])
        shorter = model(encode(texts[:1], 8))
    assert encode(texts, 16)[1].eq(PAD).all()
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded, alone)
    torch.testing.assert_close(padded[:1], shorter)


# --- user CSV data sets -----------------------------------------------------------


def test_csv_folder_trains_with_sorted_classes(tmp_path):
    write_csv(tmp_path / "train.csv", animal_rows(20))
    write_csv(tmp_path / "test.csv", animal_rows(4))
    workload = tiny(data=str(tmp_path), val_examples=12, batch_size=8, test_examples=0)
    dataset = workload.dataset()
    assert dataset.classes == ("cat", "dog", "none")
    assert len(dataset.train_texts) == 60 and len(dataset.test_texts) == 12
    assert b"NA" in dataset.train_texts  # kept as text, not read as missing
    run = workload.make_run(0)
    stats = run.train(20, lr=3e-3)
    assert math.isfinite(stats.val_loss)
    result = run.test()
    assert result.items == 12 and 0.0 <= result.accuracy <= 1.0

    digest = workload.digest()
    write_csv(tmp_path / "train.csv", animal_rows(21))
    assert workload.digest() != digest  # an edited CSV is read again


def test_single_csv_file_splits_off_a_fifth_as_test(tmp_path):
    path = tmp_path / "data.csv"
    write_csv(path, animal_rows(10))  # 30 rows
    dataset = tiny(data=str(path), val_examples=4).dataset()
    assert len(dataset.train_texts) == 24 and len(dataset.test_texts) == 6
    run = tiny(data=str(path), val_examples=4, batch_size=8).make_run(0)
    assert math.isfinite(run.train(10, lr=1e-3).val_loss)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d / "no_test", "has no test.csv"),
        (lambda d: d / "notes.txt", "is neither a folder"),
        (lambda d: d / "columns.csv", "has no 'text' column (its columns: 'body', 'label'"),
        (lambda d: d / "one_class.csv", "has only one class ('a')"),
        (lambda d: d / "empty.csv", "is empty"),
        (lambda d: d / "header.csv", "is empty (a header but no rows)"),
        (lambda d: d / "unseen", "test label(s) not in the training labels: 'z'"),
    ],
)
def test_bad_data_is_a_config_error(tmp_path, make, message):
    (tmp_path / "no_test").mkdir()
    write_csv(tmp_path / "no_test" / "train.csv", animal_rows(5))
    (tmp_path / "notes.txt").write_text("text,label\nhello,a\n")
    (tmp_path / "columns.csv").write_text("body,label\nhello,a\nworld,b\n")
    write_csv(tmp_path / "one_class.csv", [(f"text {i}", "a") for i in range(10)])
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    (tmp_path / "unseen").mkdir()
    write_csv(tmp_path / "unseen" / "train.csv", animal_rows(5))
    write_csv(tmp_path / "unseen" / "test.csv", [("zebra", "z")])
    path = str(make(tmp_path))
    with pytest.raises(ConfigError) as error:
        tiny(data=path, val_examples=2).make_run(0)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert path in str(error.value)


def test_too_few_training_examples_for_validation(tmp_path):
    write_csv(tmp_path / "train.csv", animal_rows(2))  # 6 rows
    write_csv(tmp_path / "test.csv", animal_rows(1))
    with pytest.raises(ConfigError, match="6 training examples, too few for val_examples=6"):
        tiny(data=str(tmp_path), val_examples=6).make_run(0)
    tiny(data=str(tmp_path), val_examples=5, batch_size=4).make_run(0)  # one left to train


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_embd": 18}, "n_embd must be divisible by the 4 attention heads, got 18"),
        ({"max_bytes": 0}, "max_bytes must be positive, got 0"),
        ({"test_examples": -1}, "test_examples must not be negative, got -1"),
        ({"eval_every": 30}, "eval_every (30) exceeds steps (20)"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1), got 1.0"),
        ({"grad_clip": 0.0}, "grad_clip must be positive, got 0.0"),
        ({"data": ""}, "data must not be empty, got ''"),
    ],
)
def test_bad_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError) as error:
        tiny(**changes)
    assert message in str(error.value)
