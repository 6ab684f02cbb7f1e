import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.byte_gpt import ByteGPTRun, ByteGPTWorkload
from lrpilot.lm.corpus import (
    PYSTDLIB_MAX_BYTES,
    SPLIT_CHUNK_BYTES,
    load_corpus,
    pydoc_bytes,
    split_bytes,
)


def test_pydoc_is_english_text_in_a_deterministic_split():
    a, b = load_corpus("pydoc"), load_corpus("pydoc")
    assert a.train.dtype == torch.uint8
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert torch.equal(a.test, b.test)
    assert a.num_bytes == len(pydoc_bytes()) > 300_000
    assert 0.05 < a.val.numel() / a.num_bytes < 0.15
    assert 0.12 < a.test.numel() / a.num_bytes < 0.2
    assert a.test.numel() > 65_536 + 16  # the test loss scores 65,536 predicted bytes
    assert b"the" in bytes(a.train[:10_000].tolist())


def test_split_deals_out_chunks_and_keeps_every_byte():
    chunks = [bytes([i]) * SPLIT_CHUNK_BYTES for i in range(100)]  # chunk i: byte i
    train, val, test = split_bytes(b"".join(chunks), 0.1, 0.15)
    assert train.numel() + val.numel() + test.numel() == 100 * SPLIT_CHUNK_BYTES
    assert (val.numel(), test.numel()) == (10 * SPLIT_CHUNK_BYTES, 15 * SPLIT_CHUNK_BYTES)
    val_chunks = sorted(set(val.tolist()))
    test_chunks = sorted(set(test.tolist()))
    assert not set(val_chunks) & set(test_chunks) & set(train.tolist())
    assert val_chunks[0] < 10 and val_chunks[-1] >= 90  # spread over the whole corpus
    assert test_chunks[0] < 10 and test_chunks[-1] >= 90
    with pytest.raises(ConfigError, match="val_fraction and test_fraction"):
        split_bytes(b"abc" * 100, 0.5, 0.5)


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
    joined = bytes(torch.cat([folder.train, folder.val, folder.test]).tolist())
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


def test_corpus_shorter_than_one_block_is_refused(tmp_path, micro_workload):
    (tmp_path / "short.txt").write_bytes(b"abcdefghij" * 5)
    corpus = load_corpus(str(tmp_path / "short.txt"))
    with pytest.raises(ConfigError, match="shorter than one block"):
        ByteGPTRun(corpus, micro_workload)
    with pytest.raises(ConfigError, match="val_windows"):
        ByteGPTWorkload(val_windows=0)
