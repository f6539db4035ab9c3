"""Quest generation on OpenAI-compatible endpoints: the batch's prompt, schema, validation and manifest keys, remote decoding.

`RemoteQuestGenerator` is a `narrative.batch.generator.QuestGenerator` whose
attempts are chat completions with the quest's JSON schema as
``response_format`` (the grammar path stays with the in-process backend). Every
attempt is validated exactly as in process: an output that does not parse or
match the schema is retried with the next seed, and after the retries the item
is ``failed`` with each attempt's reason, never written.

Manifest keys: the model component is the endpoint's model id (``openai:<id>``:
the sidecar cannot fingerprint weights it does not have), the generator
component is `REMOTE_JSON_GENERATOR`; which endpoint made an item is not part of
the key (every endpoint of a batch serves the same model), so moving work between
endpoints never makes an item stale.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from lore.schema import LoreEntry
from narrative.backends.http import OpenAIEndpoint
from narrative.backends.router import Router
from narrative.batch.generator import BatchOptions, ItemResult, QuestGenerator
from narrative.batch.manifest import Components, canonical_digest
from narrative.batch.output import generation_schema
from narrative.batch.prompt import QuestPrompt
from narrative.batch.spec import QuestSpec
from narrative.llm.errors import ModelError
from narrative.settings import ModelSettings

log = logging.getLogger(__name__)

REMOTE_JSON_GENERATOR = "openai-chat-json-1"
"""Names how remote items are decoded (part of their manifest key): a streamed chat completion with
the schema as ``response_format`` (or prompt only, per ``structured_output``), validated here."""


class RemoteQuestGenerator(QuestGenerator):
    """Lore catalog + the endpoints of `router` -> validated quests.

    Args:
        model_settings: the batch role's settings (``backend = "openai"``, its ``endpoints``).
        options: generation options.
        entries: the lore catalog (entry id -> entry).
        router: the endpoints (default: built from ``model_settings.endpoints``).
    """

    def __init__(self, model_settings: ModelSettings, options: BatchOptions, entries: Mapping[str, LoreEntry], router: Router | None = None) -> None:
        self.options = options
        self.entries = entries
        self.model_settings = model_settings
        self.router = router or Router.from_settings("batch", model_settings.endpoints)
        self.parallel, self.batched = 1, False  # the endpoints' servers batch what they are sent (--concurrency)
        self._fingerprint: str | None = None
        self._model_id: str | None = None
        self._model = None
        self._vocab: set[str] | None = None

    @property
    def model(self):
        raise ModelError("a remote quest generator has no in-process model")

    def model_id(self) -> str:
        """The model id of the first endpoint that answers (all endpoints of a batch serve one model;
        `narrative.batch.fanout` warns when their lists differ)."""
        if self._model_id is None:
            self._model_id = self.router.call(lambda ep: ep.model_id())
        return self._model_id

    def close(self) -> None:
        self.router.close()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = f"openai:{self.model_id()}"
        return self._fingerprint

    def settings_digest(self, opts: BatchOptions | None = None) -> str:
        """Digest of the generation options and the request fields that shape the text
        (``extra_body``, ``llama_sampling``, ``structured_output`` of the first endpoint); not
        URLs, timeouts, retries or concurrency."""
        ep = self.router.endpoints[0].settings
        shape = {"extra_body": ep.extra_body, "llama_sampling": ep.llama_sampling, "structured_output": ep.structured_output}
        return canonical_digest({"remote": shape, "options": (opts or self.options).shaping()})

    def components(self, spec: QuestSpec, prompt: QuestPrompt | None = None, opts: BatchOptions | None = None) -> Components:
        return dataclasses.replace(super().components(spec, prompt, opts), generator=REMOTE_JSON_GENERATOR)

    def generate(self, spec: QuestSpec, opts: BatchOptions | None = None, *, endpoint: OpenAIEndpoint | None = None) -> ItemResult:
        """One quest on `endpoint` (default: the router's first endpoint up). Never raises for a bad
        output (status ``failed`` with each attempt's reason).

        Raises:
            UnknownEntry: the spec names an entry the lore does not have.
            narrative.backends.EndpointDown: `endpoint` did not answer (the fan-out moves the item).
            narrative.backends.AllEndpointsDown: no endpoint answered (without `endpoint`).
            narrative.backends.EndpointRejected: the server refused the request.
        """
        opts = opts or self.options
        prompt = self.prompt(spec, opts)
        key = self.components(spec, prompt, opts).key
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        schema = generation_schema(spec, opts.max_chars)
        budget = opts.max_tokens
        model_id = self.model_id()

        def run(ep: OpenAIEndpoint) -> ItemResult:
            r = self.best_of(spec, opts, key, model_id, budget, lambda seed: ep.chat_json(messages, schema, opts.params(seed), max_tokens=budget))
            r.endpoint = ep.url
            return r

        return run(endpoint) if endpoint is not None else self.router.call(run)
