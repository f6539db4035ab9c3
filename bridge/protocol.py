"""The wire protocol: every message between a game and the sidecar, and the codec.

A message is one ZeroMQ frame holding one msgpack map with string keys
(https://github.com/msgpack/msgpack/blob/master/spec.md). Every map has
``v`` (protocol version), ``type`` and ``id``. Replies, chunks and errors carry
the ``id`` of the request they answer. Unknown extra fields are ignored
(forward compatibility); an unknown ``type`` is answered with an ``error``.
The human-readable description with byte-exact examples is ``bridge/PROTOCOL.md``.

The codec is two pure functions, `encode` and `decode`; pickle is never used.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgpack
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError, model_validator

PROTOCOL_VERSION = 1


class ErrorCode:
    """Codes carried by `Error.code`. Clients switch on these, never on messages."""

    BAD_FRAME = "bad_frame"  # not a msgpack map with string keys
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"  # a field is missing, of the wrong type or out of bounds
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_NPC = "unknown_npc"
    UNKNOWN_REQUEST = "unknown_request"
    BUSY = "busy"
    UNKNOWN_QUEST = "unknown_quest"  # generate: no spec with that quest id
    GENERATION_FAILED = "generation_failed"  # generate: no valid text after the bounded retries
    CONTEXT_OVERFLOW = "context_overflow"  # say: max_tokens over ready.limits.max_tokens, or the line does not fit the context
    UNSUPPORTED_SCHEMA = "unsupported_schema"  # declare: an action's parameter schema uses what the sidecar cannot enforce
    INTERNAL = "internal"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = Field(PROTOCOL_VERSION, ge=1, description="Protocol version.")
    id: str = Field(min_length=1, max_length=128, description="Request id; replies carry the id they answer.")


# ---- client -> server ------------------------------------------------------


class Hello(_Msg):
    """Opens a session; answered by `Ready`."""

    type: Literal["hello"] = "hello"
    client: str = Field("", max_length=128, description="Free-form client name, for logs.")


StateValue = Union[StrictBool, StrictInt, StrictFloat, Annotated[StrictStr, Field(max_length=256)]]
"""A game-state value: a flag (bool), a counter (int, float) or a short string (at most 256 characters)."""

STATE_KEY = r"^[A-Za-z0-9_.-]{1,64}$"
"""A game-state key: 1..64 of ``A-Z a-z 0-9 _ . -`` (``quest.heron``, ``gold``)."""

StateMap = dict[Annotated[str, Field(pattern=STATE_KEY)], StateValue]


class Say(_Msg):
    """A player's line to an NPC; answered by `Chunk`* then exactly one `Done` (or one `Error`)."""

    type: Literal["say"] = "say"
    npc: str = Field(min_length=1, max_length=128, description="NPC entry id, as in the lore files.")
    text: str = Field(min_length=1, max_length=4000, description="What the player says.")
    session: str | None = Field(None, max_length=128, description="Conversation key; defaults to the client's connection.")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Upper bound on generated tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = Field(None, description="Sampling seed, for reproducible lines.")
    state: StateMap | None = Field(None, max_length=256, description="Game state merged into the session's before this turn (as a `state` message would); lore entries' ``when:`` conditions read it.")


