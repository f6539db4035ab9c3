"""The one narrow service the bridge talks to: everything a game can ask of the generation side.

`bridge.server` is a thin adapter from wire messages to these calls and from
their results back to wire messages; it never reaches into the dialogue
engine, the retriever or the lore index. Calls that run a model or touch the
index are blocking: the server runs them on its decode worker thread, except
`turn`, which it runs on a pool of `turn_slots` threads: turns of different
conversations decode together (continuous batching, `narrative.scheduler`),
each call blocking until its reply is done.

Errors: every request-level failure is a `ServiceError` whose ``code`` is the
wire error code of ``bridge/PROTOCOL.md`` (``unknown_npc``, ``unknown_quest``,
``invalid``, ``generation_failed``, ``context_overflow``, ``busy``), so the server maps all of them in one
place. `EngineDead` is the fatal family (vLLM's ``EngineDeadError``): the model
can serve no further request, and the server tells every client before it stops.

==================  ===========================================================
call                what it answers
==================  ===========================================================
`npcs`              ids of the NPCs a client can talk to
`limits`            ``max_tokens`` a turn may ask for, ``n_ctx`` per conversation
`turn`              one dialogue turn, streamed through ``on_text``; its actions and fields in the result
`event`             a game event for one NPC, a list, a place's or a faction's NPCs, or all
`set_state`         merge game state (flags, counters) into a session
`declare`           the actions and per-line fields of an NPC (or of every NPC) in a session
`reset`             forget one conversation
`query_lore`        which entries a line retrieves (raw similarity, or an NPC's turn)
`explain`           why each entry is in or out of one turn
`generate_quest`    one quest from a spec (the batch's generator)
`watch_lore`        hot reload of the lore folder, as typed events
`save_sessions`     persist conversations (shutdown; turns also save their own, see ``context.save_every_s``)
==================  ===========================================================
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lore.explain import explain as explain_turn
from lore.retrieve import UnknownNpc
from lore.schema import Kind
from narrative.batch.generator import ItemResult, QuestGenerator
from narrative.batch.prompt import UnknownEntry
from narrative.actions import ActionSet, ActionSpec, FieldSpec, UnsupportedSchema
from narrative.batch.spec import QuestSpec, SpecError, load_specs, parse_spec
from narrative.dialogue import DialogueEngine, StateValue, TooMuchState, TurnResult
from narrative.llm import ContextOverflow, ModelError
from narrative.scheduler import Busy

log = logging.getLogger(__name__)

MAX_TOKENS = 4096
"""The most tokens a client may ask one turn for (``say.max_tokens``; announced in ``ready.limits``)."""

FATAL_AFTER = 3
"""Turns in a row that fail inside the model (not a per-request condition such as a context
overflow) after which the engine is declared dead (`EngineDead`)."""


class ServiceError(Exception):
    """A request the service cannot serve; the sidecar goes on. ``code``: the wire error code."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownNpcError(ServiceError):
    """The NPC id is not an NPC in the lore index (the message lists the known ones)."""

    code = "unknown_npc"


class UnknownQuestError(ServiceError):
    """No quest spec has this id (the message lists the known ones)."""

    code = "unknown_quest"


class InvalidRequestError(ServiceError):
    """A request field is wrong in a way the wire schema cannot see (a spec that does not
    validate, lore a spec names that does not exist); the message names the field."""

    code = "invalid"


class BusyError(ServiceError):
    """Too many turns wait for the model (``[context] max_queue``): nothing was decoded; try again
    after ``retry_after_ms`` (an estimate from recent turn durations)."""

    code = "busy"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class GenerationFailedError(ServiceError):
    """No valid text after the bounded retries; the message gives each attempt's reason."""

    code = "generation_failed"


class ContextOverflowError(ServiceError):
    """The turn cannot fit: ``max_tokens`` is over `Limits.max_tokens`, or the NPC's prefix and this
    line alone leave no room in the conversation's context."""

    code = "context_overflow"


class UnsupportedSchemaError(ServiceError):
    """A declared action or field the sidecar cannot enforce (the message names action and property)."""

    code = "unsupported_schema"


class EngineDead(Exception):
    """Fatal: the engine can serve no further request (e.g. the model failed in a way that
    leaves its context unusable). The server sends ``shutdown`` to every client and stops."""


@dataclass(frozen=True)
class Limits:
    """What a client may ask for. ``max_tokens``: per turn; ``n_ctx``: tokens of one conversation's context."""

    max_tokens: int
    n_ctx: int


