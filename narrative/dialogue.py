"""Dialogue sessions: one conversation per (session, NPC), kept as tokens.

The prompt of a conversation is a token list built append-only:

    [system: instructions + NPC card + static lore]      <- stable prefix, built once
    [user: per-turn lore (new entries only) + player line][assistant: reply] ...

Tokens fed and generated are kept as they are, never re-rendered from text, so
each turn shares its whole history with the previous one and the model decodes
only the new tokens when that history is still in its context. Per-turn lore
goes after the stable prefix, never inside it; an entry injected once stays in
the history and is not injected again (nor charged to the turn budget).

Concurrency: turns of different conversations run at once, batched on the
model by `narrative.scheduler.Scheduler` (continuous batching; ``[context]``
``max_turns``, ``max_queue``, ``prefill_chunk``); `turn` blocks its caller
until its reply is done. Turns of one conversation are serialized (the next
prompt needs the previous reply). Lore selection and prompt building run under
`prepare_lock`, which a lore reload also takes, so they never see a half-synced
index.

Game events and state, actions, thinking, long conversations:

- **Events** (`add_event`) wait per conversation and enter the next turn's user segment,
  after the stable prefix (they cost their own tokens; nothing is re-decoded).
- **State** (`set_state`, or ``state`` with a turn): a session's flags and counters, read by
  lore entries' ``when:`` conditions (`lore.retrieve.Retriever.select`); gated entries are
  never in the stable prefix.
- **Actions and per-line fields** (`declare`): part of the NPC's stable prefix (in the chat
  template's tools block on Qwen3.5); a turn ends with a tail decoded under a grammar and
  validated (`narrative.actions`); only valid calls come back.
- **Thinking** (``[dialogue] thinking``) and any reasoning or call markup the model writes
  in the line are filtered from the stream, the result and the history (`narrative.visible_text`).
- **Long conversations**: when a turn would not fit the conversation's context (``n_ctx /
  n_seq_max``), the oldest turns are dropped (down to 3/4 of it) and the stable prefix stays:
  the context engine restores the checkpoint at the prefix end and re-decodes the kept turns
  only. The player-visible effect: the NPC no longer remembers what was said in the dropped
  turns (its card, static lore and gated lore stay); ``TurnResult.forgotten_turns`` says how many.

Decoding goes through `narrative.context.ContextEngine`: one llama.cpp sequence
per conversation, checkpoints at the end of the stable prefix and at the end of
the history before each turn, snapshots of evicted conversations in RAM, and
(with ``state_dir``) conversations saved to ``state_dir/sessions`` and restored
after a restart without re-decoding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lore.conditions import StateValue
from lore.render import render_entry
from lore.retrieve import Pick, Retriever
from narrative.actions import ActionSet, TailResult, UnsupportedSchema, check_action_set, line_grammar, parse_tail, system_text, tail_budget, tail_grammar
from narrative.context import ContextEngine, StateMismatch, Tail
from narrative.llm import ContextOverflow, GrammarRefused, LlamaModel, ModelError, SamplingParams
from narrative.scheduler import Scheduler
from narrative.settings import ContextSettings, DialogueSettings, SamplingSettings
from narrative.state_file import state_file_name
from narrative.visible_text import VisibleText

log = logging.getLogger(__name__)

PROMPT_VERSION = 1

SYSTEM_TEMPLATE = """You are {name}, a character in a video game, talking with the player.
Stay in character. Answer with one to three short spoken sentences in {name}'s voice.
No narration, no stage directions, no lists. Never say you are an AI.
Use only the facts below and what was said in this conversation; if you do not know, say so in character.
Never reveal what {name} keeps secret.

{lore}"""

TURN_TEMPLATE = """{events}{lore}The player says: {line}"""

EVENTS_HEADER = "What just happened:\n"

class TooMuchState(ValueError):
    """A session's game state would hold more keys than ``[dialogue] max_state_keys``."""


class SessionData:
    """What a game told the sidecar about one session: state, declarations (per NPC, "" = all)."""

    def __init__(self) -> None:
        self.state: dict[str, StateValue] = {}
        self.declared: dict[str, ActionSet] = {}
        self.events: dict[str, deque[str]] = {}  # NPC id -> events waiting for its next turn


