"""Training corpora and deterministic batches.

Sources, named by a string so that a search spec can carry them:

- ``builtin:python-stdlib``: the bytes of the running Python's standard-library ``.py`` files (vocab 256),
  in sorted path order; every 20th file is validation. Present on every machine, no download.
- ``text:PATH``: the bytes of a text file, or of every file under a directory in sorted order (vocab 256).
- ``tokens:PATH[:uint16|uint32]``: flat binary token ids, memory-mapped (default uint16). PATH is a file, or a
  folder holding ``train.bin`` and ``val.bin``, the two files nanoGPT's ``prepare.py`` scripts write (uint16):
  ``tokens:data/openwebtext`` trains on ``data/openwebtext/train.bin`` and validates on its ``val.bin``.

A single file or text corpus holds out its last ``val_fraction`` of tokens for validation; a ``tokens:`` folder's
``val.bin`` is its validation split, so ``val_fraction`` does not apply to it.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

BUILTIN_STDLIB = "builtin:python-stdlib"
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
TOKEN_SPLITS = ("train.bin", "val.bin")  # a tokens: folder's files, as nanoGPT names them
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
_STDLIB_VAL_EVERY = 20
EVAL_SEED = 2**31 - 1


class DataError(ValueError):
    """A corpus that cannot be loaded, with a message fit for the user."""


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    fingerprint: str  # identifies the exact bytes, so results can say what they were trained on


def load_corpus(source: str, *, vocab_size: int = 256, val_fraction: float = 0.05) -> Corpus:
    """Load a corpus by name; token ids are checked against ``vocab_size``."""
    parsed = DataSource.parse(source)
    if parsed.kind == "builtin":
        corpus = _python_stdlib()
    elif parsed.kind == "text":
        corpus = _split_tail(_read_text(parsed.path), 256, val_fraction)
    elif parsed.path.is_dir():
        corpus = _token_splits(*(_map_tokens(parsed.path / name, parsed.token_dtype) for name in TOKEN_SPLITS))
    else:
        corpus = _split_tail(_map_tokens(parsed.path, parsed.token_dtype), None, val_fraction)
    if corpus.vocab_size > vocab_size:
        raise DataError(
            f"data {source!r} holds token ids up to {corpus.vocab_size - 1}, beyond vocab_size {vocab_size}"
        )
    return corpus


@dataclass(frozen=True)
class DataSource:
    """A data source name, parsed: what it reads and how. ``str()`` writes it back as a spec would."""

    kind: Literal["builtin", "text", "tokens"]
    path: Path | None = None  # None for the built-in corpus
    dtype: str | None = None  # tokens only, as written (uint16 or uint32); None: the default, uint16

    @classmethod
    def parse(cls, source: str) -> DataSource:
        """Raises ``DataError`` for a source that names none of the known kinds."""
        kind, _, rest = source.partition(":")
        if source == BUILTIN_STDLIB:
            return cls("builtin")
        if kind == "text" and rest:
            return cls("text", Path(rest))
        if kind == "tokens" and rest:
            path, _, dtype = rest.rpartition(":")
            if dtype in TOKEN_DTYPES and path:
                return cls("tokens", Path(path), dtype)
            return cls("tokens", Path(rest))
        raise DataError(
            f"unknown data source {source!r}: use {BUILTIN_STDLIB}, text:PATH or tokens:PATH[:uint16|uint32]"
        )

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(TOKEN_DTYPES[self.dtype or "uint16"])

    def at(self, path: Path) -> DataSource:
        """The same source reading ``path`` instead (e.g. the path resolved)."""
        return replace(self, path=path)

    def __str__(self) -> str:
        if self.kind == "builtin":
            return BUILTIN_STDLIB
        return f"{self.kind}:{self.path}" + (f":{self.dtype}" if self.dtype else "")


def check_corpus(
    source: DataSource, *, vocab_size: int, seq_len: int, val_fraction: float, scan_seconds: float = 10.0
) -> None:
    """Raise ``DataError`` if training on ``source`` would fail for its data: it does not exist or cannot be
    read, a split is too short for one sequence, or it holds token ids of ``vocab_size`` or more. Token ids are
    scanned for ``scan_seconds`` at most per file (a vectorised pass over the memory map; a trial checks the
    rest). The message leaves out the path, so that the caller says it as its user wrote it; of a ``tokens:``
    folder, it names the file (``train.bin`` or ``val.bin``)."""
    if source.kind != "tokens" and vocab_size < 256:
        raise DataError(f"holds bytes up to 255, beyond vocab_size {vocab_size} (byte-level data needs 256)")
    if source.kind == "tokens" and _is_folder(source.path):
        for name in TOKEN_SPLITS:
            _check_token_split(source.path / name, source.token_dtype, vocab_size, seq_len, scan_seconds)
        return
    if source.kind == "builtin":
        train, val = _python_stdlib_sizes()
    else:
        files = _readable_files(source.path) if source.kind == "text" else [_readable_file(source.path)]
        dtype = source.token_dtype if source.kind == "tokens" else np.dtype(np.uint8)
        tokens = _count(files, dtype)
        val = int(tokens * val_fraction)
        train = tokens - val
    if min(train, val) <= seq_len + 1:
        raise DataError(
            f"is too short: its splits hold {train:,} and {val:,} tokens (val_fraction {val_fraction}), and each "
            f"must hold more than seq_len + 1 = {seq_len + 1}"
        )
    if source.kind == "tokens":
        _check_token_ids(np.memmap(source.path, dtype=source.token_dtype, mode="r"), vocab_size, scan_seconds)


def _check_token_split(path: Path, dtype: np.dtype, vocab_size: int, seq_len: int, scan_seconds: float) -> None:
    """``check_corpus`` of one file of a ``tokens:`` folder, its message naming the file."""
    name = path.name
    if not _exists(path):
        raise DataError(f"holds no {name} (a tokens: folder holds nanoGPT's {' and '.join(TOKEN_SPLITS)})")
    try:
        tokens = _count([_readable_file(path)], dtype)
        if tokens <= seq_len + 1:
            raise DataError(f"holds {tokens:,} tokens, and must hold more than seq_len + 1 = {seq_len + 1}")
        _check_token_ids(np.memmap(path, dtype=dtype, mode="r"), vocab_size, scan_seconds)
    except DataError as exc:
        raise DataError(f"has a {name} that {exc}") from None


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})") from None


def _count(files: list[Path], dtype: np.dtype) -> int:
    """How many ``dtype`` values ``files`` hold together; raises ``DataError`` for none or a part of one."""
    size = sum(f.stat().st_size for f in files)
    if size == 0:
        raise DataError("is empty")
    if size % dtype.itemsize:
        raise DataError(f"is not a whole number of {dtype.name} values")
    return size // dtype.itemsize


def _readable_file(path: Path) -> Path:
    """``path`` if it is a regular file this process can open (a pipe or a device would block or never end)."""
    try:
        if not path.is_file():
            raise DataError("does not exist" if not path.exists() else "is not a regular file")
        with path.open("rb"):
            return path
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})") from None


def _readable_files(path: Path) -> list[Path]:
    """The files a ``text:`` source reads: ``path`` itself, or every file under the directory ``path``."""
    try:
        if path.is_dir():
            return [_readable_file(p) for p in sorted(path.rglob("*")) if p.is_file()]
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})") from None
    return [_readable_file(path)]


def _check_token_ids(tokens: np.ndarray, vocab_size: int, scan_seconds: float) -> None:
    deadline = time.monotonic() + scan_seconds
    chunk = 1 << 24
    for start in range(0, len(tokens), chunk):
        block = tokens[start : start + chunk]
        if int(block.max()) >= vocab_size:
            at = start + int(np.argmax(block >= vocab_size))
            raise DataError(f"holds token id {int(tokens[at])} (at index {at:,}), beyond vocab_size {vocab_size}")
        if time.monotonic() > deadline:
            return


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _STDLIB_SKIP_DIRS)
        files.extend(Path(directory, n) for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@lru_cache(maxsize=1)
def _python_stdlib_sizes() -> tuple[int, int]:
    """The built-in corpus's train and validation lengths, from the files' sizes (without reading them)."""
    sizes = [(i % _STDLIB_VAL_EVERY == 0, path.stat().st_size) for i, path in enumerate(_stdlib_files())]
    val = sum(size for is_val, size in sizes if is_val)
    return sum(size for _, size in sizes) - val, val


@lru_cache(maxsize=1)
def _python_stdlib() -> Corpus:
    train, val = bytearray(), bytearray()
    for i, path in enumerate(_stdlib_files()):
        (val if i % _STDLIB_VAL_EVERY == 0 else train).extend(path.read_bytes())
    return Corpus(
        train=np.frombuffer(bytes(train), dtype=np.uint8),
        val=np.frombuffer(bytes(val), dtype=np.uint8),
        vocab_size=256,
        fingerprint=_fingerprint(bytes(train) + bytes(val)),
    )


def _read_text(path: Path) -> np.ndarray:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        data = b"".join(p.read_bytes() for p in files)
    elif path.is_file():
        data = path.read_bytes()
    else:
        raise DataError(f"text corpus {str(path)!r} does not exist")
    return np.frombuffer(data, dtype=np.uint8)


def _map_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"token file {str(path)!r} does not exist")
    if path.stat().st_size % dtype.itemsize:
        raise DataError(f"token file {str(path)!r} is not a whole number of {dtype.name} values")
    if path.stat().st_size == 0:
        raise DataError(f"token file {str(path)!r} is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def _split_tail(tokens: np.ndarray, vocab_size: int | None, val_fraction: float) -> Corpus:
    n_val = int(len(tokens) * val_fraction)
    if len(tokens) < 2 or n_val < 2 or len(tokens) - n_val < 2:
        raise DataError(f"corpus of {len(tokens)} tokens is too small to split with val_fraction {val_fraction}")
    head = np.asarray(tokens[: 1 << 20])
    fingerprint = _fingerprint(head.tobytes() + str(len(tokens)).encode())
    return Corpus(
        train=tokens[:-n_val],
        val=tokens[-n_val:],
        vocab_size=vocab_size if vocab_size is not None else int(tokens.max()) + 1,
        fingerprint=fingerprint,
    )


def _token_splits(train: np.ndarray, val: np.ndarray) -> Corpus:
    """A corpus of a ``tokens:`` folder: ``train.bin`` and ``val.bin`` as they are."""
    identity = b"".join(np.asarray(t[: 1 << 20]).tobytes() + str(len(t)).encode() for t in (train, val))
    return Corpus(
        train=train,
        val=val,
        vocab_size=max(int(train.max()), int(val.max())) + 1,
        fingerprint=_fingerprint(identity),
    )


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def sample_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets at random offsets; the same (seed, step) always gives the same batch."""
    if len(tokens) <= seq_len + 1:
        raise DataError(f"corpus split of {len(tokens)} tokens is shorter than seq_len {seq_len} + 1")
    rng = np.random.default_rng((seed, step))
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    window = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    window = torch.from_numpy(window)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def eval_batches(corpus: Corpus, batch_size: int, seq_len: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of validation batches, the same whatever the training seed, so losses compare across trials."""
    return [sample_batch(corpus.val, batch_size, seq_len, seed=EVAL_SEED, step=i) for i in range(count)]
