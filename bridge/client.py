"""A Python client for the sidecar (DEALER socket, blocking). Used by the demo, ``narrative chat`` and tests.

Example:
    >>> with SidecarClient("tcp://127.0.0.1:5555") as c:
    ...     c.hello()
    ...     for msg in c.say("odile-brask", "Any news?"):
    ...         print(msg.text if msg.type == "chunk" else msg.timings)
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator

import zmq

from bridge import protocol as p


class SidecarError(Exception):
    """The sidecar answered with an ``error`` message. ``code`` is a `bridge.protocol.ErrorCode`."""

    def __init__(self, code: str, message: str, request_id: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms  # with code 'busy': wait this long, then retry


class SidecarTimeout(TimeoutError):
    """No message from the sidecar within the timeout."""


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class SidecarClient:
    """One DEALER connection to a sidecar.

    Args:
        endpoint: the sidecar's ROUTER endpoint.
        timeout_s: longest wait for any single message (a reply or the next chunk).
        curve_server_key: the sidecar's public key file (``narrative keys``), for a CurveZMQ sidecar.
        curve_client_secret: this client's secret key file (``.key_secret``); its public key must be
            in the sidecar's allow-list folder.

    A ``busy`` error (`SidecarError` with ``code`` ``busy``) carries ``retry_after_ms``: the sidecar's
    queues are full; wait that long and send the request again.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", timeout_s: float = 120.0, context: zmq.Context | None = None,
                 *, curve_server_key: str | None = None, curve_client_secret: str | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_server_key or curve_client_secret:  # CurveZMQ (docs/security.md): both key files are needed
            from zmq.auth import load_certificate

            if not (curve_server_key and curve_client_secret):
                raise ValueError("CurveZMQ needs the server's public key file and this client's secret key file")
            self.sock.curve_serverkey = load_certificate(curve_server_key)[0]
            self.sock.curve_publickey, self.sock.curve_secretkey = load_certificate(curve_client_secret)
        self.sock.connect(endpoint)
        self._pending: dict[str, deque] = defaultdict(deque)

    def __enter__(self) -> "SidecarClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(linger=0)

    # ---- raw -------------------------------------------------------------

    def send(self, msg: p._Msg) -> str:
        """Queue `msg` for the sidecar. Raises `SidecarTimeout` when it cannot even be queued in ``timeout_s``."""
        self._send(p.encode(msg))
        return msg.id

    def send_raw(self, payload: bytes) -> None:
        """Send any bytes as one frame (for tests of bad input)."""
        self._send(payload)

    def _send(self, frame: bytes) -> None:
        # A DEALER's send blocks while it has no usable peer (a refused CurveZMQ handshake, a full queue):
        # wait for room at most timeout_s instead of forever.
        if not self.sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT):
            raise SidecarTimeout(f"could not send to the sidecar at {self.endpoint} in {self.timeout_s:.0f} s (is `narrative serve` running?)")
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # the peer went away between the poll and the send
            raise SidecarTimeout(f"could not send to the sidecar at {self.endpoint}") from None

    def recv(self, request_id: str | None = None, timeout_s: float | None = None):
        """Next message (for `request_id`, if given; others are kept for later).

        Raises:
            SidecarTimeout: nothing arrived in time.
        """
        if request_id is not None and self._pending[request_id]:
            return self._pending[request_id].popleft()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise SidecarTimeout(f"no reply from the sidecar at {self.endpoint} in {self.timeout_s:.0f} s (is `narrative serve` running?)")
            msg = p.decode(self.sock.recv())
            if request_id is None or msg.id == request_id:
                return msg
            self._pending[msg.id].append(msg)

    def events(self, timeout_s: float = 0.0) -> list:
        """Events the sidecar pushed on its own (``lore.changed``, ``lore.error``; ids ``ev-<n>``), oldest first.

        Reads what has arrived; when there is none yet, waits up to `timeout_s` for one.
        Replies to requests that arrive meanwhile are kept for their `recv`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            while self.sock.poll(0):
                msg = p.decode(self.sock.recv())
                self._pending[msg.id].append(msg)
            out = []
            for rid in [k for k in self._pending if k.startswith("ev-")]:
                out.extend(self._pending.pop(rid))
            left = deadline - time.monotonic()
            if out or left <= 0:
                return sorted(out, key=lambda m: int(m.id[3:]) if m.id[3:].isdigit() else 0)
            self.sock.poll(int(left * 1000))

    def lore_explain(self, npc: str, text: str, history: list[str] | None = None, state: dict | None = None) -> p.LoreExplanation:
        return self.request(p.LoreExplain(id=new_id(), npc=npc, text=text, history=history or [], state=state))

    def request(self, msg: p._Msg, timeout_s: float | None = None):
        """Send `msg` and return its single reply. Raises `SidecarError` on an ``error`` reply."""
        self.send(msg)
        reply = self.recv(msg.id, timeout_s)
        if reply.type == "error":
            raise SidecarError(reply.code, reply.message, reply.id, reply.retry_after_ms)
        return reply

    # ---- API -------------------------------------------------------------

    def hello(self, client: str = "python") -> p.Ready:
        return self.request(p.Hello(id=new_id(), client=client))

    def ping(self) -> float:
        """Round trip in ms."""
        t0 = time.perf_counter()
        self.request(p.Ping(id=new_id()))
        return (time.perf_counter() - t0) * 1000

    def reset(self, npc: str, session: str | None = None) -> None:
        self.request(p.Reset(id=new_id(), npc=npc, session=session))

    def event(self, text: str, *, session: str | None = None, npc: str | None = None, npcs: list[str] | None = None,
              location: str | None = None, faction: str | None = None, state: dict | None = None) -> int:
        """Tell NPCs that something happened (at most one target; none = every NPC); returns how many it reached.
        Raises `SidecarError` (``unknown_npc``, ``invalid``)."""
        return self.request(p.Event(id=new_id(), text=text, session=session, npc=npc, npcs=npcs, location=location,
                                    faction=faction, state=state)).count or 0

    def set_state(self, values: dict | None = None, *, unset: list[str] | None = None, session: str | None = None) -> None:
        """Merge game state (flags, counters) into the session; remove `unset` keys."""
        self.request(p.State(id=new_id(), session=session, set=values or {}, unset=unset or []))

    def declare(self, actions: list[dict] | None = None, *, fields: dict | None = None, max_actions: int = 1,
                npc: str | None = None, session: str | None = None) -> None:
        """Declare the actions (``{"name", "description", "parameters"}``) and per-line fields
        (``{"emotion": {"enum": [...]}}``) of `npc` (None: every NPC of the session).
        Raises `SidecarError` (``unsupported_schema``, ``unknown_npc``, ``invalid``)."""
        self.request(p.Declare(id=new_id(), session=session, npc=npc, actions=actions or [], fields=fields or {}, max_actions=max_actions))

    def lore_query(self, text: str, npc: str | None = None) -> p.LoreResult:
        return self.request(p.LoreQuery(id=new_id(), text=text, npc=npc))

    def generate(self, quest: str | None = None, spec: dict | None = None, *, seed: int | None = None,
                 max_tokens: int | None = None, timeout_s: float | None = None) -> p.GenerateResult:
        """Generate one quest (by spec id, or from an inline spec map). Raises `SidecarError`
        (``unknown_quest``, ``invalid``, ``generation_failed``) or `SidecarTimeout`."""
        return self.request(p.Generate(id=new_id(), quest=quest, spec=spec, seed=seed, max_tokens=max_tokens), timeout_s)

    def cancel(self, target: str) -> None:
        """Ask the sidecar to stop stream `target` (its `Done` then says ``cancelled``)."""
        self.send(p.Cancel(id=new_id(), target=target))

    def say(self, npc: str, text: str, *, request_id: str | None = None, **options) -> Iterator[p.Chunk | p.Action | p.Done]:
        """Stream an NPC's answer: yields `Chunk` messages, then its `Action` messages (with a
        declaration), then one `Done`.

        Raises:
            SidecarError: the request was refused (unknown NPC, invalid field...).
            SidecarTimeout: the stream stalled longer than ``timeout_s``.
        """
        rid = request_id or new_id()
        self.send(p.Say(id=rid, npc=npc, text=text, **options))
        while True:
            msg = self.recv(rid)
            if msg.type == "error":
                raise SidecarError(msg.code, msg.message, msg.id, msg.retry_after_ms)
            yield msg
            if msg.type == "done":
                return

    def say_text(self, npc: str, text: str, **options) -> tuple[list[str], p.Done]:
        """Run a whole turn; returns (chunk texts, the `Done` message)."""
        chunks, _, done = self.say_turn(npc, text, **options)
        return chunks, done

    def say_turn(self, npc: str, text: str, **options) -> tuple[list[str], list[p.Action], p.Done]:
        """Run a whole turn; returns (chunk texts, the `Action` messages, the `Done` message)."""
        chunks: list[str] = []
        actions: list[p.Action] = []
        for msg in self.say(npc, text, **options):
            if msg.type == "chunk":
                chunks.append(msg.text)
            elif msg.type == "action":
                actions.append(msg)
            else:
                return chunks, actions, msg
        raise AssertionError("unreachable")


def summarize_done(done: p.Done) -> str:
    """One line of figures for a finished turn, for people: TTFT, tokens/s, token counts, lore used."""
    t = done.timings
    return (
        f"TTFT {t.get('ttft_ms', 0):.0f} ms, {t.get('tokens_per_s', 0):.1f} tok/s, "
        f"{done.tokens.get('completion', 0)} tokens, prompt {done.tokens.get('prompt', 0)} "
        f"({done.tokens.get('cached', 0)} cached), lore: {', '.join(done.lore) or '-'}"
    )
