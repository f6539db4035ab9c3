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
  copy of it instead of token 0: ``llama_memory_seq_cp`` copies the donor's KV
  cells on the device (one stream to another) and shares its recurrent cell,
  then the checkpoint's recurrent state is loaded and the KV trimmed to it.
- **Many turns at once (continuous batching).** A turn is an `ActiveTurn`;
  `begin` admits it (its conversation made hot, its prompt's cached part
  reused), and each `step` advances every active turn: one ``llama_decode``
  with the next token of every decoding turn (sorted by sequence id), then the
  pending prefill of new turns in chunks of at most ``prefill_chunk`` tokens in
  all, so a new turn's lore never stalls the others' streams for more than one
  chunk. A turn joins at the next step and leaves at once when it stops, is
  cancelled or fails; its sequence stays with its conversation. Prefill pieces
  go to llama.cpp in calls of their own, one per sequence: with split KV caches
  llama.cpp cuts a batch into micro-batches of consecutive sequence ids with
  equal token counts (``split_equal``), so a prefill chunk mixed with decode
  tokens would be cut into 1 + the rest, costing a micro-batch and changing its
  arithmetic; a conversation's prefill is cut at the same places (multiples of
  ``prefill_chunk`` from where it resumes, and its boundaries) whoever else is
  active. Result: with greedy sampling a conversation's tokens are the same
  alone or among 8 (tests/narrative/test_batching.py), as far as llama.cpp's
  kernels allow: its CPU backend multiplies F16/F32/Q8_0/Q4_0 weights with
  another kernel for micro-batches of 2+ rows than for 1 (llamafile's
  tinyBLAS), which rounds differently (docs/batching-h200.md). `generate` is one turn
  run through the same steps. Scheduling (queue, priorities, fairness, a
  thread) lives in `narrative.scheduler`.
- **Checkpoints without copies through Python.** A checkpoint is a
  `narrative.llm.StateBuffer` that llama.cpp writes into directly, taken from a
  pool of buffers of that size and given back when the checkpoint is dropped.
- **Sessions persist.** `save` writes tokens, checkpoints and the full sequence
  state to a file (format: `narrative.state_file`) with a fingerprint of the
  model and context settings; `load` refuses a file made with another model or
  settings (`StateMismatch`) and otherwise restores it without decoding anything.

Not thread-safe: callers serialize access (hold ``model.lock``; the scheduler
holds it for each step).
"""

from __future__ import annotations

import codecs
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from narrative.llm import ContextOverflow, Generation, KvCacheFull, LlamaModel, ModelError, SamplingParams, StateBuffer, StateError
from narrative.settings import ContextSettings
from narrative.state_file import STATE_FORMAT, read_header, read_state_file, state_file_name, write_state_file

log = logging.getLogger(__name__)


class StateMismatch(ModelError):
    """A saved conversation state was made with another model or other context
    settings (the fingerprints differ); it is refused, not loaded."""


class NoFreeSequence(ModelError):
    """Every sequence holds a conversation with a turn in progress: a new turn must wait
    (`narrative.scheduler` never admits more turns than sequences)."""


def _view(data) -> memoryview | bytes:
    return data.view() if isinstance(data, StateBuffer) else data


def _release(data) -> None:
    if isinstance(data, StateBuffer):
        data.release()


def _held_bytes(data) -> int:
    """Host RAM a state holds: a pooled buffer's whole capacity, else its length."""
    return data.capacity if isinstance(data, StateBuffer) else len(data)


@dataclass
class Checkpoint:
    """The recurrent state after the first ``n_tokens`` tokens of a conversation.

    ``data``: the output of ``llama_state_seq_get_data_ext`` with
    ``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``, a pooled `StateBuffer` (or bytes read
    from a state file; empty on models without recurrent state).
    """

    n_tokens: int
    data: StateBuffer | bytes


