"""Dialogue on an OpenAI-compatible endpoint: lore selection and history stay here, the model is elsewhere.

`RemoteDialogueEngine` answers the calls `narrative.service.NarrativeService`
makes of `narrative.dialogue.DialogueEngine` (``turn``, ``reset``,
``save_sessions``, ``retriever``, ``model.n_ctx``), so the bridge streams the same
``say`` -> ``chunk``* -> ``done`` to the game whichever backend answers.

The prompt is a chat message list built append-only, so the server's own prefix
cache can reuse it turn after turn:

    system: instructions + NPC card + static lore     <- byte-stable, built once per conversation
    user: per-turn lore (new entries only) + player line
    assistant: the reply exactly as streamed (not stripped)
    ...

The same texts as the in-process engine (`narrative.dialogue.SYSTEM_TEMPLATE`,
``TURN_TEMPLATE``), only as messages instead of tokens: the server applies its
chat template. Token counts for the lore budget and history trimming are
estimated (`estimate_tokens`): the sidecar has no tokenizer of a remote model.
Conversations live in memory only (``save_sessions`` saves none).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lore.render import render_entry
from lore.retrieve import Retriever
from narrative.backends.http import ChatResult, OpenAIEndpoint
from narrative.backends.router import Router
from narrative.dialogue import SYSTEM_TEMPLATE, TURN_TEMPLATE, TurnResult
from narrative.llm.sampling import SamplingParams
from narrative.settings import SamplingSettings

log = logging.getLogger(__name__)

BYTES_PER_TOKEN = 4
"""Estimate for token budgets without the model's tokenizer: ~4 bytes of English text per token
(BPE vocabularies of 32k-150k tokens; OpenAI's rule of thumb). SmolLM2 measures ~4.3 on samples/lore."""


def estimate_tokens(text: str) -> int:
    """Approximate tokens of `text` (`BYTES_PER_TOKEN`), at least 1 for non-empty text."""
    n = len(text.encode("utf-8"))
    return (n + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


@dataclass
class RemoteModel:
    """What the service and the runtime read of a dialogue model whose weights are elsewhere.
    ``n_ctx``: the server's window per request (tokens, the ``remote_n_ctx`` setting)."""

    name: str
    n_ctx: int

    @classmethod
    def of(cls, router: Router, n_ctx: int) -> "RemoteModel":
        return cls(name="openai:" + ",".join(ep.settings.model or ep.url for ep in router.endpoints), n_ctx=n_ctx)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)


@dataclass
class RemoteTurn:
    player: str
    user: str  # the user message as sent (lore + line)
    reply: str  # the assistant message as streamed
    lore: list[str]


@dataclass
class RemoteConversation:
    npc_id: str
    system: str
    prefix_lore: list[str]
    turns: list[RemoteTurn] = field(default_factory=list)
    injected: set[str] = field(default_factory=set)
    index_version: int = -1

    def messages(self, first_turn: int = 0) -> list[dict]:
        out = [{"role": "system", "content": self.system}]
        for t in self.turns[first_turn:]:
            out += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply}]
        return out


