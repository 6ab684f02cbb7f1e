"""Labelled text data sets for the text-classification workload: the built-in
``pystdlib`` and the user's CSV files.

- ``pystdlib`` (built in, no download): passages of the standard library's ``.py``
  sources, labelled by the top-level package they come from (`PYSTDLIB_PACKAGES`).
  Train and test are split by file, so passages of one file are never in both.
- a folder holding ``train.csv`` and ``test.csv``, or one ``.csv`` file (every fifth
  row is then the test set): columns ``text`` and ``label``, others ignored. Labels
  are strings; class indices follow the sorted training labels. A CSV file is read
  strictly: a broken quote, or a row with more or fewer fields than the header, is a
  `ConfigError` naming its line (a lenient reader would merge rows silently).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrpilot.errors import ConfigError

BUILTIN_DATA = "pystdlib"

# Top-level standard-library packages present (with sources) in every CPython 3.10+,
# each with 150 kB or more of code outside its own test folders.
PYSTDLIB_PACKAGES = (
    "asyncio",
    "email",
    "http",
    "importlib",
    "logging",
    "multiprocessing",
    "unittest",
    "xml",
)
PYSTDLIB_TEST_FRACTION = 0.2  # of each package's bytes, by whole files
PYSTDLIB_MAX_TRAIN = 600  # passages per class: balanced classes, a quick CPU run
PYSTDLIB_MAX_TEST = 150
CSV_TEST_EVERY = 5  # a single CSV file: every fifth row is the test set
WHITESPACE = b" \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class TextDataset:
    """Labelled texts (as bytes) split into train and test; labels index `classes`."""

    name: str
    classes: tuple[str, ...]
    train_texts: tuple[bytes, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[bytes, ...]
    test_labels: tuple[int, ...]

    def digest(self) -> str:
        """sha256 over the class names, texts and labels: changed data, a new digest."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.classes).encode("utf-8"))
        for texts, labels in (
            (self.train_texts, self.train_labels),
            (self.test_texts, self.test_labels),
        ):
            digest.update(len(texts).to_bytes(8, "little"))
            for text, label in zip(texts, labels, strict=True):
                digest.update(len(text).to_bytes(8, "little") + label.to_bytes(4, "little"))
                digest.update(text)
        return digest.hexdigest()


def load_dataset(data: str, max_bytes: int) -> TextDataset:
    """`pystdlib` (its passages are `max_bytes` long), or a CSV folder or file."""
    if data == BUILTIN_DATA:
        return pystdlib_dataset(max_bytes)
    files = csv_files(data)
    # Keyed by the files' sizes and times too, so an edited CSV is read again.
    stamps = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _csv_dataset(data, stamps)


def csv_files(data: str) -> tuple[Path, ...]:
    """(train.csv, test.csv) of a folder, or (file,) of a single .csv file."""
    path = Path(data).expanduser()
    if not path.exists():
        raise ConfigError(
            f"data path does not exist: {data!r} (give {BUILTIN_DATA!r}, a folder with "
            f"train.csv and test.csv, or a .csv file)"
        )
    if path.is_dir():
        missing = [name for name in ("train.csv", "test.csv") if not (path / name).is_file()]
        if missing:
            raise ConfigError(
                f"data folder {data!r} has no {' or '.join(missing)} "
                f"(a data folder holds train.csv and test.csv)"
            )
        return path / "train.csv", path / "test.csv"
    if path.is_file() and path.suffix.lower() == ".csv":
        return (path,)
    raise ConfigError(
        f"data path {data!r} is neither a folder with train.csv and test.csv nor a .csv file"
    )


def read_csv(path: Path) -> tuple[list[bytes], list[str]]:
    """The `text` (as UTF-8 bytes) and `label` columns of a CSV file, as strings.

    Blank lines are skipped; a quoted field may span lines. A quote left open (or a
    stray one after a closing quote), a row whose field count differs from the
    header's, or text that is not UTF-8 is a `ConfigError` naming the line.
    """
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"CSV file {name!r} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"CSV file {name!r} is not UTF-8 text (line {line})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []  # (the line a row starts on, its fields)
    start = 1
    try:
        for fields in reader:
            if fields:
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(
            f"CSV file {name!r} has a broken quote in the row starting at line {start} "
            f"(the reader stopped at line {reader.line_num}: {exc})"
        ) from None
    if not rows:
        raise ConfigError(f"CSV file {name!r} is empty")
    (_, header), body = rows[0], rows[1:]
    missing = [column for column in ("text", "label") if column not in header]
    if missing:
        columns = ", ".join(map(repr, header))
        raise ConfigError(
            f"CSV file {name!r} has no {' or '.join(repr(m) for m in missing)} column "
            f"(its columns: {columns}; it needs 'text' and 'label')"
        )
    if not body:
        raise ConfigError(f"CSV file {name!r} is empty (a header but no rows)")
    for line, fields in body:
        if len(fields) != len(header):
            raise ConfigError(
                f"CSV file {name!r}: the row at line {line} has {len(fields)} fields, "
                f"the header {len(header)}"
            )
    text_at, label_at = header.index("text"), header.index("label")
    return [row[text_at].encode("utf-8") for _, row in body], [row[label_at] for _, row in body]