@dataclass
class _Conv:
    key: str
    tokens: list[int] = field(default_factory=list)  # ids whose effect is in memory, in order
    checkpoints: list[Checkpoint] = field(default_factory=list)  # ascending n_tokens
    seq: int | None = None  # llama.cpp sequence id while hot
    snapshot: StateBuffer | bytes | None = None  # full sequence state while cold (RAM store)
    last_used: int = 0
    busy: "ActiveTurn | None" = None  # the turn in progress (its sequence is never evicted meanwhile)


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
    steps: int = 0  # `step` calls that decoded something
    decode_calls: int = 0  # llama_decode calls (one per step for the decoding turns + one per prefill piece)
    batched_tokens: int = 0  # generated tokens decoded in steps together with another turn's
    decode_ms: float = 0.0  # wall time in llama_decode for decoding turns (one call per step)
    prefill_ms: float = 0.0  # wall time in llama_decode for prefill pieces
    checkpoint_ms: float = 0.0  # wall time taking checkpoints (llama_state_seq_get_data_ext into pooled buffers)
    sample_ms: float = 0.0  # wall time sampling, detokenizing and in on_text callbacks


def _parses(text: bytes) -> bool:
    try:
        json.loads(text.decode("utf-8"))
    except ValueError:
        return False
    return True


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


@dataclass(frozen=True)
class Tail:
    """A structured end of a turn, decoded under a grammar (NPC actions, per-line fields).

    The turn's free text (the spoken line) is sampled as usual and streamed. Where the model
    ends it (an end-of-generation token, or one of `triggers`, e.g. Qwen3.5's ``<tool_call>``),
    or where the line reaches ``max_tokens``, the engine goes on in the same sequence under
    `grammar` (GBNF, start rule ``root``): the ending token is drawn again from the same logits
    with the grammar applied, so the model itself picks the tail (an empty tail where the
    grammar allows it). The tail is not streamed; it ends at an end-of-generation token the
    grammar allows, or after `max_tokens` tokens (then ``tail_complete`` is False).
    """

    grammar: str
    max_tokens: int
    triggers: frozenset[int] = frozenset()
    line_grammar: str | None = None
    whole: bool = False
    stop_at_json: bool = False

    # ``whole``: there is no free text: `grammar` shapes the reply from its first token (structured
    # content such as a quest's JSON; nothing is streamed). ``stop_at_json``: the reply ends as soon as
    # its text parses as JSON (after a ``}``), as `narrative.llm.generate_json` does.

    # ``line_grammar`` (for models with no tool format of their own): a grammar of the whole
    # reply, line and tail, applied from the first token, whose line may not hold a newline; the
    # tail starts at the first newline the model writes (the text before it in that token is the
    # line's), and at ``max_tokens`` of line the engine switches to `grammar` as above.


@dataclass(eq=False)
class ActiveTurn:
    """One turn in the engine: from `ContextEngine.begin` to its finish.

    Phases: ``prefill`` (prompt tokens past the cached part still to decode),
    ``decode`` (sampling; ``pending`` is the sampled token to decode next), ``done``.
    ``finish``: ``stop``, ``length``, ``cancelled`` or ``error`` (``error`` holds the exception).
    Times are ``time.perf_counter()`` seconds.
    """

    key: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    boundaries: tuple[int, ...] = ()
    cancel: threading.Event | None = None
    on_text: Callable[[str], None] | None = None
    tail: Tail | None = None
    t0: float = field(default_factory=time.perf_counter)
    phase: str = "new"
    conv: _Conv | None = None
    cached: int = 0
    pos: int = 0  # prompt tokens held by the sequence
    cuts: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    pending: int | None = None
    t_first: float | None = None
    t_end: float | None = None
    finish: str = ""
    error: BaseException | None = None
    tail_out: list[int] = field(default_factory=list)  # tokens sampled under the tail's grammar
    tail_bytes: bytearray = field(default_factory=bytearray)
    in_tail: bool = False
    line_finish: str = ""  # how the free text ended when a tail followed ('stop' or 'length')
    _sampler: object | None = None
    _decoder: object | None = None
    _constrained: object | None = None

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def generation(self) -> Generation:
        """The finished turn as a `Generation`. Raises the turn's error if it failed."""
        if self.error is not None:
            raise self.error
        t_end = self.t_end or time.perf_counter()
        t_first = self.t_first or t_end
        decode_s = t_end - t_first
        return Generation(
            tokens=list(self.out) + list(self.tail_out),
            text="".join(self.pieces),
            finish_reason=self.line_finish if self.line_finish and self.finish in ("stop", "length") else self.finish,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached,
            ttft_ms=(t_first - self.t0) * 1000,
            total_ms=(t_end - self.t0) * 1000,
            decode_tps=(len(self.out) + len(self.tail_out) - 1) / decode_s if len(self.out) + len(self.tail_out) > 1 and decode_s > 0 else 0.0,
            tail_text=bytes(self.tail_bytes).decode("utf-8", errors="replace"),
            tail_complete=self.tail is None or (self.in_tail and self.finish == "stop"),
            tail_count=len(self.tail_out),
        )