def prefix_tokens(model: LlamaModel, text: str) -> list[int]:
    """The system turn holding `text` (instructions, NPC card, static lore) as token ids, no BOS.

    Only the chat template's markers become control tokens; `text` (written by designers, or
    imported from cards found on the internet) is tokenized as plain text, so a ``<|im_start|>``
    inside it stays text.
    """
    return model.chat_tokens(model.format.system_pieces(text))


def turn_tokens(model: LlamaModel, text: str, *, thinking: bool = False) -> list[int]:
    """A user turn holding `text` (events + per-turn lore + the player's line) and the assistant header,
    as token ids; the player's and the lore's text is tokenized as plain text (see `prefix_tokens`).
    `thinking`: the header that opens the model's reasoning (`ChatFormat.thinking_open`)."""
    fmt = model.format
    pieces = fmt.user_pieces(text, then_assistant=not thinking)
    if thinking:
        pieces.append((fmt.thinking_open, True))
    return model.chat_tokens(pieces)


@dataclass
class TurnRecord:
    player: str
    reply: str
    lore: list[str]
    tokens: list[int]  # this turn's tokens: user segment + assistant open + reply (+ tail) + assistant close
    events: list[str] = field(default_factory=list)  # game events that entered with this turn


@dataclass
class Conversation:
    """History of one (session, NPC) pair, as tokens."""

    npc_id: str
    prefix_tokens: list[int]
    prefix_lore: list[str]
    turns: list[TurnRecord] = field(default_factory=list)
    injected: set[str] = field(default_factory=set)
    index_version: int = -1  # the lore index version the prefix was built from
    actions_key: str = ""  # `ActionSet.key` of the declaration the prefix was built with ("" = none)
    forgotten: int = 0  # turns dropped so far to fit the context

    def tokens(self, first_turn: int = 0) -> list[int]:
        out = list(self.prefix_tokens)
        for t in self.turns[first_turn:]:
            out.extend(t.tokens)
        return out


