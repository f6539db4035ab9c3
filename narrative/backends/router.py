"""The router: per request, the endpoints of one role in order of preference, skipping those found down.

Not a load balancer: the first endpoint that is up takes the request; the next
ones are fallbacks. An endpoint is "down" after `EndpointDown` (no answer after its
retries, or no first token within its ``ttft_budget_s``) and stays out for its
``cooldown_s``; then the next request tries it again. When every endpoint is in
cooldown, they are all tried anyway, in order (better a slow answer than none).
The batch spreads work over all endpoints at once (`narrative.batch.fanout`) and
uses the router only for its bookkeeping of which endpoints are down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from narrative.backends.http import EndpointDown, Health, OpenAIEndpoint
from narrative.llm.errors import ModelError
from narrative.settings import EndpointSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


class AllEndpointsDown(ModelError):
    """Every endpoint of a role failed this request; the message has each one's reason."""

    recoverable = True  # not fatal to the sidecar: the next request tries the endpoints again


class Router:
    """The endpoints of one role (``dialogue`` or ``batch``), first preferred.

    Args:
        role: named in logs and errors.
        endpoints: in order of preference.
    """

    def __init__(self, role: str, endpoints: list[OpenAIEndpoint]) -> None:
        if not endpoints:
            raise ModelError(f"{role}: backend 'openai' needs at least one endpoint")
        self.role = role
        self.endpoints = list(endpoints)
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, role: str, endpoints: list[EndpointSettings]) -> "Router":
        return cls(role, [OpenAIEndpoint(e) for e in endpoints])

    def is_down(self, ep: OpenAIEndpoint) -> bool:
        with self._lock:
            return self._down_until.get(ep.url, 0.0) > time.monotonic()

    def mark_down(self, ep: OpenAIEndpoint, reason: str) -> None:
        with self._lock:
            self._down_until[ep.url] = time.monotonic() + ep.settings.cooldown_s
        log.warning("%s endpoint %s is down for %.0f s: %s", self.role, ep.url, ep.settings.cooldown_s, reason)

    def mark_up(self, ep: OpenAIEndpoint) -> None:
        with self._lock:
            if self._down_until.pop(ep.url, None) is not None:
                log.info("%s endpoint %s is back", self.role, ep.url)

    def order(self) -> list[OpenAIEndpoint]:
        """The endpoints to try: those up, in order; all of them when none is up."""
        up = [ep for ep in self.endpoints if not self.is_down(ep)]
        return up or list(self.endpoints)

    def call(self, fn: Callable[[OpenAIEndpoint], T]) -> T:
        """``fn(endpoint)`` on the first endpoint that answers.

        Raises:
            EndpointDown: the stream broke after text reached the caller (not retried elsewhere:
                the player has seen the start of a line).
            AllEndpointsDown: every endpoint was down.
            EndpointRejected: an endpoint refused the request (the next one would too).
        """
        reasons = []
        for ep in self.order():
            try:
                result = fn(ep)
            except EndpointDown as exc:
                self.mark_down(ep, str(exc))
                if exc.streamed:
                    raise
                reasons.append(str(exc))
                continue
            self.mark_up(ep)
            return result
        raise AllEndpointsDown(f"every {self.role} endpoint is down: " + "; ".join(reasons))

    def health(self) -> list[Health]:
        return [ep.health() for ep in self.endpoints]

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