class ContextEngine:
    """Token-level prompt caching and continuous batching for many conversations on one `LlamaModel`.

    Args:
        model: the model; the engine uses its sequences ``0..n_seq_max-1``.
        settings: checkpoint count, RAM store size, prefill chunk.
    """

    def __init__(self, model: LlamaModel, settings: ContextSettings | None = None) -> None:
        self.model = model
        self.settings = settings or ContextSettings()
        self.convs: dict[str, _Conv] = {}
        self.stats = EngineStats()
        self.last_evaluated = 0  # prompt tokens decoded by the last turn that finished its prefill
        self._clock = 0
        self._slots: dict[int, str] = {}  # seq id -> conversation key
        self.active: list[ActiveTurn] = []  # turns begun and not finished, in admission order
        chunk = self.settings.prefill_chunk or model.n_batch
        self.prefill_chunk = max(1, min(chunk, model.n_batch))
        # free snapshot buffers kept for the next eviction: at most the RAM store's size, and 4 GiB
        model.keep_free_snapshot_bytes(min(self.settings.ram_mib << 20, 4 << 30))

    # ---- bookkeeping -----------------------------------------------------

    def _touch(self, conv: _Conv) -> None:
        self._clock += 1
        conv.last_used = self._clock

    def _ram_used(self) -> int:
        return sum(_held_bytes(c.snapshot) for c in self.convs.values() if c.snapshot is not None)

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
            for t in list(self.active):
                self._fail(t, ModelError("the model's context was used outside the context engine during this turn"))
            for conv in self.convs.values():
                if conv.seq is not None:
                    conv.seq = None
                    self._drop(conv)
            self._slots.clear()
            for s in range(self.model.n_seq_max):
                self.model.seq_clear(s)

    def _evict(self, conv: _Conv) -> None:
        """Move a hot conversation out of its sequence: snapshot it into the RAM store if it fits."""
        assert conv.seq is not None and conv.busy is None
        seq = conv.seq
        budget = self.settings.ram_mib << 20
        if conv.tokens and budget:
            data = self.model.state_get(seq, partial=False)
            if _held_bytes(data) <= budget:
                while self._ram_used() + _held_bytes(data) > budget:
                    victim = min((c for c in self.convs.values() if c.snapshot is not None), key=lambda c: c.last_used)
                    log.info("RAM store full: dropping the snapshot of %s (%d bytes)", victim.key, len(victim.snapshot or b""))
                    self._drop(victim)
                conv.snapshot = data
                self.stats.snapshots_saved += 1
            else:
                log.info("snapshot of %s (%d MiB) exceeds the RAM store (%d MiB): dropped", conv.key, len(data) >> 20, self.settings.ram_mib)
                _release(data)
        if conv.snapshot is None:
            self._drop(conv)
        self.model.seq_clear(seq)
        del self._slots[seq]
        conv.seq = None

    def _drop_checkpoints(self, conv: _Conv, keep_upto: int = -1) -> None:
        """Drop the checkpoints past `keep_upto` tokens (all with -1), giving their buffers back."""
        kept = []
        for c in conv.checkpoints:
            if keep_upto >= 0 and c.n_tokens <= keep_upto:
                kept.append(c)
            else:
                _release(c.data)
        conv.checkpoints = kept

    def _drop(self, conv: _Conv) -> None:
        if conv.snapshot is not None:
            _release(conv.snapshot)
        conv.snapshot = None
        conv.tokens = []
        self._drop_checkpoints(conv)

    def free_sequences(self) -> int:
        """Sequences a new conversation could take now (free, or held by a conversation with no turn in progress)."""
        return self.model.n_seq_max - sum(1 for k in self._slots.values() if self.convs[k].busy is not None)

    def can_begin(self, key: str) -> bool:
        """Whether a turn of conversation `key` can begin now: not already in a turn, and it
        holds a sequence or one can be freed (evicting an idle conversation to RAM)."""
        conv = self.convs.get(key)
        if conv is not None and conv.busy is not None:
            return False
        return (conv is not None and conv.seq is not None) or self.free_sequences() > 0

    def _free_seq(self, keep: str) -> int:
        for s in range(self.model.n_seq_max):
            if s not in self._slots:
                return s
        idle = [self.convs[k] for k in self._slots.values() if k != keep and self.convs[k].busy is None]
        if not idle:
            raise NoFreeSequence(f"all {self.model.n_seq_max} sequences hold a turn in progress")
        victim = min(idle, key=lambda c: c.last_used)
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
            finally:
                _release(data)

    def _share_prefix(self, conv: _Conv, prompt: Sequence[int]) -> None:
        """Start an empty conversation from another hot one's checkpoint on the same prompt prefix.

        ``llama_memory_seq_cp`` copies the donor's KV cells into this sequence's
        own cells on the device (split caches: a whole-stream copy, done at the
        next decode) and shares its recurrent cell; then the checkpoint's
        recurrent state is loaded and the KV trimmed to it. Nothing passes
        through host memory but the checkpoint.
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
        m.seq_clear(conv.seq)
        m.seq_cp(other.seq, conv.seq)
        if m.has_recurrent_state:
            m.state_set(conv.seq, ck.data, partial=True)
        if not m.seq_rm(conv.seq, n, -1) or m.seq_pos_max(conv.seq) != n - 1:
            log.warning("sharing the prefix of %s failed (pos_max %d, want %d)", other.key, m.seq_pos_max(conv.seq), n - 1)
            m.seq_clear(conv.seq)
            return
        conv.tokens = list(prompt[:n])
        conv.checkpoints = [Checkpoint(c.n_tokens, c.data.share() if isinstance(c.data, StateBuffer) else c.data) for c in other.checkpoints if c.n_tokens <= n]
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
                self._drop_checkpoints(conv, limit)
                self.stats.trimmed += 1
                return
        else:
            for ck in reversed(conv.checkpoints):
                if ck.n_tokens > limit:
                    continue
                m.state_set(conv.seq, ck.data, partial=True)  # recurrent state at n_tokens (its cell now ends at n_tokens-1)
                if m.seq_rm(conv.seq, ck.n_tokens, -1):  # then trim the KV cells past it
                    conv.tokens = conv.tokens[: ck.n_tokens]
                    self._drop_checkpoints(conv, ck.n_tokens)
                    self.stats.restored_checkpoints += 1
                    return
                log.warning("seq_rm after restoring the checkpoint at %d failed: re-decoding %s", ck.n_tokens, conv.key)
                break
        m.seq_clear(conv.seq)
        conv.tokens = []
        self._drop_checkpoints(conv)
        self.stats.full_reevaluations += 1

    def _checkpoint(self, conv: _Conv) -> None:
        n = len(conv.tokens)
        if conv.checkpoints and conv.checkpoints[-1].n_tokens == n:
            return
        data = self.model.state_get(conv.seq, partial=True) if self.model.has_recurrent_state else b""
        conv.checkpoints.append(Checkpoint(n, data))
        while len(conv.checkpoints) > self.settings.max_checkpoints:
            _release(conv.checkpoints[1].data)
            del conv.checkpoints[1]  # keep the first (end of the stable prefix) and the newest

    # ---- turns: begin, step, finish -------------------------------------------

    def begin(self, turn: ActiveTurn) -> ActiveTurn:
        """Admit `turn`: make its conversation hot, reuse what its memory holds (or another
        conversation's checkpointed prefix), and plan the prefill; decoding happens in `step`.

        Raises:
            ValueError: empty prompt.
            ContextOverflow: ``len(prompt) + max_tokens > n_ctx`` of a conversation.
            NoFreeSequence: every sequence holds a turn in progress (check `can_begin`).
            ModelError: the turn's conversation is already in a turn.
        """
        m = self.model
        prompt = turn.prompt = list(turn.prompt)
        if not prompt:
            raise ValueError("empty prompt")
        room = turn.max_tokens + (turn.tail.max_tokens if turn.tail is not None else 0)
        if len(prompt) + room > m.n_ctx:
            raise ContextOverflow(f"prompt of {len(prompt)} tokens + max_tokens {room} exceeds n_ctx {m.n_ctx} of a conversation ({m.n_seq_max} sequences)")
        self._check_foreign()
        conv = self.convs.get(turn.key)
        if conv is None:
            conv = self.convs[turn.key] = _Conv(turn.key)
        if conv.busy is not None:
            raise ModelError(f"conversation {turn.key!r} is already in a turn")
        self._touch(conv)
        self._make_hot(conv)
        assert conv.seq is not None
        if not conv.tokens:
            self._share_prefix(conv, prompt)
        limit = min(_common_prefix(conv.tokens, prompt), len(prompt) - 1)  # >= 1 token decoded: its logits start the reply
        self._rewind(conv, limit)
        turn.cached = turn.pos = len(conv.tokens)
        turn.cuts = sorted({b for b in turn.boundaries if turn.cached < b < len(prompt)}) + [len(prompt)]
        turn.conv = conv
        turn.phase = "prefill"
        conv.busy = turn
        turn._sampler = m.sampler(turn.params) if turn.params.temperature > 0 else None
        if turn.tail is not None and turn.tail.whole:
            turn.in_tail = True
            turn._constrained = m.constrained_sampler(turn.params, turn.tail.grammar)
        elif turn.tail is not None and turn.tail.line_grammar is not None:
            turn._constrained = m.constrained_sampler(turn.params, turn.tail.line_grammar)
        turn._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stats.prompt_tokens += len(prompt)
        self.active.append(turn)
        return turn

    def step(self, order: Callable[[ActiveTurn], object] | None = None) -> list[ActiveTurn]:
        """Advance every active turn by one step; returns the turns that finished in it.

        1. Turns cancelled meanwhile leave. 2. One ``llama_decode`` with the pending
        token of every decoding turn (sorted by sequence id), then each samples its
        next token. 3. Prefill pieces of new turns, in `order` (default: admission
        order), while their sum stays within ``prefill_chunk`` tokens (the first
        always goes); a turn whose prompt is complete samples its first token.
        """
        finished: list[ActiveTurn] = []
        for t in list(self.active):
            if t.cancel is not None and t.cancel.is_set():
                self._finish(t, "cancelled")
                finished.append(t)
        m = self.model
        dec = sorted((t for t in self.active if t.phase == "decode"), key=lambda t: t.conv.seq)
        did = False
        if dec:
            did = True
            items = [(t.conv.seq, [t.pending], len(t.conv.tokens), True) for t in dec]
            t_dec = time.perf_counter()
            try:
                idx = m.decode_batch(items)
            except ModelError as exc:
                for t in dec:
                    self._fail(t, ContextOverflow(f"KV cache full while generating for {t.key!r}: {exc}") if isinstance(exc, KvCacheFull) else exc)
                finished.extend(dec)
                dec, idx = [], []
            self.stats.decode_calls += 1 if dec else 0
            if len(dec) > 1:
                self.stats.batched_tokens += len(dec)
            t_smp = time.perf_counter()
            self.stats.decode_ms += (t_smp - t_dec) * 1000
            for t, i in zip(dec, idx):
                t.conv.tokens.append(t.pending)
                t.pending = None
                if self._sample_or_fail(t, i):
                    finished.append(t)
            self.stats.sample_ms += (time.perf_counter() - t_smp) * 1000
        pre = [t for t in self.active if t.phase == "prefill"]
        if order is not None:
            pre.sort(key=order)
        budget = self.prefill_chunk
        for t in pre:
            cut = next(c for c in t.cuts if c > t.pos)
            piece = min(cut, t.pos + self.prefill_chunk) - t.pos
            if piece > budget and budget < self.prefill_chunk:
                continue  # the chunk of this step is spent; it goes first next time
            budget -= piece
            did = True
            conv = t.conv
            end = t.pos + piece
            last = end == len(t.prompt)
            t_pre = time.perf_counter()
            try:
                idx = m.decode_batch([(conv.seq, t.prompt[t.pos : end], t.pos, last)])
            except ModelError as exc:
                self._fail(t, ContextOverflow(f"KV cache full while decoding {t.key!r}: {exc}") if isinstance(exc, KvCacheFull) else exc)
                finished.append(t)
                continue
            self.stats.decode_calls += 1
            self.stats.prefill_ms += (time.perf_counter() - t_pre) * 1000
            conv.tokens.extend(t.prompt[t.pos : end])
            t.pos = end
            if not last:
                if end == cut:
                    t_ck = time.perf_counter()
                    self._checkpoint(conv)
                    self.stats.checkpoint_ms += (time.perf_counter() - t_ck) * 1000
                continue
            evaluated = len(t.prompt) - t.cached
            self.last_evaluated = evaluated
            self.stats.evaluated_tokens += evaluated
            t.phase = "decode"
            if self._sample_or_fail(t, idx[0]):
                finished.append(t)
            if budget <= 0:
                break
        if did:
            self.stats.steps += 1
        return finished

    def _sample_or_fail(self, t: ActiveTurn, index: int) -> bool:
        """`_sample`, ending the turn with the error when sampling fails (a refused grammar...)."""
        try:
            return self._sample(t, index)
        except ModelError as exc:
            self._fail(t, exc)
            return True

    def _sample(self, t: ActiveTurn, index: int) -> bool:
        """Sample `t`'s next token from the logits at batch `index`; True when the turn ends here."""
        m = self.model
        if t.in_tail:
            return self._sample_tail(t, t._constrained.sample(index))
        if t._constrained is not None:  # the whole reply under one grammar: the line ends at a newline
            return self._sample_line_constrained(t, t._constrained.sample(index))
        if t.params.temperature <= 0:
            tok = m.argmax(index)  # greedy: no sampler chain (same token, see LlamaModel.argmax)
        else:
            tok = t._sampler.sample(index)
        if t.t_first is None:
            t.t_first = time.perf_counter()
        if t.tail is not None and (m.is_stop(tok) or tok in t.tail.triggers):
            # the line ends here: the same logits, drawn again under the tail's grammar
            self._enter_tail(t, "stop")
            return self._sample_tail(t, t._constrained.sample(index))
        if m.is_stop(tok):
            self._finish(t, "stop")
            return True
        t.out.append(tok)
        self._emit(t, m.token_bytes(tok))
        if t.cancel is not None and t.cancel.is_set():
            self._finish(t, "cancelled")
            return True
        if len(t.out) >= t.max_tokens:
            if t.tail is None:
                self._finish(t, "length")
                return True
            self._enter_tail(t, "length")  # the line is cut; its fields and actions still follow
        t.pending = tok
        return False

    def _sample_line_constrained(self, t: ActiveTurn, tok: int) -> bool:
        m = self.model
        if t.t_first is None:
            t.t_first = time.perf_counter()
        if m.is_stop(tok):  # the grammar allows an end only after a complete tail
            self._finish(t, "stop")
            return True
        raw = m.token_bytes(tok)
        cut = raw.find(b"\n")
        if cut >= 0:  # the tail starts in this token: its text before the newline is the line's
            t.line_finish = "stop"
            t.in_tail = True
            self._emit(t, raw[:cut])
            self._flush_text(t)
            t.tail_out.append(tok)
            t.tail_bytes += raw[cut:]
            t.pending = tok
            return False
        t.out.append(tok)
        self._emit(t, raw)
        if t.cancel is not None and t.cancel.is_set():
            self._finish(t, "cancelled")
            return True
        if len(t.out) >= t.max_tokens:
            t._constrained.close()
            self._enter_tail(t, "length")
        t.pending = tok
        return False

    def _emit(self, t: ActiveTurn, raw: bytes) -> None:
        piece = t._decoder.decode(raw)
        if piece:
            t.pieces.append(piece)
            if t.on_text is not None:
                t.on_text(piece)

    def _enter_tail(self, t: ActiveTurn, line_finish: str) -> None:
        assert t.tail is not None
        t.in_tail = True
        t.line_finish = line_finish
        self._flush_text(t)
        t._constrained = self.model.constrained_sampler(t.params, t.tail.grammar)

    def _sample_tail(self, t: ActiveTurn, tok: int) -> bool:
        m = self.model
        if t.t_first is None:
            t.t_first = time.perf_counter()
        if m.is_stop(tok):
            self._finish(t, "stop")
            return True
        t.tail_out.append(tok)
        raw = m.token_bytes(tok)
        t.tail_bytes += raw
        if t.tail.stop_at_json and b"}" in raw and _parses(t.tail_bytes):
            self._finish(t, "stop")
            return True
        if t.cancel is not None and t.cancel.is_set():
            self._finish(t, "cancelled")
            return True
        if len(t.tail_out) >= t.tail.max_tokens:
            self._finish(t, "length")
            return True
        t.pending = tok
        return False

    def _flush_text(self, t: ActiveTurn, reason: str = "") -> None:
        """End the free text's UTF-8 decoder (a cut multi-byte character becomes U+FFFD)."""
        if t._decoder is None:
            return
        tail, t._decoder = t._decoder.decode(b"", final=True), None
        if tail:
            t.pieces.append(tail)
            if t.on_text is not None and reason != "error":
                t.on_text(tail)

    def _finish(self, t: ActiveTurn, reason: str) -> None:
        if t.done:
            return
        t.finish = reason
        t.phase = "done"
        t.t_end = time.perf_counter()
        self._flush_text(t, reason)
        for name in ("_sampler", "_constrained"):
            smp = getattr(t, name)
            if smp is not None:
                smp.close()
                setattr(t, name, None)
        if t.conv is not None and t.conv.busy is t:
            t.conv.busy = None
        if t in self.active:
            self.active.remove(t)

    def _fail(self, t: ActiveTurn, exc: BaseException) -> None:
        """End `t` with an error; its conversation's memory is cleared (what it holds is unknown)."""
        t.error = exc
        if t.conv is not None:
            self._forget_memory(t.conv)
        self._finish(t, "error")

    def cancel_all(self, exc: BaseException) -> list[ActiveTurn]:
        """End every active turn with `exc` (the engine is stopping or failed); returns them."""
        out = list(self.active)
        for t in out:
            self._fail(t, exc)
        return out

    # ---- public API: one turn at a time --------------------------------------

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
        tail: Tail | None = None,
    ) -> Generation:
        """Decode `prompt` for conversation `key` (reusing what its memory holds) and sample a reply.

        One turn run alone through `begin` and `step` (the path batched turns take).

        Args:
            key: conversation id (e.g. ``session/npc``); created on first use.
            prompt: the full prompt as token ids (at least 1).
            params: how tokens are drawn (temperature 0 = greedy).
            max_tokens: upper bound on generated tokens.
            boundaries: token counts (prefixes of `prompt`) after which to keep a
                checkpoint, e.g. ``[len(stable_prefix), len(history)]``.
            cancel: set it to stop after the current token (``finish_reason`` ``cancelled``).
            on_text: called with each decoded text piece (UTF-8 safe) of the free text.
            tail: a structured end decoded under a grammar after the free text (`Tail`).

        Returns:
            `Generation`; ``cached_tokens`` = prompt tokens not decoded again
            (``prompt_tokens - cached_tokens`` were evaluated), ``ttft_ms``
            = call -> first sampled token.

        Raises:
            ContextOverflow: ``len(prompt) + max_tokens > n_ctx``, or the KV cache filled up.
            ModelError: llama.cpp failed to decode (the conversation's memory is cleared).
        """
        t = ActiveTurn(key, list(prompt), params, max_tokens, tuple(boundaries), cancel, on_text, tail)
        self.begin(t)
        while not t.done:
            self.step()
        return t.generation()

    def _forget_memory(self, conv: _Conv) -> None:
        if conv.seq is not None:
            self.model.seq_clear(conv.seq)
        conv.tokens = []
        self._drop_checkpoints(conv)

    def forget(self, key: str) -> None:
        """Drop conversation `key` (its sequence, snapshot and checkpoints); a turn in progress
        ends ``cancelled``. Unknown keys are ignored."""
        conv = self.convs.get(key)
        if conv is None:
            return
        if conv.busy is not None:
            self._finish(conv.busy, "cancelled")
        del self.convs[key]
        self._drop(conv)
        if conv.seq is not None:
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
        fresh = None
        if conv.seq is not None:
            state = fresh = self.model.state_get(conv.seq, partial=False)
        elif conv.snapshot is not None:
            state = conv.snapshot
        else:
            raise KeyError(f"conversation {key!r} holds no state")
        header = {"key": key, "fingerprint": self.model.fingerprint(), "meta": meta or {}}
        try:
            return write_state_file(path, header, conv.tokens, _view(state), [(c.n_tokens, _view(c.data)) for c in conv.checkpoints])
        finally:
            if fresh is not None:
                fresh.release()

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


__all__ = ["ActiveTurn", "Checkpoint", "Tail", "ContextEngine", "EngineStats", "NoFreeSequence", "StateMismatch", "state_file_name"]
