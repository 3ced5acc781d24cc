"""Corpora and batches: the built-in corpus, user text and token files, determinism and clear errors."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import Multipliers, TrainConfig
from trainer.data import BUILTIN_STDLIB, DataError, DataSource, check_corpus, load_corpus, sample_batch
from trainer.train import _Run


def test_builtin_corpus_is_python_source_split_by_file_and_stable():
    corpus = load_corpus(BUILTIN_STDLIB)
    assert corpus.vocab_size == 256
    assert len(corpus.train) > 1_000_000 and len(corpus.val) > 50_000
    assert b"def " in corpus.train[:200_000].tobytes()
    # Every 20th file is held out: the validation share is near 5%, and no file is in both splits.
    assert 0.02 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.1
    assert load_corpus(BUILTIN_STDLIB).fingerprint == corpus.fingerprint


def window_starts(x: torch.Tensor, y: torch.Tensor, tokens: np.ndarray) -> list[int]:
    """Where each row of a batch drawn from ``tokens`` (consecutive integers) starts in them; asserts that every
    row is a window of ``tokens`` and its targets are the tokens that follow."""
    first, seq_len = int(tokens[0]), x.shape[1]
    starts = (x[:, 0] - first).tolist()
    for row, start in zip(x, starts, strict=True):
        assert 0 <= start <= len(tokens) - seq_len - 1
        assert torch.equal(row, torch.arange(first + start, first + start + seq_len))
    assert torch.equal(y, x + 1)
    return starts


_STARTS_IN_A_FRESH_PROCESS = """
import json, numpy as np
from trainer.data import sample_batch
print(json.dumps(sample_batch(np.arange(100_000), 4, 32, seed=7, step=3)[0][:, 0].tolist()))
"""


def test_batches_are_deterministic_in_seed_and_step():
    tokens = np.arange(100_000)
    batches = {(seed, step): sample_batch(tokens, 4, 32, seed, step) for seed in (7, 8) for step in range(20)}
    assert all(x.dtype == torch.int64 and x.shape == (4, 32) for x, _ in batches.values())
    starts = {key: window_starts(x, y, tokens) for key, (x, y) in batches.items()}
    assert len({tuple(s) for s in starts.values()}) == len(starts)  # each (seed, step) its own batch
    every_start = [start for s in starts.values() for start in s]  # random offsets, over the whole corpus
    assert min(every_start) < 10_000 and max(every_start) > 90_000

    np.random.seed(1)  # the global random state (a training seed sets it) plays no part
    torch.manual_seed(1)
    assert window_starts(*sample_batch(tokens, 4, 32, seed=7, step=3), tokens) == starts[(7, 3)]
    fresh = subprocess.run([sys.executable, "-c", _STARTS_IN_A_FRESH_PROCESS], capture_output=True, check=True)
    assert json.loads(fresh.stdout) == starts[(7, 3)]  # the same batch in another process, as on another worker


def eval_set_of_a_trial(data: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches the trainer evaluates a trial with that training seed on."""
    config = TrainConfig.model_validate(
        {
            "model": {"width": 16, "depth": 1, "head_dim": 16, "seq_len": 16, "vocab_size": 5000},
            "training": {"data": data, "val_fraction": 0.2, "batch_size": 2, "eval_batches": 3, "seed": seed},
        }
    )
    return _Run(config, Multipliers(), None).eval_set


def test_eval_batches_do_not_depend_on_the_training_seed(tmp_path):
    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "tokens.bin")
    data = f"tokens:{tmp_path / 'tokens.bin'}"
    val = np.arange(4000, 5000)  # the last fifth
    starts = [window_starts(x, y, val) for x, y in eval_set_of_a_trial(data, seed=0)]  # from the validation split
    assert len({tuple(s) for s in starts}) == 3  # three different batches
    for seed in (1, 2):  # whichever seed a trial trains with, it is evaluated on the same batches
        assert [window_starts(x, y, val) for x, y in eval_set_of_a_trial(data, seed)] == starts


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


def nanogpt_folder(path: Path, train: np.ndarray, val: np.ndarray) -> Path:
    """A folder as nanoGPT's prepare.py leaves it: train.bin and val.bin of uint16 token ids."""
    path.mkdir(exist_ok=True)
    train.astype(np.uint16).tofile(path / "train.bin")
    val.astype(np.uint16).tofile(path / "val.bin")
    return path


