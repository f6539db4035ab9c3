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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lore.render import render_entry
from lore.retrieve import Pick, Retriever
from narrative.context import ContextEngine, StateMismatch
from narrative.llm import ContextOverflow, LlamaModel, ModelError, SamplingParams
from narrative.scheduler import Scheduler
from narrative.settings import ContextSettings, SamplingSettings
from narrative.state_file import state_file_name

log = logging.getLogger(__name__)

PROMPT_VERSION = 1

SYSTEM_TEMPLATE = """You are {name}, a character in a video game, talking with the player.
Stay in character. Answer with one to three short spoken sentences in {name}'s voice.
No narration, no stage directions, no lists. Never say you are an AI.
Use only the facts below and what was said in this conversation; if you do not know, say so in character.
Never reveal what {name} keeps secret.

{lore}"""

TURN_TEMPLATE = """{lore}The player says: {line}"""


def prefix_tokens(model: LlamaModel, text: str) -> list[int]:
    """The system turn holding `text` (instructions, NPC card, static lore) as token ids, no BOS.

    Only the chat template's markers become control tokens; `text` (written by designers, or
    imported from cards found on the internet) is tokenized as plain text, so a ``<|im_start|>``
    inside it stays text.
    """
    return model.chat_tokens(model.format.system_pieces(text))


def turn_tokens(model: LlamaModel, text: str) -> list[int]:
    """A user turn holding `text` (per-turn lore + the player's line) and the assistant header, as
    token ids; the player's and the lore's text is tokenized as plain text (see `prefix_tokens`)."""
    return model.chat_tokens(model.format.user_pieces(text, then_assistant=True))


@dataclass
class TurnRecord:
    player: str
    reply: str
    lore: list[str]
    tokens: list[int]  # this turn's tokens: user segment + assistant open + reply + assistant close