class Event(_Msg):
    """Something happened in the game that NPCs should know; answered by `Ok` (``count``: NPCs reached).

    The text enters each reached NPC's conversation as tokens after its stable prefix, at the
    start of the next turn (it costs only its own tokens, nothing is re-decoded). Target: exactly
    one of ``npc``, ``npcs``, ``location`` (NPCs whose card names that place), ``faction``; none =
    every NPC. Events wait per conversation (``[dialogue] max_pending_events``, oldest dropped).
    """

    type: Literal["event"] = "event"
    text: str = Field(min_length=1, max_length=1000, description="What happened, in words: 'The player paid Maren 10 gold.'")
    session: str | None = Field(None, max_length=128, description="Conversation key (as in `say`); defaults to the client's connection.")
    npc: str | None = Field(None, min_length=1, max_length=128)
    npcs: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(None, min_length=1, max_length=64)
    location: str | None = Field(None, min_length=1, max_length=128, description="Lore entry id of a place.")
    faction: str | None = Field(None, min_length=1, max_length=128, description="Lore entry id of a faction.")
    state: StateMap | None = Field(None, max_length=256, description="Game state merged into the session's with the event.")

    @model_validator(mode="after")
    def _one_target(self) -> "Event":
        given = [k for k in ("npc", "npcs", "location", "faction") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one target, got {', '.join(given)}")
        return self


class State(_Msg):
    """Sets game state (flags and counters) for a session; answered by `Ok`.

    ``set`` is merged into the session's state, then ``unset`` keys are removed. Lore entries'
    ``when:`` conditions read it on every later turn of that session.
    """

    type: Literal["state"] = "state"
    session: str | None = Field(None, max_length=128)
    set: StateMap = Field(default_factory=dict, max_length=256)
    unset: list[Annotated[str, Field(pattern=STATE_KEY)]] = Field(default_factory=list, max_length=256)


ACTION_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class ActionSpec(BaseModel):
    """One game action an NPC may take: a name, what it does, and the JSON Schema of its arguments."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(pattern=ACTION_NAME, description="'give_item', 'open_shop'.")
    description: str = Field("", max_length=500, description="When to use it, for the model.")
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}},
                             description="JSON Schema (draft 2020-12 subset) of the arguments object; see PROTOCOL.md 'Actions'.")


class FieldSpec(BaseModel):
    """A per-line field the game wants with every line, e.g. ``emotion`` for the animation."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    enum: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=32)
    description: str = Field("", max_length=300)


class Declare(_Msg):
    """Declares the actions and per-line fields of one NPC (``npc``) or of every NPC (no ``npc``) in a
    session; answered by `Ok`. Replaces an earlier declaration of the same scope; an NPC's own
    declaration wins over the session's. Declared actions become part of the NPC's stable prefix:
    declare before the first `say` (a later change re-decodes that conversation once).
    An empty ``actions`` with no ``fields`` removes the declaration.
    """

    type: Literal["declare"] = "declare"
    session: str | None = Field(None, max_length=128)
    npc: str | None = Field(None, min_length=1, max_length=128)
    actions: list[ActionSpec] = Field(default_factory=list, max_length=32)
    fields: dict[Annotated[str, Field(pattern=ACTION_NAME)], FieldSpec] = Field(default_factory=dict, max_length=8)
    max_actions: int = Field(1, ge=0, le=4, description="Actions one line may end with.")

    @model_validator(mode="after")
    def _unique_names(self) -> "Declare":
        names = [a.name for a in self.actions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"action names must be unique: {', '.join(dup)}")
        return self


class Cancel(_Msg):
    """Stops the stream of request `target`; that stream ends with `Done` (finish_reason ``cancelled``)."""

    type: Literal["cancel"] = "cancel"
    target: str = Field(min_length=1, max_length=128)


class Reset(_Msg):
    """Forgets the history of one conversation; answered by `Ok`."""

    type: Literal["reset"] = "reset"
    npc: str = Field(min_length=1, max_length=128)
    session: str | None = Field(None, max_length=128)


class Ping(_Msg):
    """Liveness probe; answered by `Pong`. Any message counts as liveness."""

    type: Literal["ping"] = "ping"


class LoreQuery(_Msg):
    """Which lore entries a line would retrieve for an NPC; answered by `LoreResult`."""

    type: Literal["lore.query"] = "lore.query"
    text: str = Field(min_length=1, max_length=4000)
    npc: str | None = Field(None, max_length=128)
    state: StateMap | None = Field(None, max_length=256, description="Game state for entries' ``when:`` conditions (with ``npc``).")


class LoreExplain(_Msg):
    """Why each lore entry is (or is not) in one turn for an NPC; answered by `LoreExplanation`.

    Runs the turn's real selection (the same rolls and budget) without generating anything.
    """

    type: Literal["lore.explain"] = "lore.explain"
    npc: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=4000, description="The player's line.")
    history: list[str] = Field(default_factory=list, max_length=64, description="Earlier lines, oldest first (scanned for keys).")
    state: StateMap | None = Field(None, max_length=256, description="Game state for entries' ``when:`` conditions (default: none set).")


# ---- server -> client ------------------------------------------------------