def test_a_tokens_folder_trains_on_its_train_bin_and_validates_on_its_val_bin(tmp_path):
    folder = nanogpt_folder(tmp_path / "owt", np.arange(4000), np.arange(4000, 5000))
    corpus = load_corpus(f"tokens:{folder}", vocab_size=5000, val_fraction=0.5)  # val_fraction plays no part
    assert isinstance(corpus.train, np.memmap) and isinstance(corpus.val, np.memmap)
    assert np.array_equal(corpus.train, np.arange(4000)) and np.array_equal(corpus.val, np.arange(4000, 5000))
    assert corpus.vocab_size == 5000
    assert load_corpus(f"tokens:{folder}:uint16", vocab_size=5000).fingerprint == corpus.fingerprint
    x, y = sample_batch(corpus.train, 4, 16, seed=0, step=0)
    assert int(x.max()) < 4000 and torch.equal(y, x + 1)
    check(f"tokens:{folder}", vocab_size=5000, seq_len=998)  # val.bin's 1,000 tokens hold one sequence of 998

    nanogpt_folder(folder, np.arange(4000), np.arange(3000, 4000))
    assert load_corpus(f"tokens:{folder}", vocab_size=5000).fingerprint != corpus.fingerprint  # val.bin counts
    val = np.arange(3000, 4000)  # a trial evaluates on val.bin
    assert len([window_starts(x, y, val) for x, y in eval_set_of_a_trial(f"tokens:{folder}", seed=0)]) == 3


@pytest.mark.parametrize(
    ("train", "val", "message"),
    [
        (np.zeros(100), None, "holds no val.bin"),
        (np.zeros(100), b"\x00\x00\x01", "has a val.bin that is not a whole number of uint16 values"),
        (np.zeros(100), np.zeros(9), r"has a val.bin that holds 9 tokens, and must hold more than seq_len \+ 1 = 9"),
        (np.zeros(100), np.r_[np.zeros(20), [300]], r"has a val.bin that holds token id 300 \(at index 20\)"),
        (b"", np.zeros(100), "has a train.bin that is empty"),
        (np.zeros(5), np.zeros(100), "has a train.bin that holds 5 tokens"),
    ],
)
def test_a_tokens_folder_is_checked_file_by_file_and_an_error_names_the_file(tmp_path, train, val, message):
    for name, content in (("train.bin", train), ("val.bin", val)):
        if isinstance(content, np.ndarray):
            content.astype(np.uint16).tofile(tmp_path / name)
        elif content is not None:
            _write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        check(f"tokens:{tmp_path}", seq_len=8)


def test_a_trial_on_a_tokens_folder_with_a_bad_val_bin_fails_naming_it(tmp_path):
    folder = nanogpt_folder(tmp_path / "owt", np.arange(1000) % 256, np.r_[np.zeros(100), [300]])
    with pytest.raises(DataError, match="beyond vocab_size 256"):
        load_corpus(f"tokens:{folder}")
    (folder / "val.bin").unlink()
    with pytest.raises(DataError, match=r"token file '.*/owt/val.bin' does not exist"):
        load_corpus(f"tokens:{folder}")


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


def check(source: str, *, vocab_size: int = 256, seq_len: int = 8, val_fraction: float = 0.1) -> None:
    check_corpus(DataSource.parse(source), vocab_size=vocab_size, seq_len=seq_len, val_fraction=val_fraction)


def test_the_submission_check_admits_exactly_the_corpora_a_trial_can_draw_batches_from(tmp_path):
    """``check_corpus`` runs at submission; it must refuse what would fail in every trial, and nothing else."""
    for size in range(80, 140):
        path = _write(tmp_path / f"{size}.txt", bytes(range(size)))
        try:
            corpus = load_corpus(f"text:{path}", val_fraction=0.1)
            sample_batch(corpus.train, 1, 8, seed=0, step=0)
            sample_batch(corpus.val, 1, 8, seed=0, step=0)
            trainable = True
        except DataError:
            trainable = False
        try:
            check(f"text:{path}")
            admitted = True
        except DataError:
            admitted = False
        assert admitted == trainable, size


def test_token_ids_beyond_the_vocabulary_are_found_wherever_they_are(tmp_path):
    ids = np.zeros(50_000, dtype=np.uint32)
    check(f"tokens:{_write(tmp_path / 'ok.bin', ids.tobytes())}:uint32", vocab_size=2)
    ids[-1] = 70_000
    with pytest.raises(DataError, match=r"holds token id 70000 \(at index 49,999\), beyond vocab_size 65536"):
        check(f"tokens:{_write(tmp_path / 'big.bin', ids.tobytes())}:uint32", vocab_size=65_536)


def test_a_pipe_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it to read would wait for a writer forever
    with pytest.raises(DataError, match="is not a regular file"):
        check(f"tokens:{tmp_path / 'pipe'}")


_CHECK = """
import sys
from trainer.data import DataError, DataSource, check_corpus
try:
    check_corpus(DataSource.parse(sys.argv[1]), vocab_size=256, seq_len=8, val_fraction=0.1)
except DataError as exc:
    print(exc)
"""
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def _without_root_file_access() -> None:
    """In a child before it runs Python: drop the capabilities that let root read any file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_file_the_server_cannot_read_is_refused(tmp_path):
    secret = _write(tmp_path / "secret.txt", b"x" * 1000)
    secret.chmod(0o000)
    result = subprocess.run(  # a process of its own, so that root (as in containers) checks it as others would
        [sys.executable, "-c", _CHECK, f"text:{secret}"],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "cannot be read (Permission denied)"