@dataclass(frozen=True)
class LoreHit:
    """One entry a line retrieves. ``why``: card, scene, constant, prefix, ``key:<key>``,
    ``vector:<similarity>`` or ``text:<bm25>``; ``tokens``: its cost in the dialogue model's tokens."""

    entry: str
    name: str
    kind: str
    score: float
    why: str
    tokens: int


@dataclass(frozen=True)
class Explanation:
    """Why each entry is in or out of one turn (`lore.explain.explain`). Token figures are
    dialogue-model tokens; ``included``/``dropped`` items are `lore.explain.pick_dict` maps."""

    npc: str
    budget: int
    used: int
    prefix_budget: int
    prefix_used: int
    included: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class LoreChanged:
    """Hot reload: lore files were re-indexed. ``entries``: lore entries in service (NPC cards
    excluded); ``added``/``deleted``: chunks embedded / removed; paths relative to the lore folder."""

    files: list[str]
    entries: int
    added: int
    deleted: int


@dataclass(frozen=True)
class LoreBroken:
    """Hot reload: a saved lore file is broken; its last good version stays in service. ``line``: 1-based, 0 = whole file."""

    path: str
    line: int
    message: str


LoreEvent = LoreChanged | LoreBroken


@contextlib.contextmanager
def _domain_errors() -> Iterator[None]:
    """Translate the lower layers' exceptions into `ServiceError`s (the one place that does)."""
    try:
        yield
    except UnknownNpc as exc:
        raise UnknownNpcError(exc.args[0]) from None
    except UnknownEntry as exc:
        raise InvalidRequestError(str(exc.args[0])) from None
    except SpecError as exc:
        raise InvalidRequestError(str(exc)) from None
    except Busy as exc:
        raise BusyError(str(exc), exc.retry_after_ms) from None
    except UnsupportedSchema as exc:
        raise UnsupportedSchemaError(str(exc)) from None
    except TooMuchState as exc:
        raise InvalidRequestError(str(exc)) from None


