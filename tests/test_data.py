"""Corpora and batches: the built-in corpus, user text and token files, determinism and clear errors."""

import numpy as np
import pytest
import torch

from trainer.data import BUILTIN_STDLIB, DataError, eval_batches, load_corpus, sample_batch


def test_builtin_corpus_is_python_source_split_by_file_and_stable():
    corpus = load_corpus(BUILTIN_STDLIB)
    assert corpus.vocab_size == 256
    assert len(corpus.train) > 1_000_000 and len(corpus.val) > 50_000
    assert b"def " in corpus.train[:200_000].tobytes()
    # Every 20th file is held out: the validation share is near 5%, and no file is in both splits.
    assert 0.02 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.1
    assert load_corpus(BUILTIN_STDLIB).fingerprint == corpus.fingerprint


def test_batches_are_deterministic_in_seed_and_step():
    tokens = load_corpus(BUILTIN_STDLIB).train
    x1, y1 = sample_batch(tokens, 4, 32, seed=7, step=3)
    x2, y2 = sample_batch(tokens, 4, 32, seed=7, step=3)
    x3, _ = sample_batch(tokens, 4, 32, seed=8, step=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.dtype == torch.int64 and x1.shape == (4, 32)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one


def test_eval_batches_do_not_depend_on_the_training_seed():
    corpus = load_corpus(BUILTIN_STDLIB)
    a, b = eval_batches(corpus, 2, 16, 3), eval_batches(corpus, 2, 16, 3)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


def test_text_files_and_directories_load_as_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file " * 100)
    single = load_corpus(f"text:{tmp_path / 'a.txt'}", val_fraction=0.1)
    assert single.train[:5].tobytes() == b"hello"
    assert len(single.val) == 120
    both = load_corpus(f"text:{tmp_path}")
    assert len(both.train) + len(both.val) == 1200 + 1200


@pytest.mark.parametrize(("dtype", "suffix"), [(np.uint16, ""), (np.uint16, ":uint16"), (np.uint32, ":uint32")])
def test_token_files_are_memory_mapped(tmp_path, dtype, suffix):
    path = tmp_path / "tokens.bin"
    np.arange(5000, dtype=dtype).tofile(path)
    corpus = load_corpus(f"tokens:{path}{suffix}", vocab_size=5000, val_fraction=0.1)
    assert isinstance(corpus.train, np.memmap)
    assert corpus.vocab_size == 5000
    assert corpus.val[0] == 4500
    x, y = sample_batch(corpus.train, 2, 8, seed=0, step=0)
    assert torch.equal(y, x + 1)


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda p: "s3://bucket", "unknown data source"),
        (lambda p: f"text:{p / 'missing.txt'}", "does not exist"),
        (lambda p: f"tokens:{p / 'missing.bin'}", "does not exist"),
        (lambda p: f"tokens:{_write(p / 'odd.bin', b'abc')}", "whole number"),
        (lambda p: f"tokens:{_write(p / 'big.bin', np.arange(300, dtype=np.uint16).tobytes())}", "beyond vocab_size"),
        (lambda p: f"text:{_write(p / 'tiny.txt', b'ab')}", "too small"),
    ],
)
def test_unusable_corpora_raise_a_clear_error(tmp_path, make_source, message):
    with pytest.raises(DataError, match=message):
        load_corpus(make_source(tmp_path))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