class Ready(_Msg):
    """Answer to `Hello`: versions, models, NPCs and limits."""

    type: Literal["ready"] = "ready"
    server: str
    models: dict[str, str] = Field(description="Role ('dialogue', 'embedding') -> model file name.")
    npcs: list[str]
    limits: dict[str, int] = Field(description="max_frame_bytes, max_tokens, n_ctx.")


class Chunk(_Msg):
    """A piece of a streamed NPC line. ``seq`` counts from 0 within one request."""

    type: Literal["chunk"] = "chunk"
    seq: int = Field(ge=0)
    text: str


class Done(_Msg):
    """Ends a `Say` stream.

    ``finish_reason``: ``stop`` (end of turn), ``length`` (max_tokens reached),
    ``cancelled`` (cancel or peer gone), ``error``.
    ``tokens``: prompt (fed this turn), cached (reused from the prefix), completion.
    ``timings``: ttft_ms (request received -> first chunk), total_ms, tokens_per_s (decode).
    ``text`` is the spoken line only (reasoning and the action block are never in it).
    """

    type: Literal["done"] = "done"
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    text: str
    lore: list[str] = Field(default_factory=list, description="Ids of the lore entries in the prompt for this turn.")
    tokens: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    fields: dict[str, str] | None = Field(None, description="The declared per-line fields (name -> one of its enum values), when declared.")
    actions: int | None = Field(None, ge=0, description="How many `action` messages this turn sent (when actions are declared).")
    rejected: list["Rejected"] | None = Field(None, description="Actions the model wrote that were not sent (invalid), when any.")
    forgotten_turns: int | None = Field(None, ge=0, description="Oldest turns of this conversation dropped to fit its context (the NPC no longer remembers them; card and static lore stay).")


class Rejected(BaseModel):
    """An action the model wrote that failed validation and was never sent. ``reason`` in words."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    reason: str


Done.model_rebuild()


class Action(_Msg):
    """A game action an NPC takes at the end of its line (after the last `Chunk`, before `Done`).

    ``id``: the `Say` it belongs to; ``seq`` counts from 0 within that turn; ``name`` is a
    declared action and ``args`` validates against its declared schema (checked before sending).
    """

    type: Literal["action"] = "action"
    seq: int = Field(ge=0)
    name: str
    args: dict = Field(default_factory=dict)


class Pong(_Msg):
    type: Literal["pong"] = "pong"


class Ok(_Msg):
    """Plain success reply. ``count``: for an `Event`, how many NPCs it reached."""

    type: Literal["ok"] = "ok"
    count: int | None = Field(None, ge=0)


class LoreHit(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    entry: str
    name: str
    kind: str
    score: float
    why: str = Field(description="'key:<key>', 'vector:<similarity>', 'card', 'constant' or 'scene'.")
    tokens: int


class LoreResult(_Msg):
    type: Literal["lore.result"] = "lore.result"
    entries: list[LoreHit]


class LoreWhy(BaseModel):
    """One entry in a `LoreExplanation`.

    ``placement``: ``prefix`` or ``turn``. ``why``: ``card``, ``scene``,
    ``constant``, ``prefix``, ``key:<key>``, ``vector:<similarity>`` or ``text:<bm25>``.
    ``reason`` (dropped entries only): ``budget``, ``scope``, ``state`` (its ``when``
    does not hold), ``probability``, ``recursion``, ``secondary``, ``disabled``. ``why`` of
    a gated entry standing in every turn: ``when:constant``, ``when:scene``, ``when:prefix``. ``tokens``: the entry's cost in
    the dialogue model's tokens. ``found_in``: ``line``, ``history:<n>`` or
    ``recursion:<entry id>``. ``source``: the lore file, relative to the lore folder.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    entry: str
    name: str
    kind: str
    placement: str
    why: str
    reason: str = ""
    tokens: int
    key: str | None = None
    similarity: float | None = None
    lexical: float | None = Field(None, description="BM25 score of the entry's text for the line, when among the best.")
    found_in: str = ""
    source: str = ""
    full_tokens: int | None = Field(None, description="Set when the entry was trimmed to its leading sentences to fit the budget: the whole entry's cost (``tokens`` is what was injected).")
    when: str | None = Field(None, description="The entry's game-state condition (``when:`` in its front matter), in words.")
    holds: bool | None = Field(None, description="With ``when``: whether it holds in the request's ``state``.")
    unmet: list[str] | None = Field(None, description="With ``when`` not holding: which parts fail, in words.")


