"""Backends: where a role's model runs. In process on llama.cpp (`narrative.llm`), or behind
OpenAI-compatible HTTP endpoints (llama.cpp's ``llama-server``, vLLM, SGLang, a hosted API).

Everything that is ours stays in the sidecar whichever backend answers: lore
selection, conversation history, the wire protocol, the batch's prompt,
validation and manifest. Settings choose per role (``dialogue_model.backend``,
``batch_model.backend``: ``"llama.cpp"`` or ``"openai"`` with ``endpoints``).

==================  ===========================================================
module              what lives there
==================  ===========================================================
``http``            `OpenAIEndpoint`: streamed chat completions (SSE), JSON schema
                    output, health; `EndpointDown` / `EndpointRejected`
``router``          `Router`: a role's endpoints in order, fallback, cooldown
``dialogue``        `RemoteDialogueEngine`: dialogue turns on a router
``quests``          `RemoteQuestGenerator`: the batch's items on endpoints
==================  ===========================================================

Nothing leaves the machine unless a setting (or ``narrative batch --endpoint``)
names an endpoint; an endpoint that is not loopback also needs ``allow_offsite``,
and `egress_notice` is what the sidecar prints at startup.
"""

from __future__ import annotations

from collections.abc import Mapping

from narrative.backends.http import ChatResult, EndpointDown, EndpointRejected, Health, OpenAIEndpoint
from narrative.backends.router import AllEndpointsDown, Router
from narrative.settings import ModelSettings, is_loopback

__all__ = [
    "AllEndpointsDown",
    "ChatResult",
    "EndpointDown",
    "EndpointRejected",
    "Health",
    "OpenAIEndpoint",
    "Router",
    "egress_notice",
    "quest_generator",
]


def egress_notice(roles: Mapping[str, ModelSettings]) -> list[str]:
    """One line per role whose prompts go over HTTP, saying where (and whether that leaves the
    machine); [] when every role runs in process. The sidecar prints these at startup."""
    lines = []
    for role, ms in roles.items():
        if ms.backend != "openai":
            continue
        for e in ms.endpoints:
            where = "this machine (loopback)" if is_loopback(e.url) else "ANOTHER MACHINE: text leaves this machine"
            lines.append(f"{role}: prompts (lore, {'player lines' if role == 'dialogue' else 'quest specs'}) are sent to {e.url}, {where}")
    return lines


def quest_generator(model_settings: ModelSettings, options, entries):
    """The batch role's generator: `narrative.batch.generator.QuestGenerator` in process, or
    `narrative.backends.quests.RemoteQuestGenerator` for ``backend = "openai"``."""
    if model_settings.backend == "openai":
        from narrative.backends.quests import RemoteQuestGenerator

        return RemoteQuestGenerator(model_settings, options, entries)
    from narrative.batch.generator import QuestGenerator

    return QuestGenerator(model_settings, options, entries)