class NarrativeService:
    """The generation side as the bridge sees it.

    Args:
        engine: the dialogue engine (model, context engine, retriever); None serves quests only
            (no NPCs; `turn` and the lore calls raise `InvalidRequestError`).
        models: role -> model file name, announced to clients.
        quests: the quest generator answering `generate_quest`; None: those requests are refused.
        specs_dir: where `generate_quest` looks quest ids up (``<specs_dir>/**/<id>.yaml``).
    """

    def __init__(
        self,
        engine: DialogueEngine | None,
        *,
        models: Mapping[str, str] | None = None,
        quests: QuestGenerator | None = None,
        specs_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.models = dict(models or {})
        self.quests = quests
        self.specs_dir = specs_dir
        self._failures = 0  # turns in a row that failed inside the model

    # ---- dialogue ----------------------------------------------------------

    def _dialogue(self) -> DialogueEngine:
        if self.engine is None:
            raise InvalidRequestError("this sidecar serves no dialogue (no dialogue model)")
        return self.engine

    def npcs(self) -> list[str]:
        """Ids of the NPCs in the lore index, in index order ([] without a dialogue engine)."""
        return [e.id for e in self.engine.retriever.index.npcs()] if self.engine is not None else []

    def limits(self) -> Limits:
        """What is servable: ``max_tokens`` is at most half a conversation's context (`MAX_TOKENS`
        at most), so a turn asking for it always fits once old turns are dropped; a longer
        conversation's turn may end earlier (``length``) when the prefix leaves less room."""
        n_ctx = self.engine.model.n_ctx if self.engine is not None else 0
        return Limits(max_tokens=min(MAX_TOKENS, n_ctx // 2), n_ctx=n_ctx)

    def turn_slots(self) -> int:
        """How many `turn` calls may usefully block at once: turns decoding together
        (``max_turns``) plus turns waiting for them (``max_queue``); 1 without a scheduler."""
        sch = getattr(self.engine, "scheduler", None)
        return sch.max_turns + sch.max_queue if sch is not None else 1

    def turn(
        self,
        session: str,
        npc: str,
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
        """One dialogue turn (`narrative.dialogue.DialogueEngine.turn`); blocking, streams through `on_text`
        (called on the model's stepping thread: it must not block). Other conversations' turns
        decode in the same steps. `priority`: higher first while turns wait; `client`: fairness;
        `state`: merged into the session's game state first. The result holds the turn's valid
        actions, its fields and what was rejected (`TurnResult`).

        Raises:
            BusyError: ``max_queue`` turns already wait (nothing decoded; ``retry_after_ms`` says when to retry).
            UnknownNpcError: `npc` is not an NPC (raised before any token).
            narrative.llm.ModelError: the model failed on this turn (the server answers ``internal``).
            ContextOverflowError: `max_tokens` is over `limits`, or the line cannot fit at all.
            EngineDead: the `FATAL_AFTER`-th turn in a row failed inside the model.
        """
        limit = self.limits().max_tokens
        if max_tokens is not None and max_tokens > limit:
            raise ContextOverflowError(f"max_tokens {max_tokens} is over this sidecar's limit of {limit} (ready.limits.max_tokens)")
        try:
            with _domain_errors():
                extra = {"state": state} if state else {}
                result = self._dialogue().turn(session, npc, line, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                               cancel=cancel, on_text=on_text, priority=priority, client=client, **extra)
        except ContextOverflow as exc:
            raise ContextOverflowError(str(exc)) from None
        except ModelError as exc:
            # a remote endpoint being down is not this engine dying (narrative.backends errors are recoverable)
            if not getattr(exc, "recoverable", False):
                self._failures += 1
                if self._failures >= FATAL_AFTER:
                    raise EngineDead(f"{self._failures} turns in a row failed in the model; the last: {type(exc).__name__}: {exc}") from exc
            raise
        self._failures = 0
        return result

    def _local(self, what: str) -> DialogueEngine:
        engine = self._dialogue()
        if not isinstance(engine, DialogueEngine):
            raise InvalidRequestError(f"{what} needs the in-process dialogue engine (dialogue_model.backend 'llama.cpp'), not {type(engine).__name__}")
        return engine

    def event(self, session: str, text: str, *, npc: str | None = None, npcs: list[str] | None = None,
              location: str | None = None, faction: str | None = None, state: Mapping[str, StateValue] | None = None) -> int:
        """Queue a game event for the NPCs it concerns (at most one target: `npc`, `npcs`, the NPCs whose
        card names `location` or `faction`; none: every NPC); `state` is merged into the session's first.
        Returns how many NPCs it reached (0 when a place or faction has no NPC).

        Raises:
            UnknownNpcError: a named NPC does not exist (nothing was queued).
            InvalidRequestError: `location`/`faction` is not a lore entry; too much state; a remote dialogue engine.
        """
        engine = self._local("event")
        index = engine.retriever.index
        cards = index.npcs()
        with _domain_errors():
            if npc is not None or npcs is not None:
                targets = [npc] if npc is not None else list(dict.fromkeys(npcs or []))
                for t in targets:
                    engine.retriever.npc(t)
            elif location is not None or faction is not None:
                ref = location if location is not None else faction
                if ref not in index.entries:
                    raise InvalidRequestError(f"{'location' if location is not None else 'faction'} {ref!r} is not a lore entry id")
                attr = "location" if location is not None else "faction"
                targets = [c.id for c in cards if c.npc is not None and getattr(c.npc, attr) == ref]
            else:
                targets = [c.id for c in cards]
            if state:
                engine.set_state(session, state)
            return engine.add_event(session, text, targets)

    def set_state(self, session: str, values: Mapping[str, StateValue], unset: list[str] | None = None) -> dict[str, StateValue]:
        """Merge game state into a session (then remove `unset` keys); returns the session's state.
        Raises `InvalidRequestError` (too many keys, remote dialogue engine)."""
        engine = self._local("state")
        with _domain_errors():
            return engine.set_state(session, values, unset or [])

    def declare(self, session: str, npc: str | None, actions: list[dict], fields: dict[str, dict], max_actions: int) -> None:
        """Declare the actions (``name``, ``description``, ``parameters``: JSON Schema) and per-line fields
        (name -> ``enum``, ``description``) of `npc` (None: every NPC) in `session`.

        Raises:
            UnsupportedSchemaError: a schema the grammar cannot enforce.
            UnknownNpcError: `npc` is not an NPC.
            InvalidRequestError: a remote dialogue engine.
        """
        engine = self._local("declare")
        aset = ActionSet(
            actions=tuple(ActionSpec(a["name"], a.get("description", ""), a.get("parameters") or {"type": "object", "properties": {}}) for a in actions),
            fields=tuple(FieldSpec(k, tuple(f["enum"]), f.get("description", "")) for k, f in fields.items()),
            max_actions=max_actions,
        )
        with _domain_errors():
            engine.declare(session, npc, aset)

    def reset(self, session: str, npc: str) -> None:
        """Forget one conversation (and its saved state). Raises `UnknownNpcError`."""
        with _domain_errors():
            self._dialogue().reset(session, npc)

    def save_sessions(self) -> int:
        """Save every conversation that holds model state; returns how many (0 without a state dir)."""
        return self.engine.save_sessions() if self.engine is not None else 0

    # ---- lore ---------------------------------------------------------------

    def query_lore(self, text: str, npc: str | None = None, state: Mapping[str, StateValue] | None = None) -> list[LoreHit]:
        """Entries `text` retrieves: with `npc`, that NPC's prefix and turn lore (scope and budget
        applied); without, the raw nearest entries by embedding. Raises `UnknownNpcError`."""
        r = self._dialogue().retriever
        with _domain_errors():
            if npc:
                sel = r.select(npc, text, state=state)
                return [LoreHit(x.entry.id, x.entry.name, x.entry.kind.value, round(x.score, 4), x.why, x.tokens) for x in sel.prefix + sel.turn]
            hits = []
            for eid, sim in r.index.nearest(text, r.vector_k):
                e = r.index.entries.get(eid)
                if e is not None:
                    hits.append(LoreHit(e.id, e.name, e.kind.value, round(sim, 4), f"vector:{sim:.3f}", r.tokens(e)))
            return hits

    def explain(self, npc: str, text: str, history: list[str], state: Mapping[str, StateValue] | None = None) -> Explanation:
        """Why each entry is in or out of the turn `text` would start (the turn's real selection) with
        game `state` (for entries' ``when:`` conditions). Raises `UnknownNpcError`."""
        with _domain_errors():
            d = explain_turn(self._dialogue().retriever, npc, text, history, state=dict(state) if state else None)
        return Explanation(
            npc=d["npc"], budget=d["budget"], used=d["used"], prefix_budget=d["prefix_budget"],
            prefix_used=d["prefix_used"], included=d["included"], dropped=d["dropped"],
        )

    async def watch_lore(
        self,
        root: Path,
        run_blocking: Callable[..., Awaitable],
        on_event: Callable[[LoreEvent], Awaitable[None]],
        stop,
    ) -> None:
        """Hot reload (`lore.watch.watch_lore`): re-index each saved lore file under `root` through
        `run_blocking` (the decode worker: never during a turn) and report a `LoreChanged` or one
        `LoreBroken` per problem through `on_event`, until the asyncio event `stop` is set."""
        from lore.watch import watch_lore

        index = self._dialogue().retriever.index

        async def translate(ev) -> None:
            if ev.kind == "error":
                for prob in ev.problems:
                    await on_event(LoreBroken(path=ev.files[0], line=prob.line, message=prob.message))
            else:
                n = sum(1 for e in index.entries.values() if e.kind != Kind.npc)
                await on_event(LoreChanged(files=ev.files, entries=n, added=ev.report.added, deleted=ev.report.deleted))

        lock = getattr(self.engine, "prepare_lock", None)

        async def run_locked(fn, *args):  # a reload never runs while a turn selects lore
            def call():
                if lock is None:
                    return fn(*args)
                with lock:
                    return fn(*args)

            return await run_blocking(call)

        await watch_lore(root, index, run_locked, translate, stop)

    # ---- content generation -------------------------------------------------

    def generate_quest(self, source: str | dict, *, seed: int | None = None, max_tokens: int | None = None) -> ItemResult:
        """One quest from a spec id (looked up under ``specs_dir``) or an inline spec map (validated
        like a spec file), generated and post-checked exactly as ``narrative batch`` does.

        Returns:
            the item (status ``ok`` or ``flagged``).

        Raises:
            UnknownQuestError: no spec has the id.
            InvalidRequestError: no quest generator here; the spec does not validate; it names unknown lore.
            GenerationFailedError: no valid text after the retries.
            narrative.llm.ModelError: the batch model cannot be loaded.
        """
        if self.quests is None:
            raise InvalidRequestError("this sidecar does not serve 'generate' (no quest generator)")
        with _domain_errors():
            spec = self._find_spec(source) if isinstance(source, str) else self._parse_spec(source)
            opts = self.quests.options
            changes = {k: v for k, v in (("seed", seed), ("max_tokens", max_tokens)) if v is not None}
            r = self.quests.generate(spec, opts.model_copy(update=changes) if changes else None)
        if r.quest is None or r.status == "failed":
            raise GenerationFailedError(r.error or "no valid text")
        return r

    def _parse_spec(self, spec: dict) -> QuestSpec:
        import yaml

        return parse_spec(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), Path("<generate request>"))

    def _find_spec(self, quest_id: str) -> QuestSpec:
        if self.specs_dir is None:
            raise UnknownQuestError(f"unknown quest {quest_id!r}: this sidecar has no quest folder")
        specs, problems = load_specs(self.specs_dir)
        for sf in specs:
            if sf.spec.id == quest_id:
                return sf.spec
        for p in problems:
            if f"/{quest_id}." in p:
                raise SpecError([p])
        raise UnknownQuestError(f"unknown quest {quest_id!r} in {self.specs_dir} (known: {', '.join(s.spec.id for s in specs) or 'none'})")