class LoreExplanation(_Msg):
    """Answer to `LoreExplain`. Token figures are the dialogue model's tokens."""

    type: Literal["lore.explanation"] = "lore.explanation"
    npc: str
    budget: int = Field(description="Tokens of per-turn lore allowed.")
    used: int = Field(description="Tokens of per-turn lore selected.")
    prefix_budget: int
    prefix_used: int
    included: list[LoreWhy]
    dropped: list[LoreWhy]


class LoreChanged(_Msg):
    """Event (unsolicited, sent to every peer that said hello): lore files were re-indexed while serving.

    ``id`` is an event id (``ev-<n>``), not a request's. ``files`` are relative to the lore folder.
    """

    type: Literal["lore.changed"] = "lore.changed"
    files: list[str]
    entries: int = Field(description="Lore entries in service after the change.")
    added: int = Field(0, description="Chunks (re)embedded.")
    deleted: int = Field(0, description="Chunks removed.")


class LoreFileError(_Msg):
    """Event: a saved lore file is broken; its last good version stays in service. ``line`` is 1-based (0: whole file)."""

    type: Literal["lore.error"] = "lore.error"
    path: str
    line: int
    message: str


class Shutdown(_Msg):
    """Event (sent to every peer that said hello): the sidecar is going down; no reply will follow
    for requests in flight. ``reason``: ``stopping`` (asked to stop: Ctrl-C, SIGTERM, a service
    manager) or ``engine_failed`` (the model can serve nothing more; ``message`` says why).
    A client should fail its pending requests now instead of waiting for the heartbeat timeout,
    and reconnect with backoff if it expects a restart."""

    type: Literal["shutdown"] = "shutdown"
    reason: Literal["stopping", "engine_failed"]
    message: str = ""


class Generate(_Msg):
    """A one-off content job: generate one quest from its spec; answered by `GenerateResult` (or `Error`).

    Exactly one of ``quest`` (a spec id in the sidecar's quest folder) and ``spec``
    (an inline spec map, validated like a spec file, see ``narrative/batch/spec.py``).
    The batch model loads on the first request.
    """

    type: Literal["generate"] = "generate"
    kind: Literal["quest"] = Field("quest", description="What to generate; only 'quest' for now.")
    quest: str | None = Field(None, max_length=128)
    spec: dict | None = Field(None, description="Inline quest spec (YAML fields as a map).")
    seed: int | None = Field(None, description="Sampling seed; the same seed and inputs give the same text.")
    max_tokens: int | None = Field(None, ge=16, le=8192)

    @model_validator(mode="after")
    def _one_source(self) -> "Generate":
        if (self.quest is None) == (self.spec is None):
            raise ValueError("give exactly one of 'quest' (an id) and 'spec' (a map)")
        return self


