"""The context engine: per-conversation token histories, KV cache reuse and
recurrent-state checkpoints, so a dialogue turn decodes only its new tokens.

Why it exists. Qwen3.5 models (llama.cpp archs ``qwen35`` / ``qwen35moe``) are
hybrids: 3 of every 4 layers are Gated DeltaNet, whose recurrent state holds
the whole past in a fixed-size tensor and cannot be trimmed back to an earlier
position; only the 1-in-4 full-attention layers keep a KV cache that can.
llama-cpp-python's ``Llama.generate`` therefore reuses its cache on these models
only when the new prompt strictly extends the evaluated tokens, and forgets
everything as soon as another prompt (another NPC, a regenerated reply,
different per-turn lore) is decoded in between.

What it does, per conversation (a ``key``), on one llama.cpp context:

- **Tokens, not strings.** The caller passes the prompt as token ids; the
  engine keeps the ids whose effect is in the model's memory (prompt + the
  generated tokens it decoded) and, on the next call, decodes only the part of
  the new prompt past the longest common prefix.
- **Checkpoints at block boundaries.** The caller names block boundaries
  (end of the stable prefix, end of the history before this turn). On a hybrid
  model the engine splits the prompt decode there and saves the recurrent state
  with ``llama_state_seq_get_data_ext(..., LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)``
  (the DeltaNet/conv states only: a constant size, e.g. ~115 KiB on the tiny
  test fixture, ~150 MiB on Qwen3.5-27B (see `narrative.presets`), whatever the
  context length). A branch resumes from the nearest checkpoint at or before the
  divergence: load that partial state, trim the KV cache past it with
  ``llama_memory_seq_rm``, decode the rest. This is llama-server's own method
  (``tools/server/server-context.cpp``: ``create_checkpoint``, the
  ``ctx_checkpoints`` restore before ``memory_seq_rm``); llama.cpp's built-in
  rollback window (``n_rs_seq``) is not used (it gave wrong states on the
  fixtures: ../shared/notes/qwen35-fixtures.md). A plain transformer (SmolLM2)
  needs no checkpoint: the KV cache is trimmed at the divergence point.
- **Several NPCs at once.** Conversations live in llama.cpp sequences of one
  context (``n_seq_max`` of them, each with its own ``n_ctx / n_seq_max`` KV
  cells): switching NPC A -> B -> A costs nothing, A's sequence is untouched.
  When all sequences are taken, the least recently used conversation is
  snapshotted (full sequence state: KV cells + recurrent state) into a RAM store
  bounded in MiB (LRU) and its sequence reused; coming back loads the snapshot
  instead of re-decoding. Why sequences first and snapshots second: a sequence
  switch is free while a snapshot copies the conversation's whole KV cache (GiBs
  at 100k+ tokens on a 27B). Why split caches and not one unified pool: with a
  unified pool the logits of one conversation change with what the others hold
  (see `narrative.llm._load_llama`). A new conversation whose prompt starts
  with another one's checkpointed prefix (two players at one NPC) starts from a
  copy of it instead of token 0.
- **Sessions persist.** `save` writes tokens, checkpoints and the full sequence
  state to a file (format: `narrative.state_file`) with a fingerprint of the
  model and context settings; `load` refuses a file made with another model or
  settings (`StateMismatch`) and otherwise restores it without decoding anything.

Not thread-safe: callers serialize access (hold ``model.lock``).
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from narrative.llm import ContextOverflow, Generation, KvCacheFull, LlamaModel, ModelError, SamplingParams, StateError
from narrative.settings import ContextSettings
from narrative.state_file import STATE_FORMAT, read_header, read_state_file, state_file_name, write_state_file

log = logging.getLogger(__name__)


class StateMismatch(ModelError):
    """A saved conversation state was made with another model or other context
    settings (the fingerprints differ); it is refused, not loaded."""


@dataclass
class Checkpoint:
    """The recurrent state after the first ``n_tokens`` tokens of a conversation.

    ``data``: bytes from ``llama_state_seq_get_data_ext`` with
    ``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY`` (empty on models without recurrent state).
    """

    n_tokens: int
    data: bytes


@dataclass
class _Conv:
    key: str
    tokens: list[int] = field(default_factory=list)  # ids whose effect is in memory, in order
    checkpoints: list[Checkpoint] = field(default_factory=list)  # ascending n_tokens
    seq: int | None = None  # llama.cpp sequence id while hot
    snapshot: bytes | None = None  # full sequence state while cold (RAM store)
    last_used: int = 0


@dataclass
class EngineStats:
    """Counters since the engine started (tokens)."""

    prompt_tokens: int = 0  # prompt tokens asked for
    evaluated_tokens: int = 0  # prompt tokens actually decoded
    restored_checkpoints: int = 0
    trimmed: int = 0  # KV-only rollbacks (no checkpoint needed)
    shared_prefixes: int = 0  # conversations started from another one's prefix
    snapshots_saved: int = 0
    snapshots_loaded: int = 0
    full_reevaluations: int = 0  # divergences with no usable checkpoint (re-decoded from token 0)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: histories are long and mostly equal
    step = 1024
    while i + step <= n and list(a[i : i + step]) == list(b[i : i + step]):
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContextEngine:
    """Token-level prompt caching for many conversations on one `LlamaModel`.

    Args:
        model: the model; the engine uses its sequences ``0..n_seq_max-1``.
        settings: checkpoint count and RAM store size.
    """

    def __init__(self, model: LlamaModel, settings: ContextSettings | None = None) -> None:
        self.model = model
        self.settings = settings or ContextSettings()
        self.convs: dict[str, _Conv] = {}
        self.stats = EngineStats()
        self.last_evaluated = 0  # prompt tokens decoded by the last `generate`
        self._clock = 0
        self._slots: dict[int, str] = {}  # seq id -> conversation key

    # ---- bookkeeping -----------------------------------------------------

    def _touch(self, conv: _Conv) -> None:
        self._clock += 1
        conv.last_used = self._clock

    def _ram_used(self) -> int:
        return sum(len(c.snapshot) for c in self.convs.values() if c.snapshot is not None)

    def ram_bytes(self) -> int:
        """Bytes held in RAM: snapshots of cold conversations + checkpoints of all."""
        return self._ram_used() + sum(len(k.data) for c in self.convs.values() for k in c.checkpoints)

    def _check_foreign(self) -> None:
        """Invalidate every hot conversation when something else used the model's sequences:
        ``Llama``'s own API (it clears them all) or another `ContextEngine` on the same model."""
        m = self.model
        foreign = m.take_foreign_use()
        if getattr(m, "memory_owner", None) is not self:
            foreign = foreign or getattr(m, "memory_owner", None) is not None
            m.memory_owner = self
        if foreign:
            log.warning("the model's context was used outside this context engine: its cached conversations are re-decoded")
            for conv in self.convs.values():
                if conv.seq is not None:
                    conv.seq = None
                    conv.tokens = []
                    conv.checkpoints = []
            self._slots.clear()
            for s in range(self.model.n_seq_max):
                self.model.seq_clear(s)

    def _evict(self, conv: _Conv) -> None:
        """Move a hot conversation out of its sequence: snapshot it into the RAM store if it fits."""
        assert conv.seq is not None
        seq = conv.seq
        budget = self.settings.ram_mib << 20
        if conv.tokens and budget:
            data = self.model.state_get(seq, partial=False)
            if len(data) <= budget:
                while self._ram_used() + len(data) > budget:
                    victim = min((c for c in self.convs.values() if c.snapshot is not None), key=lambda c: c.last_used)
                    log.info("RAM store full: dropping the snapshot of %s (%d bytes)", victim.key, len(victim.snapshot or b""))
                    self._drop(victim)
                conv.snapshot = data
                self.stats.snapshots_saved += 1
            else:
                log.info("snapshot of %s (%d MiB) exceeds the RAM store (%d MiB): dropped", conv.key, len(data) >> 20, self.settings.ram_mib)
        if conv.snapshot is None:
            self._drop(conv)
        self.model.seq_clear(seq)
        del self._slots[seq]
        conv.seq = None

    def _drop(self, conv: _Conv) -> None:
        conv.snapshot = None
        conv.tokens = []
        conv.checkpoints = []

    def _free_seq(self, keep: str) -> int:
        for s in range(self.model.n_seq_max):
            if s not in self._slots:
                return s
        victim = min((self.convs[k] for k in self._slots.values() if k != keep), key=lambda c: c.last_used)
        seq = victim.seq
        assert seq is not None
        self._evict(victim)
        return seq

    def _make_hot(self, conv: _Conv) -> None:
        if conv.seq is not None:
            return
        seq = self._free_seq(conv.key)
        self._slots[seq] = conv.key
        conv.seq = seq
        self.model.seq_clear(seq)
        if conv.snapshot is not None:
            data, conv.snapshot = conv.snapshot, None
            try:
                self.model.state_set(seq, data, partial=False)
                self.stats.snapshots_loaded += 1
            except StateError:
                log.warning("snapshot of %s rejected by llama.cpp: re-decoding it", conv.key)
                self.model.seq_clear(seq)
                self._drop(conv)

    def _share_prefix(self, conv: _Conv, prompt: Sequence[int]) -> None:
        """Start an empty conversation from another hot one's checkpoint on the same prompt prefix.

        Each sequence has its own KV cells (see `narrative.llm._load_llama`), so the
        donor's full sequence state is copied (``llama_state_seq_get/set_data``), then
        its recurrent state is replaced by the checkpoint's and its KV trimmed to it.
        """
        best: tuple[int, _Conv, Checkpoint] | None = None
        for k in self._slots.values():
            other = self.convs[k]
            if other is conv:
                continue
            for ck in reversed(other.checkpoints):
                if ck.n_tokens >= len(prompt) or (best and ck.n_tokens <= best[0]):
                    continue
                if ck.n_tokens <= len(other.tokens) and other.tokens[: ck.n_tokens] == list(prompt[: ck.n_tokens]):
                    best = (ck.n_tokens, other, ck)
                    break
        if best is None:
            return
        n, other, ck = best
        m = self.model
        assert conv.seq is not None and other.seq is not None
        m.state_set(conv.seq, m.state_get(other.seq, partial=False), partial=False)
        if m.has_recurrent_state:
            m.state_set(conv.seq, ck.data, partial=True)
        if not m.seq_rm(conv.seq, n, -1) or m.seq_pos_max(conv.seq) != n - 1:
            log.warning("sharing the prefix of %s failed (pos_max %d, want %d)", other.key, m.seq_pos_max(conv.seq), n - 1)
            m.seq_clear(conv.seq)
            return
        conv.tokens = list(prompt[:n])
        conv.checkpoints = [Checkpoint(c.n_tokens, c.data) for c in other.checkpoints if c.n_tokens <= n]
        self.stats.shared_prefixes += 1

    def _rewind(self, conv: _Conv, limit: int) -> None:
        """Make ``conv``'s memory hold exactly its first ``n <= limit`` tokens, the largest n it can."""
        m = self.model
        assert conv.seq is not None
        if limit >= len(conv.tokens):
            return
        if not m.has_recurrent_state:
            if m.seq_rm(conv.seq, limit, -1):
                conv.tokens = conv.tokens[:limit]
                conv.checkpoints = [c for c in conv.checkpoints if c.n_tokens <= limit]
                self.stats.trimmed += 1
                return
        else:
            for ck in reversed(conv.checkpoints):
                if ck.n_tokens > limit:
                    continue
                m.state_set(conv.seq, ck.data, partial=True)  # recurrent state at n_tokens (its cell now ends at n_tokens-1)
                if m.seq_rm(conv.seq, ck.n_tokens, -1):  # then trim the KV cells past it
                    conv.tokens = conv.tokens[: ck.n_tokens]
                    conv.checkpoints = [c for c in conv.checkpoints if c.n_tokens <= ck.n_tokens]
                    self.stats.restored_checkpoints += 1
                    return
                log.warning("seq_rm after restoring the checkpoint at %d failed: re-decoding %s", ck.n_tokens, conv.key)
                break
        m.seq_clear(conv.seq)
        conv.tokens = []
        conv.checkpoints = []
        self.stats.full_reevaluations += 1

    def _checkpoint(self, conv: _Conv) -> None:
        n = len(conv.tokens)
        if conv.checkpoints and conv.checkpoints[-1].n_tokens == n:
            return
        data = self.model.state_get(conv.seq, partial=True) if self.model.has_recurrent_state else b""
        conv.checkpoints.append(Checkpoint(n, data))
        while len(conv.checkpoints) > self.settings.max_checkpoints:
            del conv.checkpoints[1]  # keep the first (end of the stable prefix) and the newest

    # ---- public API --------------------------------------------------------

    def generate(
        self,
        key: str,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        boundaries: Iterable[int] = (),
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Decode `prompt` for conversation `key` (reusing what its memory holds) and sample a reply.

        Two steps: `prefill` (make the conversation's memory hold `prompt`,
        decoding only past what it already holds) then `sample`.

        Args:
            key: conversation id (e.g. ``session/npc``); created on first use.
            prompt: the full prompt as token ids (at least 1).
            params: how tokens are drawn (temperature 0 = greedy).
            max_tokens: upper bound on generated tokens.
            boundaries: token counts (prefixes of `prompt`) after which to keep a
                checkpoint, e.g. ``[len(stable_prefix), len(history)]``.
            cancel: set it to stop after the current token (``finish_reason`` ``cancelled``).
            on_text: called with each decoded text piece (UTF-8 safe).

        Returns:
            `Generation`; ``cached_tokens`` = prompt tokens not decoded again
            (``prompt_tokens - cached_tokens`` were evaluated), ``ttft_ms``
            = call -> first sampled token.

        Raises:
            ContextOverflow: ``len(prompt) + max_tokens > n_ctx``.
            ModelError: llama.cpp failed to decode.
        """
        t0 = time.perf_counter()
        prompt = list(prompt)
        m = self.model
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_tokens > m.n_ctx:
            raise ContextOverflow(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds n_ctx {m.n_ctx} of a conversation ({m.n_seq_max} sequences)")
        conv, cached = self.prefill(key, prompt, boundaries)
        out, text, finish, t_first = self.sample(conv, params, max_tokens=max_tokens, cancel=cancel, on_text=on_text)
        t_end = time.perf_counter()
        t_first = t_first or t_end
        decode_s = t_end - t_first
        return Generation(
            tokens=out,
            text=text,
            finish_reason=finish,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            ttft_ms=(t_first - t0) * 1000,
            total_ms=(t_end - t0) * 1000,
            decode_tps=(len(out) - 1) / decode_s if len(out) > 1 and decode_s > 0 else 0.0,
        )

    def prefill(self, key: str, prompt: list[int], boundaries: Iterable[int] = ()) -> tuple[_Conv, int]:
        """Make conversation `key`'s sequence hold exactly `prompt`, with the last token's logits ready.

        Reuses the longest common prefix with what the sequence holds (trimming
        the KV cache, or restoring a checkpoint on a hybrid model), or another
        hot conversation's checkpointed prefix, and decodes the rest split at
        `boundaries`, keeping a checkpoint at each. At least one token is decoded.

        Returns:
            (the conversation, prompt tokens reused without decoding).

        Raises:
            ContextOverflow: the KV cache is full (the conversation's memory is cleared).
            ModelError: llama.cpp failed to decode (the conversation's memory is cleared).
        """
        m = self.model
        self._check_foreign()
        conv = self.convs.get(key)
        if conv is None:
            conv = self.convs[key] = _Conv(key)
        self._touch(conv)
        self._make_hot(conv)
        assert conv.seq is not None
        if not conv.tokens:
            self._share_prefix(conv, prompt)
        limit = min(_common_prefix(conv.tokens, prompt), len(prompt) - 1)  # >= 1 token decoded: its logits start the reply
        self._rewind(conv, limit)
        cached = len(conv.tokens)
        cuts = sorted({b for b in boundaries if cached < b < len(prompt)}) + [len(prompt)]
        pos = cached
        try:
            for cut in cuts:
                m.decode(conv.seq, prompt[pos:cut], pos, logits_last=cut == len(prompt))
                conv.tokens.extend(prompt[pos:cut])
                pos = cut
                if cut < len(prompt):
                    self._checkpoint(conv)
        except KvCacheFull as exc:
            self._forget_memory(conv)
            raise ContextOverflow(f"KV cache full while decoding {key!r}: {exc}") from None
        except ModelError:
            self._forget_memory(conv)
            raise
        evaluated = len(prompt) - cached
        self.last_evaluated = evaluated
        self.stats.prompt_tokens += len(prompt)
        self.stats.evaluated_tokens += evaluated
        return conv, cached

    def sample(
        self,
        conv: _Conv,
        params: SamplingParams,
        *,
        max_tokens: int,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[list[int], str, str, float | None]:
        """Sample up to `max_tokens` after a `prefill` of `conv`, decoding each token into its sequence.

        Returns:
            (token ids without the end-of-generation token, their text,
            finish reason ``stop``/``length``/``cancelled``, perf_counter time of the first sampled token).

        Raises:
            ContextOverflow: the KV cache filled up (the conversation's memory is cleared).
        """
        m = self.model
        sampler = m.sampler(params)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[int] = []
        pieces: list[str] = []
        t_first: float | None = None
        finish = "length"
        try:
            while True:
                tok = sampler.sample()
                if t_first is None:
                    t_first = time.perf_counter()
                if m.is_stop(tok):
                    finish = "stop"
                    break
                out.append(tok)
                piece = decoder.decode(m.token_bytes(tok))
                if piece:
                    pieces.append(piece)
                    if on_text is not None:
                        on_text(piece)
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if len(out) >= max_tokens:
                    break
                m.decode(conv.seq, [tok], len(conv.tokens))
                conv.tokens.append(tok)
        except KvCacheFull as exc:
            self._forget_memory(conv)
            raise ContextOverflow(f"KV cache full while generating for {conv.key!r}: {exc}") from None
        finally:
            sampler.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_text is not None:
                on_text(tail)
        return out, "".join(pieces), finish, t_first

    def _forget_memory(self, conv: _Conv) -> None:
        if conv.seq is not None:
            self.model.seq_clear(conv.seq)
        conv.tokens = []
        conv.checkpoints = []

    def forget(self, key: str) -> None:
        """Drop conversation `key` (its sequence, snapshot and checkpoints). Unknown keys are ignored."""
        conv = self.convs.pop(key, None)
        if conv is not None and conv.seq is not None:
            self.model.seq_clear(conv.seq)
            self._slots.pop(conv.seq, None)

    def cached_tokens(self, key: str) -> list[int]:
        """The token ids whose effect conversation `key` holds (hot or in the RAM store); [] when none."""
        conv = self.convs.get(key)
        return list(conv.tokens) if conv else []

    def checkpoints(self, key: str) -> list[int]:
        """Token counts at which conversation `key` has a checkpoint."""
        conv = self.convs.get(key)
        return [c.n_tokens for c in conv.checkpoints] if conv else []

    # ---- persistence -------------------------------------------------------

    def save(self, key: str, path: Path, meta: dict | None = None) -> int:
        """Write conversation `key` (tokens, checkpoints, full sequence state) to `path`
        (format: `narrative.state_file`), atomically: a crash leaves the old file.

        Returns:
            bytes written.

        Raises:
            KeyError: unknown `key` or nothing cached for it.
            OSError: the file cannot be written (the old one stays).
        """
        self._check_foreign()
        conv = self.convs[key]
        if conv.seq is not None:
            state = self.model.state_get(conv.seq, partial=False)
        elif conv.snapshot is not None:
            state = conv.snapshot
        else:
            raise KeyError(f"conversation {key!r} holds no state")
        header = {"key": key, "fingerprint": self.model.fingerprint(), "meta": meta or {}}
        return write_state_file(path, header, conv.tokens, state, [(c.n_tokens, c.data) for c in conv.checkpoints])

    @staticmethod
    def read_header(path: Path) -> dict:
        """The JSON header of a state file. Raises `StateError` if `path` is not one."""
        return read_header(path)

    def load(self, key: str, path: Path) -> dict:
        """Restore a conversation saved by `save` under `key`, into a sequence, without decoding.

        Returns:
            the ``meta`` dict given to `save`.

        Raises:
            StateMismatch: the file was made with another model file or other
                context settings (names each differing field: saved vs. current).
            StateError: not a state file, truncated, or rejected by llama.cpp.
        """
        path = Path(path)
        header = read_header(path)
        if header.get("format") != STATE_FORMAT:
            raise StateError(f"{path}: state format {header.get('format')} (this sidecar reads {STATE_FORMAT})")
        mine = self.model.fingerprint()
        saved = header.get("fingerprint", {})
        diff = [f"{k}: saved {saved.get(k)!r}, current {mine.get(k)!r}" for k in sorted(set(mine) | set(saved)) if saved.get(k) != mine.get(k)]
        if diff:
            raise StateMismatch(f"{path}: made with another model or settings, not loaded ({'; '.join(diff)})")
        f = read_state_file(path)
        self._check_foreign()
        self.forget(key)
        conv = self.convs[key] = _Conv(key)
        self._touch(conv)
        conv.tokens = f.tokens
        conv.checkpoints = [Checkpoint(n, data) for n, data in f.checkpoints]
        conv.snapshot = f.state
        self._make_hot(conv)  # loads the state into a sequence (drops it all if llama.cpp rejects it)
        held = self.model.seq_pos_max(conv.seq) + 1
        if held != header["n_tokens"] or len(conv.tokens) != header["n_tokens"]:
            self.forget(key)
            raise StateError(f"{path}: llama.cpp restored {held} positions, the file lists {header['n_tokens']} tokens")
        return header.get("meta", {})


__all__ = ["Checkpoint", "ContextEngine", "EngineStats", "StateMismatch", "state_file_name"]