@dataclass
class Conversation:
    """History of one (session, NPC) pair, as tokens."""

    npc_id: str
    prefix_tokens: list[int]
    prefix_lore: list[str]
    turns: list[TurnRecord] = field(default_factory=list)
    injected: set[str] = field(default_factory=set)
    index_version: int = -1  # the lore index version the prefix was built from

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
    ) -> None:
        self.model = model
        self.retriever = retriever
        self.sampling = sampling
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

    def _build_prefix(self, npc_id: str) -> Conversation:
        version = self.retriever.index.version
        picks = self.retriever.prefix(npc_id)  # raises UnknownNpc
        npc = picks[0].entry
        lore = "\n\n".join(render_entry(p.entry, speaker=p.entry.id == npc_id) for p in picks)
        text = SYSTEM_TEMPLATE.format(name=npc.name, lore=lore)
        tokens = self.model.bos() + prefix_tokens(self.model, text)
        return Conversation(npc_id=npc_id, prefix_tokens=tokens, prefix_lore=[p.entry.id for p in picks], index_version=version)

    def conversation(self, session: str, npc_id: str) -> Conversation:
        """The conversation for (`session`, `npc_id`): in memory, else saved under
        ``state_dir/sessions``, else new. Raises `UnknownNpc`."""
        key = (session, npc_id)
        with self._lock:
            conv = self.conversations.get(key)
            if conv is None:
                conv = self._build_prefix(npc_id)
                saved = self._restore(session, npc_id, conv)
                self.conversations[key] = saved or conv
            elif conv.index_version != self.retriever.index.version:
                self._refresh_prefix(conv)
            return self.conversations[key]

    def _refresh_prefix(self, conv: Conversation) -> None:
        """After a lore change (hot reload), rebuild the conversation's stable prefix.

        The turns stay as they were said; when the prefix text changed, the next
        turn's prompt diverges from the cached tokens where the edit is, and the
        context engine re-decodes from there (the NPC knows the edit from its
        next line on). An unchanged prefix costs one prefix build, no decoding.
        """
        fresh = self._build_prefix(conv.npc_id)
        if fresh.prefix_tokens != conv.prefix_tokens:
            log.info("lore changed: prefix of %s rebuilt (%d -> %d tokens)", conv.npc_id, len(conv.prefix_tokens), len(fresh.prefix_tokens))
            conv.prefix_tokens, conv.prefix_lore = fresh.prefix_tokens, fresh.prefix_lore
        conv.index_version = fresh.index_version

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
        conv = Conversation(npc_id=npc_id, prefix_tokens=list(meta["prefix_tokens"]), prefix_lore=list(meta["prefix_lore"]), index_version=fresh.index_version)
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
    ) -> TurnResult:
        """Run one dialogue turn: select lore, append the player's line, stream the reply.

        Blocks until the reply is done; turns of other conversations run meanwhile
        (batched). `priority`: higher goes first when turns wait (the NPC the player
        faces); `client`: fairness between clients (`narrative.scheduler`). `on_text`
        runs on the stepping thread: it must not block.

        Raises:
            lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
            narrative.llm.ContextOverflow: even the prefix and this turn alone do not fit.
            narrative.scheduler.Busy: ``max_queue`` turns already wait (nothing was decoded).
        """
        t0 = time.perf_counter()
        with self._lock:
            conv_lock = self._conv_locks.setdefault((session, npc_id), threading.Lock())
        with conv_lock:
            return self._turn(session, npc_id, line, t0, max_tokens, temperature, seed, cancel, on_text, priority, client)

    def _turn(self, session, npc_id, line, t0, max_tokens, temperature, seed, cancel, on_text, priority, client) -> TurnResult:
        with self.prepare_lock:
            prepared = self._prepare(session, npc_id, line, max_tokens)
        conv, new_lore, seen_lore, sel, user_tokens, history, first, max_tokens = prepared
        fmt = self.model.format
        s = self.sampling
        prompt = history + user_tokens
        self.scheduler.start()
        future = self.scheduler.submit(
            self._key(session, npc_id),
            prompt,
            SamplingParams(
                temperature=s.temperature if temperature is None else temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                repeat_penalty=s.repeat_penalty,
                seed=self.model.settings.seed if seed is None else seed,
            ),
            max_tokens=max_tokens,
            boundaries=(len(conv.prefix_tokens), len(history)),  # checkpoints: end of the stable prefix, end of the history
            priority=priority,
            client=client or session,
            cancel=cancel,
            on_text=on_text,
        )
        gen = future.result()
        text = gen.text.strip()
        if gen.finish_reason != "cancelled":
            close = self.model.marker_tokens(fmt.assistant_close)
            conv.turns.append(TurnRecord(line, text, [p.entry.id for p in new_lore], user_tokens + gen.tokens + close))
            conv.injected.update(p.entry.id for p in new_lore)
            if first:
                del conv.turns[:first]
            self._autosave(session, npc_id, conv)
        return TurnResult(
            text=text,
            finish_reason=gen.finish_reason,
            lore=conv.prefix_lore + seen_lore + [p.entry.id for p in new_lore],
            dropped=[p.entry.id for p in sel.dropped],
            prompt_tokens=gen.prompt_tokens,
            cached_tokens=gen.cached_tokens,
            completion_tokens=len(gen.tokens),
            ttft_ms=(time.perf_counter() - t0) * 1000 - (gen.total_ms - gen.ttft_ms),
            total_ms=(time.perf_counter() - t0) * 1000,
            tokens_per_s=gen.decode_tps,
        )

    def _prepare(self, session: str, npc_id: str, line: str, max_tokens: int | None):
        """Lore selection and the prompt of one turn (under `prepare_lock`)."""
        conv = self.conversation(session, npc_id)
        history = [t.player for t in conv.turns]
        # lore already in the history is not injected again and costs no budget
        sel = self.retriever.select(npc_id, line, history, exclude=conv.injected)
        new_lore: list[Pick] = sel.turn
        seen_lore = sel.present  # triggered again, already in the history
        lore_text = "".join(render_entry(p.entry) + "\n\n" for p in new_lore)
        if lore_text:
            lore_text = "What you know that bears on this:\n" + lore_text
        user_tokens = turn_tokens(self.model, TURN_TEMPLATE.format(lore=lore_text, line=line))
        s = self.sampling
        max_tokens = max_tokens or s.max_tokens
        first = 0
        history = conv.tokens(first)
        if len(history) + len(user_tokens) + max_tokens > self.model.n_ctx:
            # drop the oldest turns (the prefix always stays) down to 3/4 of the window, so the
            # next turns extend the history again instead of re-decoding it after every drop
            room = self.model.n_ctx * 3 // 4
            while len(history) + len(user_tokens) + max_tokens > room and first < len(conv.turns):
                first += 1
                history = conv.tokens(first)
        prompt_len = len(history) + len(user_tokens)
        # what a client may ask (NarrativeService.limits) is served: a turn that still does not fit after
        # dropping the old turns generates what fits (finish_reason 'length'); none fitting is ContextOverflow
        max_tokens = min(max_tokens, self.model.n_ctx - prompt_len)
        if max_tokens < 1:
            raise ContextOverflow(f"the prefix and this line take {prompt_len} tokens of the {self.model.n_ctx} a conversation has")
        return conv, new_lore, seen_lore, sel, user_tokens, history, first, max_tokens

    def close(self) -> None:
        """Stop the stepping thread (waiting and running turns end with an error)."""
        self.scheduler.close()