class GenFinding(BaseModel):
    """A post-check finding (``narrative/batch/checks.py``): ``severity`` 'error' or 'warning'."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    field: str
    check: str
    severity: str
    message: str


class GenerateResult(_Msg):
    """Answer to `Generate`. ``output``: the validated quest (as written by ``narrative batch``:
    id, title, summary, dialogue, journal, meta). ``status``: 'ok', or 'flagged' when error
    findings are left after the retries. ``tokens``: prompt, completion; ``timings``: prefill_ms, decode_ms."""

    type: Literal["generate.result"] = "generate.result"
    status: Literal["ok", "flagged"]
    output: dict
    findings: list[GenFinding] = Field(default_factory=list)
    attempts: int = Field(ge=1)
    tokens: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)


class Error(_Msg):
    """A request failed. ``id`` is the request's id, or ``"?"`` when the frame could not be read or its
    ``id`` is not a string of 1..128 characters (`UNREADABLE_ID`)."""

    type: Literal["error"] = "error"
    code: str
    message: str
    retry_after_ms: int | None = Field(None, ge=0, description="With code 'busy': wait at least this long before sending the request again.")


Request = Annotated[Union[Hello, Say, Event, State, Declare, Cancel, Reset, Ping, LoreQuery, LoreExplain, Generate], Field(discriminator="type")]
Reply = Annotated[
    Union[Ready, Chunk, Action, Done, Pong, Ok, LoreResult, LoreExplanation, LoreChanged, LoreFileError, Shutdown, GenerateResult, Error],
    Field(discriminator="type"),
]
Message = Annotated[
    Union[
        Hello, Say, Event, State, Declare, Cancel, Reset, Ping, LoreQuery, LoreExplain, Generate,
        Ready, Chunk, Action, Done, Pong, Ok, LoreResult, LoreExplanation, LoreChanged, LoreFileError, Shutdown, GenerateResult, Error,
    ],
    Field(discriminator="type"),
]

REQUEST_TYPES = frozenset({"hello", "say", "event", "state", "declare", "cancel", "reset", "ping", "lore.query", "lore.explain", "generate"})
_request_adapter: TypeAdapter[Request] = TypeAdapter(Request)
_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)


UNREADABLE_ID = "?"
"""The ``id`` of an error answering a frame whose own ``id`` is missing or unusable (not a str of 1..128 chars)."""


def usable_id(value: object) -> str:
    """`value` when it can be echoed as a reply's ``id`` (a str of 1..128 chars), else `UNREADABLE_ID`."""
    return value if isinstance(value, str) and 1 <= len(value) <= 128 else UNREADABLE_ID


class ProtocolError(Exception):
    """A frame that cannot be turned into a message. ``code`` is an `ErrorCode`; ``id`` the request id if known."""

    def __init__(self, code: str, message: str, request_id: str = "?") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def encode(msg: BaseModel) -> bytes:
    """Message -> one msgpack frame (a map with string keys; None-valued fields are omitted)."""
    return msgpack.packb(msg.model_dump(mode="json", exclude_none=True), use_bin_type=True)


def _unpack(frame: bytes, max_bytes: int | None) -> dict:
    if max_bytes is not None and len(frame) > max_bytes:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame is {len(frame)} bytes, limit is {max_bytes}")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not valid msgpack: maps and arrays nested deeper than msgpack reads (at most {MAX_DEPTH} are answered)") from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not valid msgpack: {str(exc) or type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload must be a msgpack map, got {type(obj).__name__}")
    depth = _depth(obj)
    if depth > MAX_DEPTH:
        raise ProtocolError(ErrorCode.INVALID, f"maps and arrays nested {depth} deep (at most {MAX_DEPTH})", usable_id(obj.get("id")))
    return obj


MAX_DEPTH = 32
"""Deepest nesting of maps and arrays in a message (the deepest real one, a `declare`, is ~8); deeper
ones are refused before validation, whose recursion (and error reports) would fail on them."""


def _depth(obj: object) -> int:
    """Nesting depth of maps/arrays in `obj` (iterative: a 1,000-deep frame costs no recursion); stops
    counting past `MAX_DEPTH`."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return deepest


def _validate(adapter: TypeAdapter, obj: dict, known: frozenset[str] | None):
    rid = usable_id(obj.get("id"))
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID, "field 'type': required string", rid)
    if known is not None and kind not in known:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", rid)
    version = obj.get("v", PROTOCOL_VERSION)
    if isinstance(version, int) and version > PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})", rid
        )
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] == kind:  # drop the discriminator tag pydantic puts first
                loc = loc[1:]
            problems.append(f"field '{'.'.join(loc) or '?'}': {err['msg']}")
        raise ProtocolError(ErrorCode.INVALID, "; ".join(problems), rid) from None


def decode_request(frame: bytes, max_bytes: int | None = None) -> Request:
    """One frame -> a validated client request.

    Raises:
        ProtocolError: ``frame_too_large``, ``bad_frame``, ``unknown_type``,
            ``unsupported_version`` or ``invalid`` (naming each bad field).
    """
    return _validate(_request_adapter, _unpack(frame, max_bytes), REQUEST_TYPES)


def decode(frame: bytes) -> Message:
    """One frame -> any validated message (requests and replies; used by clients and tests).

    Raises:
        ProtocolError: as `decode_request`, except an unknown type is ``invalid``.
    """
    return _validate(_message_adapter, _unpack(frame, None), None)
