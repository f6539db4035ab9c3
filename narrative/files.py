"""File helpers shared by every writer of the generation side: crash-safe writes and model file digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HEAD_TAIL_BYTES = 16 << 20
"""Bytes hashed at each end of a model file by `head_tail_sha256`."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a mix.

    Temp file in the same folder (``.<name>.<pid>.tmp``) -> write -> fsync ->
    ``os.replace`` (atomic on POSIX and Windows) -> fsync the folder where the
    platform allows it (POSIX; Windows has no directory fsync and needs none
    for ``MoveFileEx``-based replace).

    Raises:
        OSError: the folder is not writable or the disk is full (the temp file
            is removed and the old file is left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files left in `folder` by a killed `atomic_write` (``.<name>.<pid>.tmp``); returns how many."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def head_tail_sha256(path: Path, salt: bytes = b"") -> str:
    """SHA-256 of `salt`, then the first and last `HEAD_TAIL_BYTES` of `path` (hex).

    The identity of a GGUF file without reading all of it: hashing a 20 GB
    production model would take minutes per build; the head holds the
    metadata and tensor directory and the tail the last tensors, so
    re-quantizing, re-converting or swapping a file changes it.

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(salt)
    with path.open("rb") as f:
        h.update(f.read(HEAD_TAIL_BYTES))
        if size > HEAD_TAIL_BYTES:
            f.seek(max(HEAD_TAIL_BYTES, size - HEAD_TAIL_BYTES))
            h.update(f.read(HEAD_TAIL_BYTES))
    return h.hexdigest()
