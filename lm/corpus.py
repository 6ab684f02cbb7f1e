"""Byte-level corpora: built-in text that ships with Python, or the user's own files.

Every corpus is a sequence of bytes (vocabulary 256), so a policy trained on one
corpus runs on any other without a vocabulary mismatch.

Built-in corpora (no download):

- ``pydoc``: the English documentation text of ``pydoc_data.topics``, topics in
  sorted order (about 0.5 MB).
- ``pystdlib``: the standard library's ``.py`` sources in sorted path order, never
  site-packages, capped at ``PYSTDLIB_MAX_BYTES``.
"""

from __future__ import annotations

import functools
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from lrpilot.errors import ConfigError

BUILTIN_CORPORA = ("pydoc", "pystdlib")
PYSTDLIB_MAX_BYTES = 4_000_000
VOCAB_SIZE = 256

# Train/validation split: the text is cut into chunks of SPLIT_CHUNK_BYTES and every
# `round(1 / val_fraction)`-th chunk goes to validation, so both halves cover the whole
# corpus (a tail split of sorted topics would validate on one letter of the alphabet).
SPLIT_CHUNK_BYTES = 16_384


@dataclass(frozen=True)
class Corpus:
    """A named corpus split into train and validation bytes (uint8 tensors)."""

    name: str
    train: torch.Tensor  # (n_train,) uint8
    val: torch.Tensor  # (n_val,) uint8

    @property
    def num_bytes(self) -> int:
        return self.train.numel() + self.val.numel()


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
    """A file's bytes, or the files under a folder (recursive, sorted, matching `glob`)."""
    if not path.exists():
        raise ConfigError(
            f"corpus path does not exist: {str(path)!r} "
            f"(built-in corpora: {', '.join(BUILTIN_CORPORA)})"
        )
    if path.is_file():
        return path.read_bytes()
    files = sorted(p for p in path.rglob(glob) if p.is_file())
    return b"\n".join(p.read_bytes() for p in files)


def split_bytes(data: bytes, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic interleaved train/validation split (see SPLIT_CHUNK_BYTES)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    every = max(2, round(1.0 / val_fraction))
    all_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    chunks = torch.split(all_bytes, SPLIT_CHUNK_BYTES)
    if len(chunks) < every:
        # Too short to interleave chunks: keep the tail for validation.
        n_val = max(1, int(len(data) * val_fraction))
        return all_bytes[:-n_val].clone(), all_bytes[-n_val:].clone()
    train = [c for i, c in enumerate(chunks) if i % every != every - 1]
    val = [c for i, c in enumerate(chunks) if i % every == every - 1]
    return torch.cat(train), torch.cat(val)


def load_corpus(spec: str, *, val_fraction: float = 0.1, glob: str = "*") -> Corpus:
    """Load `pydoc`, `pystdlib`, or a file/folder path, split for training and validation."""
    if spec == "pydoc":
        data = pydoc_bytes()
    elif spec == "pystdlib":
        data = pystdlib_bytes()
    else:
        data = path_bytes(Path(spec).expanduser(), glob)
    if len(data) < 2:
        raise ConfigError(f"corpus is empty: {spec!r} ({len(data)} bytes)")
    train, val = split_bytes(data, val_fraction)
    return Corpus(name=spec, train=train, val=val)
