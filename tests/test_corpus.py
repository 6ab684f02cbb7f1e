import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.corpus import (
    PYSTDLIB_MAX_BYTES,
    SPLIT_CHUNK_BYTES,
    load_corpus,
    pydoc_bytes,
    split_bytes,
)
from lrpilot.lm.trainer import Trainer, TrainerConfig


def test_pydoc_is_english_text_in_a_deterministic_split():
    a, b = load_corpus("pydoc"), load_corpus("pydoc")
    assert a.train.dtype == torch.uint8
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.num_bytes == len(pydoc_bytes()) > 300_000
    assert 0.05 < a.val.numel() / a.num_bytes < 0.15
    assert b"the" in bytes(a.train[:10_000].tolist())


def test_split_interleaves_chunks_and_keeps_every_byte():
    data = bytes(range(256)) * (SPLIT_CHUNK_BYTES // 256) * 20  # 20 chunks
    train, val = split_bytes(data, 0.1)
    assert train.numel() + val.numel() == len(data)
    assert val.numel() == 2 * SPLIT_CHUNK_BYTES  # chunks 9 and 19


def test_pystdlib_is_python_source_under_its_cap():
    corpus = load_corpus("pystdlib")
    assert corpus.num_bytes <= PYSTDLIB_MAX_BYTES
    text = bytes(corpus.train[:200_000].tolist())
    assert b"def " in text and b"import " in text


def test_user_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second " * 100)
    (tmp_path / "a.txt").write_bytes(b"first " * 100)
    (tmp_path / "skip.bin").write_bytes(b"\x00" * 50)
    one = load_corpus(str(tmp_path / "a.txt"))
    assert one.num_bytes == 600
    folder = load_corpus(str(tmp_path), glob="*.txt")
    joined = bytes(torch.cat([folder.train, folder.val]).tolist())
    assert folder.num_bytes == 600 + 1 + 700
    assert joined.startswith(b"first")  # sorted order, .bin excluded
    assert b"\x00" not in joined


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist: .*nope"):
        load_corpus(str(tmp_path / "nope"))


def test_empty_corpus_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ConfigError, match="corpus is empty"):
        load_corpus(str(tmp_path / "empty.txt"))


def test_corpus_shorter_than_one_block_is_refused(tmp_path, micro_config):
    (tmp_path / "short.txt").write_bytes(b"abcdefghij" * 5)
    corpus = load_corpus(str(tmp_path / "short.txt"))
    with pytest.raises(ConfigError, match="shorter than one block"):
        Trainer(corpus, micro_config)
    with pytest.raises(ConfigError, match="val_windows"):
        TrainerConfig(val_windows=0)