@dataclass
class TurnResult:
    """One finished turn. Token counts are tokens; times are ms."""

    text: str
    finish_reason: str
    lore: list[str]
    dropped: list[str]
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    tokens_per_s: float
    fields: dict[str, str] = field(default_factory=dict)
    actions: list[tuple[str, dict]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    forgotten_turns: int = 0
    events: list[str] = field(default_factory=list)
    declared: bool = False


@dataclass
class _Prepared:
    """One turn's prompt, built under `DialogueEngine.prepare_lock`."""

    conv: Conversation
    new_lore: list[Pick]
    seen_lore: list[str]
    sel: object
    user_text: str
    user_tokens: list[int]
    history: list[int]
    first: int  # oldest turns dropped to fit
    max_tokens: int
    events: list[str]


class DialogueEngine:
    """Runs dialogue turns for many conversations on one model.

    Args:
        model: the dialogue model (turns of several conversations are batched on it by one
            stepping thread, `scheduler`, which holds ``model.lock`` for each step).
        retriever: lore selection.
        sampling: default sampling settings.
    """

    def __init__(
        self,
        model: LlamaModel,
        retriever: Retriever,
        sampling: SamplingSettings,
        context: ContextSettings | None = None,
        state_dir: Path | None = None,
        dialogue: DialogueSettings | None = None,
    ) -> None:
        self.model = model
        self.retriever = retriever
        self.sampling = sampling
        self.dialogue = dialogue or DialogueSettings()
        self.sessions: OrderedDict[str, SessionData] = OrderedDict()  # LRU, at most dialogue.max_sessions
        self._n_declared = 0  # declarations in all sessions (bounded by dialogue.max_declarations)
        self._n_queues = 0  # per-NPC event queues in all sessions (bounded by dialogue.max_event_queues)
        self.conversations: dict[tuple[str, str], Conversation] = {}
        self._lock = threading.Lock()
        self.context = ContextEngine(model, context)
        self.scheduler = Scheduler(self.context, model.lock, self.context.settings)
        self.prepare_lock = threading.Lock()  # lore selection + prompt building; a lore reload takes it too
        self._conv_locks: dict[tuple[str, str], threading.Lock] = {}
        self.sessions_dir = Path(state_dir) / "sessions" if state_dir is not None and (context is None or context.persist) else None
        self.save_every_s = (context or ContextSettings()).save_every_s
        self._saved_at: dict[tuple[str, str], float] = {}
        self.save_errors = 0  # failed autosaves (disk full...), for tests and stats

    @staticmethod
    def _key(session: str, npc_id: str) -> str:
        return f"{session}\x1f{npc_id}"

    def _session_path(self, session: str, npc_id: str) -> Path | None:
        return self.sessions_dir / state_file_name(self._key(session, npc_id)) if self.sessions_dir else None

    # ---- what the game tells us: state, events, declarations -----------------------

    def _session(self, session: str) -> SessionData:
        """The session's data (created on first use; the least recently used beyond ``max_sessions`` go). Caller holds `_lock`."""
        data = self.sessions.pop(session, None) or SessionData()
        self.sessions[session] = data
        while len(self.sessions) > self.dialogue.max_sessions:
            self._forget_oldest()
        return data

    def _forget_oldest(self) -> None:
        _, old = self.sessions.popitem(last=False)
        self._n_declared -= len(old.declared)
        self._n_queues -= len(old.events)

    def _trim_sessions(self) -> None:
        """Forget the least recently used sessions (never the newest) while the declarations or event queues
        of all sessions are over ``max_declarations`` / ``max_event_queues``. Caller holds `_lock`."""
        d = self.dialogue
        while len(self.sessions) > 1 and (self._n_declared > d.max_declarations or self._n_queues > d.max_event_queues):
            self._forget_oldest()

    def set_state(self, session: str, values: Mapping[str, StateValue] | None = None, unset: list[str] | tuple = ()) -> dict[str, StateValue]:
        """Merge `values` into the session's game state, then remove the `unset` keys; returns the new state.

        Raises:
            TooMuchState: the state would hold more than ``[dialogue] max_state_keys`` keys (nothing changed).
        """
        with self._lock:
            data = self._session(session)
            new = {**data.state, **(values or {})}
            for k in unset:
                new.pop(k, None)
            if len(new) > self.dialogue.max_state_keys:
                raise TooMuchState(f"session {session!r} would hold {len(new)} state keys (max_state_keys {self.dialogue.max_state_keys})")
            data.state = new
            return dict(new)

    def state(self, session: str) -> dict[str, StateValue]:
        """A copy of the session's game state ({} when none was set)."""
        with self._lock:
            data = self.sessions.get(session)
            return dict(data.state) if data else {}

    def add_event(self, session: str, text: str, npcs: list[str]) -> int:
        """Queue a game event for each NPC in `npcs` (ids, checked by the caller); it enters that
        NPC's conversation at the start of its next turn. Returns how many NPCs got it."""
        with self._lock:
            data = self._session(session)
            for npc in npcs:
                q = data.events.get(npc)
                if q is None:
                    q = data.events[npc] = deque(maxlen=self.dialogue.max_pending_events)
                    self._n_queues += 1
                if len(q) == q.maxlen:
                    log.info("events for %s/%s: the oldest is dropped (max_pending_events %d)", session, npc, q.maxlen)
                q.append(text)  # one string shared by every NPC's queue
            self._trim_sessions()
        return len(npcs)

    def pending_events(self, session: str, npc_id: str) -> list[str]:
        with self._lock:
            data = self.sessions.get(session)
            return list(data.events.get(npc_id, ())) if data else []

    def declare(self, session: str, npc_id: str | None, aset: ActionSet | None) -> None:
        """Declare the actions and per-line fields of `npc_id` (None: every NPC of the session);
        None or an empty set removes the declaration. Takes effect at the NPC's next turn (its
        stable prefix changes once).

        Raises:
            narrative.actions.UnsupportedSchema: a schema the grammar cannot enforce (names action and property).
            lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
        """
        if npc_id is not None:
            self.retriever.npc(npc_id)
        if aset is not None and not aset.empty:
            check_action_set(aset)
            try:  # llama.cpp must take the grammar (checked now, not in the middle of a turn)
                self.model.constrained_sampler(SamplingParams(0.0, 1.0, 0, 1.0, 0), tail_grammar(aset, self.model.format.tool_format)).close()
            except GrammarRefused as exc:
                raise UnsupportedSchema(f"the declaration's grammar was refused by llama.cpp: {exc}") from None
        with self._lock:
            data = self._session(session)
            if aset is None or aset.empty:
                if data.declared.pop(npc_id or "", None) is not None:
                    self._n_declared -= 1
            else:
                if (npc_id or "") not in data.declared:
                    if len(data.declared) >= self.dialogue.max_declarations:
                        raise TooMuchState(f"session {session!r} already holds {len(data.declared)} declarations "
                                           f"(max_declarations {self.dialogue.max_declarations}): declare for every NPC at once (no npc)")
                    self._n_declared += 1
                data.declared[npc_id or ""] = aset
                self._trim_sessions()

    def action_set(self, session: str, npc_id: str) -> ActionSet | None:
        """The declaration in force for (`session`, `npc_id`): the NPC's own, else the session's, else None."""
        with self._lock:
            data = self.sessions.get(session)
            if data is None:
                return None
            return data.declared.get(npc_id) or data.declared.get("")

    # ---- conversations -----------------------------------------------------------------

    def _build_prefix(self, npc_id: str, aset: ActionSet | None = None) -> Conversation:
        version = self.retriever.index.version
        picks = self.retriever.prefix(npc_id)  # raises UnknownNpc
        npc = picks[0].entry
        lore = "\n\n".join(render_entry(p.entry, speaker=p.entry.id == npc_id) for p in picks)
        text = system_text(aset, self.model.format.tool_format, SYSTEM_TEMPLATE.format(name=npc.name, lore=lore))
        tokens = self.model.bos() + prefix_tokens(self.model, text)
        return Conversation(npc_id=npc_id, prefix_tokens=tokens, prefix_lore=[p.entry.id for p in picks], index_version=version,
                            actions_key=aset.key() if aset else "")

    def conversation(self, session: str, npc_id: str) -> Conversation:
        """The conversation for (`session`, `npc_id`): in memory, else saved under
        ``state_dir/sessions``, else new. Raises `UnknownNpc`."""
        key = (session, npc_id)
        aset = self.action_set(session, npc_id)
        with self._lock:
            conv = self.conversations.get(key)
            if conv is None:
                conv = self._build_prefix(npc_id, aset)
                saved = self._restore(session, npc_id, conv)
                self.conversations[key] = saved or conv
            elif conv.index_version != self.retriever.index.version or conv.actions_key != (aset.key() if aset else ""):
                self._refresh_prefix(conv, aset)
            return self.conversations[key]

    def _refresh_prefix(self, conv: Conversation, aset: ActionSet | None = None) -> None:
        """After a lore change (hot reload) or a new declaration, rebuild the conversation's stable prefix.

        The turns stay as they were said; when the prefix text changed, the next
        turn's prompt diverges from the cached tokens where the edit is, and the
        context engine re-decodes from there (the NPC knows the edit from its
        next line on). An unchanged prefix costs one prefix build, no decoding.
        """
        fresh = self._build_prefix(conv.npc_id, aset)
        if fresh.prefix_tokens != conv.prefix_tokens:
            log.info("lore or declaration changed: prefix of %s rebuilt (%d -> %d tokens)", conv.npc_id, len(conv.prefix_tokens), len(fresh.prefix_tokens))
            conv.prefix_tokens, conv.prefix_lore = fresh.prefix_tokens, fresh.prefix_lore
        conv.index_version = fresh.index_version
        conv.actions_key = fresh.actions_key

    def _restore(self, session: str, npc_id: str, fresh: Conversation) -> Conversation | None:
        """Load a saved conversation whose stable prefix still equals `fresh`'s (lore unchanged)."""
        path = self._session_path(session, npc_id)
        if path is None or not path.is_file():
            return None
        try:
            header = self.context.read_header(path)
            meta = header.get("meta", {})
            if meta.get("prompt_version") != PROMPT_VERSION or meta.get("prefix_tokens") != fresh.prefix_tokens:
                log.info("saved conversation %s is stale (prompt or lore changed): starting afresh", path)
                return None
            with self.model.lock:
                self.context.load(self._key(session, npc_id), path)
        except StateMismatch as exc:
            log.warning("%s", exc)
            return None
        except (ModelError, OSError, ValueError, KeyError) as exc:
            log.warning("cannot restore %s: %s", path, exc)
            return None
        conv = Conversation(npc_id=npc_id, prefix_tokens=list(meta["prefix_tokens"]), prefix_lore=list(meta["prefix_lore"]),
                            index_version=fresh.index_version, actions_key=fresh.actions_key, forgotten=int(meta.get("forgotten", 0)))
        conv.turns = [TurnRecord(**t) for t in meta["turns"]]
        conv.injected = set(meta["injected"])
        log.info("restored conversation %s/%s (%d turns) from %s", session, npc_id, len(conv.turns), path)
        return conv

    def save_sessions(self) -> int:
        """Save every conversation that holds model state to ``state_dir/sessions``
        (tokens, checkpoints, sequence state, turns). Returns how many were saved;
        0 without a state dir.

        Raises:
            OSError: a file cannot be written (disk full...); files already written stay, and
                every old file stays as it was (atomic writes).
        """
        if self.sessions_dir is None:
            return 0
        n = 0
        with self._lock, self.model.lock:
            for (session, npc_id), conv in self.conversations.items():
                n += self._save_one(session, npc_id, conv)
        return n

    def _save_one(self, session: str, npc_id: str, conv: Conversation) -> int:
        """Write one conversation (caller holds ``model.lock``); 1 when written, 0 when it holds no state."""
        key = self._key(session, npc_id)
        if not self.context.cached_tokens(key):
            return 0
        meta = {
            "prompt_version": PROMPT_VERSION,
            "session": session,
            "npc": npc_id,
            "prefix_tokens": conv.prefix_tokens,
            "prefix_lore": conv.prefix_lore,
            "turns": [asdict(t) for t in conv.turns],
            "injected": sorted(conv.injected),
            "forgotten": conv.forgotten,
        }
        path = self._session_path(session, npc_id)
        assert path is not None
        self.context.save(key, path, meta)
        self._saved_at[(session, npc_id)] = time.monotonic()
        return 1

    def _autosave(self, session: str, npc_id: str, conv: Conversation) -> None:
        """After a turn: save its conversation when ``context.save_every_s`` says so (0: every turn),
        so a ``kill -9`` loses at most the turn in flight (or the last ``save_every_s`` seconds).
        A failed write (disk full) is logged and the turn still counts: the old file stays intact."""
        every = self.save_every_s
        if self.sessions_dir is None or every is None:
            return
        if every > 0 and time.monotonic() - self._saved_at.get((session, npc_id), float("-inf")) < every:
            return
        try:
            with self.model.lock:
                self._save_one(session, npc_id, conv)
        except (OSError, ModelError, KeyError) as exc:
            self.save_errors += 1
            log.error("could not save conversation %s/%s: %s (the previous save stays)", session, npc_id, exc)

    def reset(self, session: str, npc_id: str) -> None:
        """Forget a conversation (and its saved state). Raises `UnknownNpc` for an unknown NPC."""
        self.retriever.npc(npc_id)
        with self._lock:
            self.conversations.pop((session, npc_id), None)
        with self.model.lock:
            self.context.forget(self._key(session, npc_id))
        path = self._session_path(session, npc_id)
        if path is not None:
            path.unlink(missing_ok=True)

    def turn(
        self,
        session: str,
        npc_id: str,
        line: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        priority: int = 0,
        client: str = "",
        state: Mapping[str, StateValue] | None = None,
    ) -> TurnResult:
        """Run one dialogue turn: select lore, append the events and the player's line, stream the
        reply, then (with a declaration) decode and validate its actions and fields.

        Blocks until the reply is done; turns of other conversations run meanwhile
        (batched). `priority`: higher goes first when turns wait (the NPC the player
        faces); `client`: fairness between clients (`narrative.scheduler`). `on_text`
        gets the visible text only (no reasoning, no call markup); it runs on the stepping
        thread: it must not block. `state`: merged into the session's game state first.

        Raises:
            lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
            narrative.llm.ContextOverflow: even the prefix and this turn alone do not fit.
            narrative.scheduler.Busy: ``max_queue`` turns already wait (nothing was decoded).
            TooMuchState: `state` would take the session over ``max_state_keys``.
        """
        t0 = time.perf_counter()
        if state:
            self.set_state(session, state)
        with self._lock:
            conv_lock = self._conv_locks.setdefault((session, npc_id), threading.Lock())
        with conv_lock:
            return self._turn(session, npc_id, line, t0, max_tokens, temperature, seed, cancel, on_text, priority, client)

    def _tail(self, aset: ActionSet | None) -> Tail | None:
        if aset is None or aset.empty:
            return None
        fmt = self.model.format.tool_format
        triggers: frozenset[int] = frozenset()
        if fmt == "qwen-xml":
            ids = self.model.marker_tokens("<tool_call>")
            triggers = frozenset(ids) if len(ids) == 1 else frozenset()
        # a model with no tool format of its own writes the tail where it likes: the whole reply
        # is shaped by one grammar, so the line cannot hold the block (`narrative.actions.line_grammar`)
        return Tail(tail_grammar(aset, fmt), tail_budget(aset, fmt), triggers, line_grammar(aset) if fmt == "json" else None)

    def _turn(self, session, npc_id, line, t0, max_tokens, temperature, seed, cancel, on_text, priority, client) -> TurnResult:
        aset = self.action_set(session, npc_id)
        tail = self._tail(aset)
        thinking = self.dialogue.thinking and bool(self.model.format.thinking_open)
        with self.prepare_lock:
            p = self._prepare(session, npc_id, line, max_tokens, tail, thinking)
        conv = p.conv
        visible = VisibleText(thinking=thinking)

        def show(piece: str) -> None:
            out = visible.feed(piece)
            if out and on_text is not None:
                on_text(out)

        s = self.sampling
        self.scheduler.start()
        future = self.scheduler.submit(
            self._key(session, npc_id),
            p.history + p.user_tokens,
            SamplingParams(
                temperature=s.temperature if temperature is None else temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                repeat_penalty=s.repeat_penalty,
                seed=self.model.settings.seed if seed is None else seed,
            ),
            max_tokens=p.max_tokens,
            boundaries=(len(conv.prefix_tokens), len(p.history)),  # checkpoints: end of the stable prefix, end of the history
            priority=priority,
            client=client or session,
            cancel=cancel,
            on_text=show,
            tail=tail,
        )
        gen = future.result()
        rest = visible.finish()
        if rest and on_text is not None and gen.finish_reason != "cancelled":
            on_text(rest)
        text = visible.text.strip()
        fmt = self.model.format
        result = TailResult()
        if tail is not None and aset is not None and gen.finish_reason != "cancelled":
            result = parse_tail(gen.tail_text, aset, fmt.tool_format, complete=gen.tail_complete)
            if result.rejected:
                log.info("turn %s/%s: %d action(s) rejected: %s", session, npc_id, len(result.rejected), result.rejected)
        if gen.finish_reason != "cancelled":
            close = self.model.marker_tokens(fmt.assistant_close)
            if thinking or visible.hid_reasoning or visible.hid_markup:
                # the history keeps what the player saw (Qwen3.5's template drops earlier turns'
                # reasoning too); the next turn re-decodes from this turn's start
                reply = turn_tokens(self.model, p.user_text) + self.model.tokenize(text) + gen.tokens[len(gen.tokens) - gen.tail_count:]
            else:
                reply = p.user_tokens + gen.tokens
            conv.turns.append(TurnRecord(line, text, [e.entry.id for e in p.new_lore], reply + close, list(p.events)))
            conv.injected.update(e.entry.id for e in p.new_lore)
            if p.first:
                del conv.turns[: p.first]
                conv.forgotten += p.first
            self._consume_events(session, npc_id, p.events)
            self._autosave(session, npc_id, conv)
        return TurnResult(
            text=text,
            finish_reason=gen.finish_reason,
            lore=conv.prefix_lore + p.seen_lore + [e.entry.id for e in p.new_lore],
            dropped=[e.entry.id for e in p.sel.dropped],
            prompt_tokens=gen.prompt_tokens,
            cached_tokens=gen.cached_tokens,
            completion_tokens=len(gen.tokens),
            ttft_ms=(time.perf_counter() - t0) * 1000 - (gen.total_ms - gen.ttft_ms),
            total_ms=(time.perf_counter() - t0) * 1000,
            tokens_per_s=gen.decode_tps,
            fields=result.fields,
            actions=result.actions,
            rejected=result.rejected,
            forgotten_turns=p.first if gen.finish_reason != "cancelled" else 0,
            events=list(p.events),
            declared=tail is not None,
        )

    def _consume_events(self, session: str, npc_id: str, events: list[str]) -> None:
        """Remove the events a finished turn carried (events queued meanwhile stay for the next one)."""
        with self._lock:
            data = self.sessions.get(session)
            q = data.events.get(npc_id) if data else None
            for e in events:
                if q and q[0] == e:
                    q.popleft()
            if data is not None and q is not None and not q:  # an empty queue holds nothing worth its memory
                del data.events[npc_id]
                self._n_queues -= 1

    def _prepare(self, session: str, npc_id: str, line: str, max_tokens: int | None, tail: Tail | None, thinking: bool) -> "_Prepared":
        """Lore selection and the prompt of one turn (under `prepare_lock`)."""
        conv = self.conversation(session, npc_id)
        history = [t.player for t in conv.turns]
        state = self.state(session)
        events = self.pending_events(session, npc_id)
        # lore already in the history is not injected again and costs no budget
        sel = self.retriever.select(npc_id, line, history, exclude=conv.injected, state=state)
        new_lore: list[Pick] = sel.turn
        seen_lore = sel.present  # triggered again, already in the history
        lore_text = "".join(render_entry(p.entry) + "\n\n" for p in new_lore)
        if lore_text:
            lore_text = "What you know that bears on this:\n" + lore_text
        events_text = EVENTS_HEADER + "".join(f"- {e}\n" for e in events) + "\n" if events else ""
        user_text = TURN_TEMPLATE.format(events=events_text, lore=lore_text, line=line)
        user_tokens = turn_tokens(self.model, user_text, thinking=thinking)
        s = self.sampling
        max_tokens = max_tokens or s.max_tokens
        tail_room = tail.max_tokens if tail is not None else 0
        first = 0
        history = conv.tokens(first)
        if len(history) + len(user_tokens) + max_tokens + tail_room > self.model.n_ctx:
            # drop the oldest turns (the prefix always stays) down to 3/4 of the window, so the
            # next turns extend the history again instead of re-decoding it after every drop
            room = self.model.n_ctx * 3 // 4
            while len(history) + len(user_tokens) + max_tokens + tail_room > room and first < len(conv.turns):
                first += 1
                history = conv.tokens(first)
        prompt_len = len(history) + len(user_tokens)
        # what a client may ask (NarrativeService.limits) is served: a turn that still does not fit after
        # dropping the old turns generates what fits (finish_reason 'length'); none fitting is ContextOverflow
        max_tokens = min(max_tokens, self.model.n_ctx - prompt_len - tail_room)
        if max_tokens < 1:
            raise ContextOverflow(f"the prefix and this line take {prompt_len + tail_room} tokens (with {tail_room} for actions) "
                                  f"of the {self.model.n_ctx} a conversation has")
        return _Prepared(conv, new_lore, seen_lore, sel, user_text, user_tokens, history, first, max_tokens, events)

    def close(self) -> None:
        """Stop the stepping thread (waiting and running turns end with an error)."""
        self.scheduler.close()
