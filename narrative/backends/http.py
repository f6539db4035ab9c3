"""One OpenAI-compatible HTTP endpoint: streamed chat completions (SSE), JSON-schema output, health.

Speaks the subset of the OpenAI chat API that llama.cpp's ``llama-server``, vLLM,
SGLang, ``python -m llama_cpp.server`` and hosted APIs share: ``POST
/chat/completions`` with ``stream: true`` (server-sent events, one ``data:`` JSON
chunk per delta, ``data: [DONE]`` last) and ``GET /models``. The HTTP client is
httpx, the SSE parsing httpx-sse; nothing here writes HTTP by hand.

Failures come in two families, like the service's:

- `EndpointDown`: the request failed in transport (connection refused or reset,
  timeout, HTTP 429 or 5xx) ``retries`` times with backoff. The endpoint's health,
  not the request's fault: the router (`narrative.backends.router`) and the batch
  fan-out (`narrative.batch.fanout`) move the work to another endpoint.
- `EndpointRejected`: the server refused this request (HTTP 4xx, an error event in
  the stream). Another endpoint would refuse it too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, connect_sse

from narrative.llm.errors import ModelError
from narrative.llm.json_gen import JsonGeneration
from narrative.llm.sampling import SamplingParams
from narrative.settings import EndpointSettings, is_loopback

log = logging.getLogger(__name__)

_TRANSPORT = (httpx.TransportError, SSEError)  # connect/read/write errors, timeouts, protocol errors; a cut event stream


class EndpointDown(ModelError):
    """The endpoint did not answer (transport failure or HTTP 429/5xx after the retries).
    ``streamed``: text had already reached the caller's ``on_text`` (no silent retry elsewhere)."""

    recoverable = True  # the service does not count it toward EngineDead: the endpoint may come back

    def __init__(self, message: str, *, url: str, streamed: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.streamed = streamed


class EndpointRejected(ModelError):
    """The endpoint refused the request (HTTP 4xx other than 429, or an error in the stream)."""

    recoverable = True

    def __init__(self, message: str, *, url: str, status: int = 0) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


@dataclass
class ChatResult:
    """One chat completion. Tokens as the server counts them (``usage``; without it,
    ``completion_tokens`` counts content chunks, which llama.cpp servers send one per token).
    ``cached_tokens``: prompt tokens the server reused from its prefix cache (vLLM/OpenAI
    ``usage.prompt_tokens_details.cached_tokens`` or llama-server ``timings.cache_n``), None when
    not reported. Times: wall-clock ms from sending the request."""

    text: str
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    url: str


@dataclass
class Health:
    """``GET /models`` of one endpoint: ``ok`` with the model ids it serves, or the error."""

    url: str
    ok: bool
    models: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    error: str | None = None


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class OpenAIEndpoint:
    """One endpoint with its connection pool and its concurrency limit (``settings.concurrency``
    requests in flight; more callers wait). Thread-safe.

    Raises:
        ModelError: ``api_key_env`` names an environment variable that is not set.
    """

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        headers = {}
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ModelError(f"{self.url}: environment variable {settings.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=settings.concurrency + 2, max_keepalive_connections=settings.concurrency + 2)
        self._client = httpx.Client(timeout=self._timeout(settings.timeout_s), headers=headers, limits=limits)
        self.slots = threading.BoundedSemaphore(settings.concurrency)
        self._model = settings.model
        self._structured = settings.structured_output
        self._lock = threading.Lock()

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(read_s, connect=self.settings.connect_timeout_s)

    @property
    def offsite(self) -> bool:
        """True when requests leave this machine."""
        return not is_loopback(self.url)

    def close(self) -> None:
        self._client.close()

    # ---- discovery -----------------------------------------------------------

    def list_models(self) -> list[str]:
        """Model ids from ``GET /models``. Raises `EndpointDown`, `EndpointRejected`."""
        try:
            r = self._client.get(f"{self.url}/models", timeout=self._timeout(min(10.0, self.settings.timeout_s)))
        except _TRANSPORT as exc:
            raise EndpointDown(f"{self.url}: {type(exc).__name__}: {exc}", url=self.url) from None
        self._raise_for_status(r)
        return [m.get("id", "?") for m in r.json().get("data", [])]

    def model_id(self) -> str:
        """The model id requests name: ``settings.model``, else the first one the server lists."""
        with self._lock:
            if self._model is None:
                ids = self.list_models()
                if not ids:
                    raise EndpointRejected(f"{self.url}: /models lists no model; set the endpoint's model", url=self.url)
                self._model = ids[0]
            return self._model

    def health(self) -> Health:
        t0 = time.perf_counter()
        try:
            ids = self.list_models()
        except ModelError as exc:
            return Health(self.url, False, latency_ms=(time.perf_counter() - t0) * 1000, error=str(exc))
        return Health(self.url, True, ids, (time.perf_counter() - t0) * 1000)

    # ---- requests ------------------------------------------------------------

    def _raise_for_status(self, r: httpx.Response) -> None:
        if r.status_code >= 500 and "response_format" in r.text:
            # a refusal of this request, not the endpoint's health: llama-cpp-python's server answers
            # 500 (its validation error) to a response_format type it does not know
            raise EndpointRejected(f"{self.url}: HTTP {r.status_code}: {_short(r.text)}", url=self.url, status=422)
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retry(f"HTTP {r.status_code}: {_short(r.text)}")
        if r.status_code >= 400:
            raise EndpointRejected(f"{self.url}: HTTP {r.status_code}: {_short(r.text)}", url=self.url, status=r.status_code)

    def _body(self, messages: list[dict], params: SamplingParams, max_tokens: int) -> dict:
        body = {
            "model": self.model_id(),
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.settings.llama_sampling:
            body.update(top_k=params.top_k, repeat_penalty=params.repeat_penalty)
        body.update(self.settings.extra_body)
        return body

    def chat(
        self,
        messages: list[dict],
        params: SamplingParams,
        *,
        max_tokens: int,
        response_format: dict | None = None,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ChatResult:
        """One streamed chat completion, holding one of the endpoint's concurrency slots.

        Transport failures are retried (``retries``, backoff doubling from ``backoff_s``) as long
        as no text has reached `on_text`. A set `cancel` closes the stream (the server stops
        generating when the connection drops): ``finish_reason`` ``cancelled``.

        Raises:
            EndpointDown: no answer after the retries, or the stream broke after text was sent.
            EndpointRejected: the server refused the request.
        """
        body = self._body(messages, params, max_tokens)
        if response_format is not None:
            body["response_format"] = response_format
        s = self.settings
        with self.slots:
            wait = s.backoff_s
            for n in range(s.retries + 1):
                sent = [False]
                try:
                    return self._stream(body, cancel, on_text, sent)
                except _Retry as exc:
                    reason = str(exc)
                except _TRANSPORT as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                if sent[0]:
                    raise EndpointDown(f"{self.url}: stream broke after text was sent ({reason})", url=self.url, streamed=True)
                log.info("%s: try %d of %d failed: %s", self.url, n + 1, s.retries + 1, reason)
                if n < s.retries:
                    time.sleep(wait)
                    wait *= 2
            raise EndpointDown(f"{self.url}: {reason} (after {s.retries + 1} tries)", url=self.url)

    def _stream(self, body: dict, cancel: threading.Event | None, on_text: Callable[[str], None] | None, sent: list[bool]) -> ChatResult:
        t0 = time.perf_counter()
        ttft = None
        parts: list[str] = []
        finish = "length"
        chunks = 0
        usage: dict = {}
        timings: dict = {}
        budget = self.settings.ttft_budget_s
        timeout = self._timeout(min(budget, self.settings.timeout_s) if budget else self.settings.timeout_s)
        with connect_sse(self._client, "POST", f"{self.url}/chat/completions", json=body, timeout=timeout) as es:
            r = es.response
            if r.status_code != 200:
                r.read()
                self._raise_for_status(r)
            for ev in es.iter_sse():
                if ev.data.strip() == "[DONE]":
                    break
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                try:
                    d = json.loads(ev.data)
                except ValueError:
                    continue  # a keep-alive or comment the server sends as data
                if "error" in d:
                    err = d["error"]
                    raise EndpointRejected(f"{self.url}: {_short(json.dumps(err) if not isinstance(err, str) else err)}", url=self.url)
                usage = d.get("usage") or usage
                timings = d.get("timings") or timings
                for choice in d.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        if ttft is None:
                            ttft = (time.perf_counter() - t0) * 1000
                        chunks += 1
                        parts.append(text)
                        if on_text is not None:
                            sent[0] = True
                            on_text(text)
                    if choice.get("finish_reason"):
                        finish = "stop" if choice["finish_reason"] == "stop" else choice["finish_reason"]
        total = (time.perf_counter() - t0) * 1000
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None and "cache_n" in timings:
            cached = timings["cache_n"]
        return ChatResult(
            text="".join(parts),
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens"),
            cached_tokens=cached,
            completion_tokens=usage.get("completion_tokens") or chunks,
            ttft_ms=ttft if ttft is not None else total,
            total_ms=total,
            url=self.url,
        )

    def chat_json(self, messages: list[dict], schema: dict, params: SamplingParams, *, max_tokens: int) -> JsonGeneration:
        """A JSON text for `schema`, asked the way ``structured_output`` says (``auto``: OpenAI's
        ``json_schema`` response format, then llama-cpp-python's ``json_object`` + ``schema`` if the
        server rejects that, remembered for later requests). The text is not validated here.

        ``prefill_ms`` is the time to the first token (prompt processing plus queueing on the
        server), ``decode_ms`` the rest.

        Raises:
            EndpointDown, EndpointRejected: as `chat`.
        """
        mode = self._structured
        while True:
            fmt = None
            if mode == "json_schema" or mode == "auto":
                fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}
            elif mode == "json_object":
                fmt = {"type": "json_object", "schema": schema}
            try:
                r = self.chat(messages, params, max_tokens=max_tokens, response_format=fmt)
            except EndpointRejected as exc:
                if mode == "auto" and exc.status in (400, 422):
                    log.info("%s rejects response_format json_schema (%s): using json_object + schema", self.url, exc)
                    mode = "json_object"
                    continue
                raise
            if mode == "auto":
                mode = "json_schema"
            self._structured = mode
            return JsonGeneration(
                text=r.text,
                finish_reason=r.finish_reason,
                prompt_tokens=r.prompt_tokens or 0,
                completion_tokens=r.completion_tokens,
                prefill_ms=r.ttft_ms,
                decode_ms=r.total_ms - r.ttft_ms,
            )


class _Retry(Exception):
    """HTTP 429/5xx: the endpoint is overloaded or failing; try again after a backoff."""