@functools.cache
def _csv_dataset(data: str, stamps: tuple[tuple[str, int, int], ...]) -> TextDataset:
    files = [Path(stamp[0]) for stamp in stamps]
    if len(files) == 2:
        (train_texts, train_names), (test_texts, test_names) = map(read_csv, files)
        train_file, test_file = str(files[0]), str(files[1])
    else:
        texts, names = read_csv(files[0])
        is_test = [i % CSV_TEST_EVERY == CSV_TEST_EVERY - 1 for i in range(len(texts))]
        train_texts = [t for t, test in zip(texts, is_test, strict=True) if not test]
        train_names = [n for n, test in zip(names, is_test, strict=True) if not test]
        test_texts = [t for t, test in zip(texts, is_test, strict=True) if test]
        test_names = [n for n, test in zip(names, is_test, strict=True) if test]
        train_file = test_file = str(files[0])
        if not test_texts:
            raise ConfigError(
                f"CSV file {train_file!r} has {len(texts)} rows, too few to split off "
                f"every {CSV_TEST_EVERY}th as the test set"
            )
    classes = tuple(sorted(set(train_names)))
    if len(classes) < 2:
        raise ConfigError(
            f"CSV file {train_file!r} has only one class ({classes[0]!r}) in its training "
            f"rows; a classifier needs at least 2"
        )
    index = {name: i for i, name in enumerate(classes)}
    unseen = sorted(set(test_names) - set(classes))
    if unseen:
        raise ConfigError(
            f"CSV file {test_file!r} has test label(s) not in the training labels: "
            f"{', '.join(map(repr, unseen[:5]))} (training labels: "
            f"{', '.join(map(repr, classes[:10]))})"
        )
    return TextDataset(
        name=data,
        classes=classes,
        train_texts=tuple(train_texts),
        train_labels=tuple(index[n] for n in train_names),
        test_texts=tuple(test_texts),
        test_labels=tuple(index[n] for n in test_names),
    )


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def pystdlib_files() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each package's (train files, test files), as paths relative to the standard
    library, in sorted order.

    A package's files are taken in the order of the sha256 of their relative paths;
    they go to test until it holds `PYSTDLIB_TEST_FRACTION` of the package's bytes,
    the rest (at least one file) to train. Test folders and site-packages are skipped.
    """
    root = stdlib_root()
    splits: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for package in PYSTDLIB_PACKAGES:
        folder = root / package
        if not folder.is_dir():
            continue  # stripped from this Python build
        sizes: dict[str, int] = {}
        for path in sorted(folder.rglob("*.py")):
            folders = path.relative_to(root).parts[:-1]
            if {"test", "tests", "site-packages", "dist-packages"} & set(folders):
                continue
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size
        if len(sizes) < 2:
            continue
        total = sum(sizes.values())
        test: set[str] = set()
        test_bytes = 0
        for relative in sorted(sizes, key=lambda r: hashlib.sha256(r.encode()).hexdigest()):
            if test_bytes >= PYSTDLIB_TEST_FRACTION * total or len(test) == len(sizes) - 1:
                break
            test.add(relative)
            test_bytes += sizes[relative]
        train = tuple(r for r in sorted(sizes) if r not in test)
        splits[package] = (train, tuple(sorted(test)))
    if len(splits) < 2:
        raise ConfigError(
            f"the standard library at {str(root)!r} holds fewer than 2 of the packages "
            f"{', '.join(PYSTDLIB_PACKAGES)}; use a CSV data set instead"
        )
    return splits


def file_passages(data: bytes, max_bytes: int) -> list[bytes]:
    """`data` cut into passages of `max_bytes`, skipping those mostly whitespace."""
    pieces = (data[i : i + max_bytes] for i in range(0, len(data), max_bytes))
    return [p for p in pieces if len(p.translate(None, WHITESPACE)) * 2 >= max_bytes]


def spread(items: list, count: int) -> list:
    """At most `count` of `items`, evenly spread over them (all when there are fewer)."""
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(np.int64)
    return [items[i] for i in picks]


@functools.cache
def pystdlib_dataset(max_bytes: int = 256) -> TextDataset:
    """Passages of `max_bytes` of standard-library sources, labelled by package: at most
    `PYSTDLIB_MAX_TRAIN` training and `PYSTDLIB_MAX_TEST` test passages per class,
    spread over the package's files."""
    root = stdlib_root()
    classes = tuple(sorted(pystdlib_files()))
    split: dict[str, tuple[list[bytes], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, package in enumerate(classes):
        for part, files, cap in zip(
            ("train", "test"),
            pystdlib_files()[package],
            (PYSTDLIB_MAX_TRAIN, PYSTDLIB_MAX_TEST),
            strict=True,
        ):
            passages = [p for f in files for p in file_passages((root / f).read_bytes(), max_bytes)]
            passages = spread(passages, cap)
            split[part][0].extend(passages)
            split[part][1].extend([label] * len(passages))
    return TextDataset(
        name=BUILTIN_DATA,
        classes=classes,
        train_texts=tuple(split["train"][0]),
        train_labels=tuple(split["train"][1]),
        test_texts=tuple(split["test"][0]),
        test_labels=tuple(split["test"][1]),
    )
