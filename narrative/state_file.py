"""The on-disk format of a saved conversation (``state_dir/sessions/*.ctx``).

Layout (little-endian), unchanged since the format was introduced::

    b"NARRCTX1" | u64 header length | header JSON | int32 tokens | state | checkpoint states

The header holds ``format`` (`STATE_FORMAT`), ``key``, the model
``fingerprint`` (`narrative.llm.LlamaModel.fingerprint`), ``n_tokens``,
``state_bytes``, ``checkpoints`` ([n_tokens, bytes] per checkpoint) and the
caller's ``meta``. ``state`` is llama.cpp's full sequence state
(``llama_state_seq_get_data_ext``); each checkpoint state its partial
(recurrent-only) state. Files are written with `narrative.files.atomic_write`
(temp file, fsync, rename), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

from narrative.files import atomic_write
from narrative.llm.errors import StateError

STATE_MAGIC = b"NARRCTX1"
STATE_FORMAT = 1


@dataclass
class StateFile:
    """The parts of a state file. ``checkpoints``: (n_tokens, partial state bytes), ascending."""

    header: dict
    tokens: list[int]
    state: bytes
    checkpoints: list[tuple[int, bytes]]


def state_file_name(key: str) -> str:
    """A file name for conversation `key` (any string): ``<sha256 prefix>.ctx``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".ctx"


def write_state_file(path: Path, header: dict, tokens: list[int], state: bytes, checkpoints: list[tuple[int, bytes]]) -> int:
    """Write a state file atomically; `header` gets ``format``, ``n_tokens``, ``state_bytes`` and
    ``checkpoints`` filled in. Returns the bytes written.

    Raises:
        OSError: the folder is not writable or the disk is full (the old file stays).
    """
    header = {
        "format": STATE_FORMAT,
        **header,
        "n_tokens": len(tokens),
        "state_bytes": len(state),
        "checkpoints": [[n, len(data)] for n, data in checkpoints],
    }
    hb = json.dumps(header).encode("utf-8")
    parts = [STATE_MAGIC, struct.pack("<Q", len(hb)), hb, array("i", tokens).tobytes(), state, *(data for _, data in checkpoints)]
    data = b"".join(parts)
    atomic_write(Path(path), data)
    return len(data)


def read_header(path: Path) -> dict:
    """The JSON header of a state file.

    Raises:
        StateError: `path` is not a state file (wrong magic, unreadable header).
        OSError: `path` cannot be read.
    """
    with Path(path).open("rb") as f:
        magic = f.read(8)
        if magic != STATE_MAGIC:
            raise StateError(f"{path}: not a narrative context state file (magic {magic!r})")
        raw = f.read(8)
        if len(raw) != 8:
            raise StateError(f"{path}: truncated state file header")
        (n,) = struct.unpack("<Q", raw)
        try:
            return json.loads(f.read(n))
        except ValueError as exc:
            raise StateError(f"{path}: unreadable state file header: {exc}") from None


def read_state_file(path: Path) -> StateFile:
    """Read a whole state file.

    Raises:
        StateError: not a state file, another format version, or truncated.
    """
    path = Path(path)
    header = read_header(path)
    if header.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: state format {header.get('format')} (this sidecar reads {STATE_FORMAT})")
    with path.open("rb") as f:
        f.seek(8)
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(16 + n)
        tok_bytes = f.read(4 * header["n_tokens"])
        state = f.read(header["state_bytes"])
        cks = [(nt, f.read(size)) for nt, size in header["checkpoints"]]
    if len(tok_bytes) != 4 * header["n_tokens"] or len(state) != header["state_bytes"] or any(
        len(data) != size for (_, data), (_, size) in zip(cks, header["checkpoints"])
    ):
        raise StateError(f"{path}: truncated state file")
    toks = array("i")
    toks.frombytes(tok_bytes)
    return StateFile(header, toks.tolist(), state, cks)
