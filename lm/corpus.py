"""Byte-level corpora: built-in text that ships with Python, or the user's own files.

Every corpus is a sequence of bytes (vocabulary 256), so a policy trained on one
corpus runs on any other without a vocabulary mismatch.

Built-in corpora (no download):

- ``pydoc``: the English documentation text of ``pydoc_data.topics``, topics in
  sorted order (about 0.5 MB).
- ``pystdlib``: the standard library's ``.py`` sources in sorted path order, never
  site-packages, capped at ``PYSTDLIB_MAX_BYTES``.
- ``pystdlib:PACKAGE`` (e.g. ``pystdlib:email``): the files of one folder of this
  machine's standard library, read as any user folder is.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from lrpilot.errors import ConfigError

BUILTIN_CORPORA = ("pydoc", "pystdlib")
PYSTDLIB_MAX_BYTES = 4_000_000
VOCAB_SIZE = 256

# Train/validation/test split: the text is cut into chunks of SPLIT_CHUNK_BYTES, and
# the chunks are dealt out in turn so that each split gets its fraction of them spread
# evenly over the whole corpus (a tail split of sorted topics would validate on one
# letter of the alphabet).
SPLIT_CHUNK_BYTES = 4096
VAL_FRACTION = 0.1
TEST_FRACTION = 0.16  # pydoc's test split then scores over 65,536 predicted bytes


@dataclass(frozen=True)
class Corpus:
    """A named corpus split into train, validation and test bytes (uint8 tensors).

    A controller observes losses on `val`; `test` is the score, never shown to it.
    """

    name: str
    train: torch.Tensor  # (n_train,) uint8
    val: torch.Tensor  # (n_val,) uint8
    test: torch.Tensor  # (n_test,) uint8

    @property
    def num_bytes(self) -> int:
        return self.train.numel() + self.val.numel() + self.test.numel()


@functools.cache
def pydoc_bytes() -> bytes:
    """The English text of Python's built-in documentation topics, in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


@functools.cache
def pystdlib_bytes(max_bytes: int = PYSTDLIB_MAX_BYTES) -> bytes:
    """The standard library's Python sources in sorted path order, up to `max_bytes`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[bytes] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).parts
        if "site-packages" in relative or "dist-packages" in relative:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"\n".join(parts)[:max_bytes]


def path_bytes(path: Path, glob: str = "*") -> bytes:
    """A file's bytes, or the files under a folder (recursive, sorted, names matching
    `glob`); a file or folder that cannot be read is a `ConfigError` naming it."""
    try:
        if not path.exists():
            raise ConfigError(
                f"corpus path does not exist: {str(path)!r} "
                f"(built-in corpora: {', '.join(BUILTIN_CORPORA)})"
            )
        if path.is_file():
            return path.read_bytes()
        return b"\n".join(p.read_bytes() for p in files_under(path, glob))
    except OSError as exc:
        where = str(exc.filename or path)
        raise ConfigError(f"corpus cannot be read: {where!r} ({exc.strerror})") from None


def files_under(folder: Path, glob: str = "*") -> list[Path]:
    """The files under `folder` whose names match `glob`, sorted, symlinked folders not
    followed; a folder that cannot be listed raises its `OSError` (`Path.rglob` would
    skip it)."""

    def fail(error: OSError) -> None:
        raise error

    return sorted(
        Path(root, name)
        for root, _folders, names in os.walk(folder, onerror=fail)
        for name in names
        if fnmatch.fnmatchcase(name, glob) and Path(root, name).is_file()
    )


def split_bytes(
    data: bytes, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic interleaved train/validation/test split (see SPLIT_CHUNK_BYTES).

    Chunk by chunk, each split earns its fraction of a chunk; a chunk goes to
    validation, else to test, once that split has earned a whole one, else to train.
    """
    if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction and test_fraction must be positive with a sum below 1, "
            f"got {val_fraction!r} and {test_fraction!r}"
        )
    all_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    chunks = torch.split(all_bytes, SPLIT_CHUNK_BYTES)
    if len(chunks) * min(val_fraction, test_fraction) < 1:
        # Too short to deal out chunks: the head trains, then validation, then test.
        n_val = max(1, int(len(data) * val_fraction))
        n_test = max(1, int(len(data) * test_fraction))
        n_train = len(data) - n_val - n_test
        train, val, test = torch.split(all_bytes, [n_train, n_val, n_test])
        return train.clone(), val.clone(), test.clone()
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    val_credit = test_credit = 0.5  # half a chunk ahead: the first split chunk comes early
    for chunk in chunks:
        val_credit += val_fraction
        test_credit += test_fraction
        if val_credit >= 1:
            val_credit -= 1
            parts["val"].append(chunk)
        elif test_credit >= 1:
            test_credit -= 1
            parts["test"].append(chunk)
        else:
            parts["train"].append(chunk)
    return tuple(torch.cat(parts[name]) for name in ("train", "val", "test"))


@functools.cache
def load_corpus(spec: str, *, glob: str = "*") -> Corpus:
    """Load `pydoc`, `pystdlib`, or a file/folder path, split into train, validation and
    test. Loaded once per process (the split is deterministic)."""
    if spec == "pydoc":
        data = pydoc_bytes()
    elif spec == "pystdlib":
        data = pystdlib_bytes()
    elif spec.startswith("pystdlib:"):
        package = spec.removeprefix("pystdlib:")
        folder = Path(sysconfig.get_paths()["stdlib"]) / package
        if not package or not folder.is_dir():
            raise ConfigError(f"no standard-library folder {spec!r} on this machine")
        data = path_bytes(folder, glob)
    else:
        data = path_bytes(Path(spec).expanduser(), glob)
    if len(data) < 3:
        raise ConfigError(f"corpus is empty: {spec!r} ({len(data)} bytes)")
    train, val, test = split_bytes(data)
    return Corpus(name=spec, train=train, val=val, test=test)