class RemoteDialogueEngine:
    """Dialogue turns on the endpoints of `router` (first one up answers).

    Args:
        router: the dialogue role's endpoints.
        retriever: lore selection (its token counter should be `estimate_tokens`).
        sampling: default sampling settings.
        model: name and context window (`RemoteModel.of`).
        seed: default sampling seed.
    """

    def __init__(self, router: Router, retriever: Retriever, sampling: SamplingSettings, model: RemoteModel, seed: int = 1234) -> None:
        self.router = router
        self.retriever = retriever
        self.sampling = sampling
        self.seed = seed
        self.model = model
        self.conversations: dict[tuple[str, str], RemoteConversation] = {}
        self._lock = threading.Lock()

    def _build(self, npc_id: str) -> RemoteConversation:
        version = self.retriever.index.version
        picks = self.retriever.prefix(npc_id)  # raises UnknownNpc
        npc = picks[0].entry
        lore = "\n\n".join(render_entry(p.entry, speaker=p.entry.id == npc_id) for p in picks)
        return RemoteConversation(npc_id, SYSTEM_TEMPLATE.format(name=npc.name, lore=lore), [p.entry.id for p in picks], index_version=version)

    def conversation(self, session: str, npc_id: str) -> RemoteConversation:
        """The conversation for (`session`, `npc_id`), new when unknown; its system message is
        rebuilt after a lore change (hot reload). Raises `UnknownNpc`."""
        key = (session, npc_id)
        with self._lock:
            conv = self.conversations.get(key)
            if conv is None:
                conv = self.conversations[key] = self._build(npc_id)
            elif conv.index_version != self.retriever.index.version:
                fresh = self._build(npc_id)
                conv.system, conv.prefix_lore, conv.index_version = fresh.system, fresh.prefix_lore, fresh.index_version
            return conv

    def reset(self, session: str, npc_id: str) -> None:
        """Forget a conversation. Raises `UnknownNpc` for an unknown NPC."""
        self.retriever.npc(npc_id)
        with self._lock:
            self.conversations.pop((session, npc_id), None)

    def save_sessions(self) -> int:
        """Remote conversations are not saved (the server holds no state we could restore): 0."""
        return 0

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
        state: Mapping[str, object] | None = None,
    ) -> TurnResult:
        """One turn: select lore here, stream the reply from the first endpoint up. `priority` and
        `client` are accepted as by `narrative.dialogue.DialogueEngine.turn` and not used: the
        endpoints' own servers schedule what they are sent.

        Raises:
            lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
            narrative.backends.AllEndpointsDown: no endpoint answered.
            narrative.backends.EndpointDown: the stream broke after text reached the player.
            narrative.backends.EndpointRejected: the server refused the request.
        """
        t0 = time.perf_counter()
        conv = self.conversation(session, npc_id)
        # `state` (this turn's game state) gates lore entries' when: conditions; events, declared actions and
        # saved game state are the in-process engine's (the service refuses them for this engine)
        sel = self.retriever.select(npc_id, line, [t.player for t in conv.turns], exclude=conv.injected, state=state)
        lore_text = "".join(render_entry(p.entry) + "\n\n" for p in sel.turn)
        if lore_text:
            lore_text = "What you know that bears on this:\n" + lore_text
        user = TURN_TEMPLATE.format(events="", lore=lore_text, line=line)
        s = self.sampling
        max_tokens = max_tokens or s.max_tokens
        first = 0

        def size(first_turn: int) -> int:
            return sum(estimate_tokens(m["content"]) + 4 for m in conv.messages(first_turn)) + estimate_tokens(user) + max_tokens

        if size(0) > self.model.n_ctx:  # drop the oldest turns down to 3/4 of the window (as the in-process engine)
            while size(first) > self.model.n_ctx * 3 // 4 and first < len(conv.turns):
                first += 1
        messages = conv.messages(first) + [{"role": "user", "content": user}]
        params = SamplingParams(
            temperature=s.temperature if temperature is None else temperature, top_p=s.top_p, top_k=s.top_k,
            repeat_penalty=s.repeat_penalty, seed=self.seed if seed is None else seed,
        )

        def ask(ep: OpenAIEndpoint) -> ChatResult:
            return ep.chat(messages, params, max_tokens=max_tokens, cancel=cancel, on_text=on_text)

        r = self.router.call(ask)
        if r.finish_reason != "cancelled":
            with self._lock:
                conv.turns.append(RemoteTurn(line, user, r.text, [p.entry.id for p in sel.turn]))
                conv.injected.update(p.entry.id for p in sel.turn)
                if first:
                    del conv.turns[:first]
        decode_s = (r.total_ms - r.ttft_ms) / 1000
        return TurnResult(
            text=r.text.strip(),
            finish_reason=r.finish_reason,
            lore=conv.prefix_lore + sel.present + [p.entry.id for p in sel.turn],
            dropped=[p.entry.id for p in sel.dropped],
            prompt_tokens=r.prompt_tokens if r.prompt_tokens is not None else sum(estimate_tokens(m["content"]) for m in messages),
            cached_tokens=r.cached_tokens or 0,
            completion_tokens=r.completion_tokens,
            ttft_ms=(time.perf_counter() - t0) * 1000 - (r.total_ms - r.ttft_ms),
            total_ms=(time.perf_counter() - t0) * 1000,
            tokens_per_s=(r.completion_tokens - 1) / decode_s if decode_s > 0 and r.completion_tokens > 1 else 0.0,
        )
