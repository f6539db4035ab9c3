"""The sidecar's ZeroMQ ROUTER server: wire messages in, `narrative.service.NarrativeService` calls, wire messages out.

One asyncio loop owns the socket (``zmq.asyncio``). Requests are dispatched
through a handler table keyed by message type; each handler is a thin adapter
onto one service call. Errors are mapped in one place (`_dispatch`): a
`ServiceError` becomes an ``error`` with its wire code, any other exception an
``internal`` error, and the loop goes on; `EngineDead` sends ``shutdown`` to
every client and stops. Model and database calls run in one worker thread, so
pings are answered while a model decodes; dialogue turns (``say``) run on a pool
of their own (`NarrativeService.turn_slots` threads) because several decode at
once, batched by the model's scheduler (`narrative.scheduler`). A bounded queue sits between the
decoding thread and the sender (backpressure). Stopping (`stop`) also sends
``shutdown`` to every client before the socket closes.

Peers that vanish: the socket is ``ZMQ_ROUTER_MANDATORY``, so a send to a
disconnected client fails (``EHOSTUNREACH``): its stream is cancelled and its
queued requests are dropped before they reach the worker; ZMTP heartbeats
(``ZMQ_HEARTBEAT_IVL``/``_TIMEOUT``) make libzmq notice a dead TCP peer that
never closed its connection. ``ZMQ_ROUTER_HANDOVER``: a client reconnecting with
the same routing id takes the route over at once.

Hostile peers (issue 13): every send is non-blocking; a peer that does not read
loses only its own replies (``ZMQ_SNDHWM``; counted in `stats`, logged once per
peer). Admission control: requests that need the decode worker are bounded per
connection (``max_queued_per_client``) and in all (``max_queued``); over either
bound the request gets ``busy`` with ``retry_after_ms``. Nothing a frame holds can
end the loop (`_dispatch` answers or drops every frame).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zmq
import zmq.asyncio

from bridge import protocol as p
from bridge.settings import ServerSettings
from narrative.service import EngineDead, LoreBroken, LoreChanged, NarrativeService, ServiceError

log = logging.getLogger(__name__)

WORKER_TYPES = frozenset({"say", "reset", "lore.query", "lore.explain", "generate"})
"""Request types that run on the decode worker: these are admission-controlled (``busy``)."""

SERVER_NAME = "narrative-sidecar/0.1"
_END = object()


class SidecarServer:
    """Serves the protocol in `bridge.protocol` for one `NarrativeService`.

    Args:
        service: the generation side (dialogue, lore, quests).
        settings: endpoint and limits.
    """

    def __init__(self, service: NarrativeService, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        # `generate` runs the batch model (its own llama.cpp instance) for up to minutes per quest: on a thread
        # of its own, so that lore.query, lore.explain, reset and lore reloads never wait behind it
        self.generate_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.turn_executor = ThreadPoolExecutor(max_workers=max(1, service.turn_slots()), thread_name_prefix="turn")
        self.streams: dict[tuple[bytes, str], threading.Event] = {}
        self.tasks: set[asyncio.Task] = set()
        self.finished: deque[tuple[str, str, int]] = deque(maxlen=256)  # (request id, finish_reason, completion tokens)
        self.bound = asyncio.Event()
        self.on_bound: Callable[[str], None] | None = None  # called with the bound endpoint (the port resolved when it was '*')
        self.endpoint = settings.endpoint
        self._stop = asyncio.Event()
        self.handlers: dict[str, Callable[[bytes, object], Awaitable[None]]] = {
            "hello": self._hello,
            "ping": self._ping,
            "say": self._say,
            "event": self._event,
            "state": self._state,
            "declare": self._declare,
            "cancel": self._cancel,
            "reset": self._reset,
            "lore.query": self._lore_query,
            "lore.explain": self._lore_explain,
            "generate": self._generate,
        }
        self.peers: dict[bytes, None] = {}  # identities that said hello (insertion-ordered, capped): they get events
        self.pending: dict[bytes, int] = {}  # identity -> requests queued or running on the decode worker
        self.gone: set[bytes] = set()  # identities a send found disconnected, while they still have pending work
        self._slow: set[bytes] = set()  # identities whose dropped replies were logged (once per peer)
        self.stats = {"dropped_replies": 0, "busy": 0, "dropped_departed": 0, "bad_frames": 0}
        self.lore_dir: Path | None = None  # set by watch_lore(): hot reload while serving
        self._events = 0
        self.shutdown_reason: tuple[str, str] = ("stopping", "")  # (reason, message) of the shutdown event
        self.auth = None  # the ZAP authenticator when CurveZMQ is on

    # ---- socket ----------------------------------------------------------

    def _open(self) -> zmq.asyncio.Socket:
        s = self.settings
        curve = check_exposure(s)  # raises InsecureEndpoint before anything binds
        sock = self.ctx.socket(zmq.ROUTER)
        if curve is not None:
            self._start_zap(curve[1])
            sock.curve_publickey, sock.curve_secretkey = curve[0]
            sock.curve_server = True
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnect with the same routing id takes the route over
        sock.setsockopt(zmq.SNDHWM, s.send_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, s.hard_max_frame_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(s.peer_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(s.peer_timeout_s * 1000))
        sock.bind(s.endpoint)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    async def send(self, ident: bytes, msg: p._Msg) -> bool:
        """Send one message to a peer without blocking; False when it did not go out. Never raises.

        A peer that is gone (``EHOSTUNREACH``) is marked so its queued requests are dropped;
        a peer whose send queue is full (``zmq.Again``: it does not read) loses this reply,
        counted in ``stats['dropped_replies']`` and logged once per peer.
        """
        assert self.sock is not None
        try:
            await self.sock.send_multipart([ident, p.encode(msg)], flags=zmq.DONTWAIT)
            return True
        except zmq.Again:
            self.stats["dropped_replies"] += 1
            if ident not in self._slow:
                if len(self._slow) >= self.settings.max_peers:
                    self._slow.clear()
                self._slow.add(ident)
                log.warning("peer %s does not read its replies: dropping them (counted in stats['dropped_replies'])", ident.hex())
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._departed(ident)
            else:
                log.warning("send to %s failed: %s", ident.hex(), exc)
            return False

    def _departed(self, ident: bytes) -> None:
        """`ident` is disconnected: cancel its streams; its queued requests are dropped when their turn comes."""
        self.peers.pop(ident, None)
        if self.pending.get(ident):
            self.gone.add(ident)
        for (who, _), cancel in list(self.streams.items()):
            if who == ident:
                cancel.set()

    def queued(self) -> int:
        """Requests queued or running on the decode worker, all connections together."""
        return sum(self.pending.values())

    def _admit(self, ident: bytes) -> int | None:
        """Count one more worker request for `ident`; None when admitted, else the retry hint in ms (``busy``)."""
        s = self.settings
        if self.pending.get(ident, 0) >= s.max_queued_per_client or self.queued() >= s.max_queued:
            self.stats["busy"] += 1
            return s.busy_retry_ms
        self.pending[ident] = self.pending.get(ident, 0) + 1
        return None

    def _release(self, ident: bytes) -> None:
        n = self.pending.get(ident, 0) - 1
        if n > 0:
            self.pending[ident] = n
        else:
            self.pending.pop(ident, None)
            self.gone.discard(ident)

    def _start_zap(self, allowed_dir: Path) -> None:
        """ZAP handler (pyzmq's `zmq.auth`): only clients whose public key is in `allowed_dir` get in."""
        from zmq.auth.asyncio import AsyncioAuthenticator

        self.auth = AsyncioAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed_dir))
        log.info("CurveZMQ on: clients allowed from %s", allowed_dir)

    async def run(self) -> None:
        """Bind and serve until `stop` is called. Raises ``zmq.ZMQError`` if the endpoint cannot be bound."""
        self.sock = self._open()
        self.bound.set()
        if self.on_bound is not None:
            self.on_bound(self.endpoint)
        log.info("sidecar listening on %s", self.endpoint)
        if self.lore_dir is not None:
            watch = asyncio.create_task(self._watch_lore())
            self.tasks.add(watch)
            watch.add_done_callback(self.tasks.discard)
        poller = zmq.asyncio.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(await poller.poll(200))
                if self.sock not in events:
                    continue
                frames = await self.sock.recv_multipart()
                try:
                    await self._dispatch(frames)
                except Exception:  # _dispatch answers everything; this is the last line of defence
                    log.exception("frame from %s dropped", frames[0].hex() if frames else "?")
        finally:
            reason, message = self.shutdown_reason
            await self.broadcast(p.Shutdown(id=self._event_id(), reason=reason, message=message))
            for cancel in self.streams.values():
                cancel.set()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
            self.sock.close(linger=0)
            if self.auth is not None:
                self.auth.stop()
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.generate_executor.shutdown(wait=True, cancel_futures=True)
            self.turn_executor.shutdown(wait=True, cancel_futures=True)

    def stop(self, message: str = "") -> None:
        """Stop serving: every client that said hello gets ``shutdown`` (reason ``stopping``), then the socket closes."""
        if not self._stop.is_set():
            self.shutdown_reason = ("stopping", message)
        self._stop.set()

    def _engine_dead(self, exc: EngineDead) -> None:
        log.error("the engine failed: %s; shutting down", exc)
        self.shutdown_reason = ("engine_failed", str(exc))
        self._stop.set()

    def _event_id(self) -> str:
        self._events += 1
        return f"ev-{self._events}"

    async def _run_blocking(self, fn, *args, executor: ThreadPoolExecutor | None = None):
        """Run a blocking service call on the decode worker thread (or `executor`)."""
        return await asyncio.get_running_loop().run_in_executor(executor or self.executor, fn, *args)

    async def _run_for(self, ident: bytes, fn, *args, executor: ThreadPoolExecutor | None = None):
        """`_run_blocking` for a request of `ident`: dropped (`_PeerGone`) if the peer left while it was queued."""

        def job():
            if ident in self.gone:
                raise _PeerGone()
            return fn(*args)

        return await self._run_blocking(job, executor=executor)

    async def _dispatch(self, frames: list[bytes]) -> None:
        """Answer one incoming message; never raises for anything a peer can send.

        Rules: more or fewer than one payload frame -> ``bad_frame``; a frame that does not
        decode -> its `ProtocolError` code, with id ``"?"`` when its own id is unusable;
        a worker request over the admission bounds -> ``busy``; ping, hello and cancel
        are answered inline; worker requests run as tasks (the loop keeps reading).
        """
        ident = frames[0]
        self.gone.discard(ident)  # it speaks: it is (again) connected
        if len(frames) != 2:
            self.stats["bad_frames"] += 1
            await self.send(ident, p.Error(id=p.UNREADABLE_ID, code=p.ErrorCode.BAD_FRAME, message=f"expected 1 payload frame, got {len(frames) - 1}"))
            return
        try:
            msg = p.decode_request(frames[1], self.settings.max_frame_bytes)
        except p.ProtocolError as exc:
            self.stats["bad_frames"] += 1
            log.debug("bad request from %s: %s", ident.hex(), exc.message)
            await self.send(ident, p.Error(id=p.usable_id(exc.request_id), code=exc.code, message=exc.message[:1000]))
            return
        if msg.type not in WORKER_TYPES:
            await self._handle(ident, msg)
            return
        if msg.type == "say" and (ident, msg.id) in self.streams:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INVALID, message=f"request id {msg.id!r} is already streaming"))
            return
        retry = self._admit(ident)
        if retry is not None:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.BUSY, retry_after_ms=retry,
                                           message=f"too many requests queued (this connection: {self.pending.get(ident, 0)}, all: {self.queued()}); retry later"))
            return
        if msg.type == "say":  # registered now, so a cancel right behind it finds it
            self.streams[(ident, msg.id)] = threading.Event()
        task = asyncio.create_task(self._handle(ident, msg, admitted=True))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, ident: bytes, msg, admitted: bool = False) -> None:
        """Run one handler; map its errors onto wire errors (the one place that does)."""
        try:
            await self.handlers[msg.type](ident, msg)
        except _PeerGone:
            self.stats["dropped_departed"] += 1
        except ServiceError as exc:  # the one place a service error becomes a wire error
            await self.send(ident, _error(msg.id, exc))
        except EngineDead as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=str(exc)))
            self._engine_dead(exc)
        except Exception as exc:  # a handler bug must not kill the loop
            log.exception("handler %s failed", msg.type)
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"))
        finally:
            if admitted:
                self._release(ident)

    # ---- handlers --------------------------------------------------------

    async def _hello(self, ident: bytes, msg: p.Hello) -> None:
        self.peers.pop(ident, None)
        self.peers[ident] = None
        while len(self.peers) > self.settings.max_peers:
            self.peers.pop(next(iter(self.peers)))
        svc = self.service
        lim = svc.limits()
        limits = {"max_frame_bytes": self.settings.max_frame_bytes, "max_tokens": lim.max_tokens, "n_ctx": lim.n_ctx}
        await self.send(ident, p.Ready(id=msg.id, server=SERVER_NAME, models=svc.models, npcs=svc.npcs(), limits=limits))

    async def _ping(self, ident: bytes, msg: p.Ping) -> None:
        await self.send(ident, p.Pong(id=msg.id))

    async def _event(self, ident: bytes, msg: p.Event) -> None:
        n = self.service.event(msg.session or ident.hex(), msg.text, npc=msg.npc, npcs=msg.npcs, location=msg.location,
                               faction=msg.faction, state=msg.state)
        await self.send(ident, p.Ok(id=msg.id, count=n))

    async def _state(self, ident: bytes, msg: p.State) -> None:
        self.service.set_state(msg.session or ident.hex(), msg.set, msg.unset)
        await self.send(ident, p.Ok(id=msg.id))

    async def _declare(self, ident: bytes, msg: p.Declare) -> None:
        # checking the declaration builds its grammar in llama.cpp (~0.2 s for the largest frame): on a thread, so the
        # other clients' streams keep flowing; awaited here, so this client's next request (a say) still sees it applied
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.declare, msg.session or ident.hex(), msg.npc, [a.model_dump() for a in msg.actions],
            {k: f.model_dump() for k, f in msg.fields.items()}, msg.max_actions)
        await self.send(ident, p.Ok(id=msg.id))

    async def _reset(self, ident: bytes, msg: p.Reset) -> None:
        await self._run_for(ident, self.service.reset, msg.session or ident.hex(), msg.npc)
        await self.send(ident, p.Ok(id=msg.id))

    async def _cancel(self, ident: bytes, msg: p.Cancel) -> None:
        cancel = self.streams.get((ident, msg.target))
        if cancel is None:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_REQUEST, message=f"no running request {msg.target!r}"))
            return
        cancel.set()  # the target stream ends with done(finish_reason=cancelled)

    async def _lore_query(self, ident: bytes, msg: p.LoreQuery) -> None:
        hits = await self._run_for(ident, self.service.query_lore, msg.text, msg.npc, msg.state)
        await self.send(ident, p.LoreResult(id=msg.id, entries=[p.LoreHit(**asdict(h)) for h in hits]))

    async def _lore_explain(self, ident: bytes, msg: p.LoreExplain) -> None:
        d = await self._run_for(ident, self.service.explain, msg.npc, msg.text, msg.history, msg.state)
        await self.send(ident, p.LoreExplanation(id=msg.id, **asdict(d)))

    async def _generate(self, ident: bytes, msg: p.Generate) -> None:
        """One quest from a spec (``narrative batch``'s generator), on the generate thread (one quest at a time; the
        decode worker stays free for lore and reset requests); the batch model loads on first use."""
        source = msg.quest if msg.quest is not None else msg.spec
        r = await self._run_for(ident, lambda: self.service.generate_quest(source, seed=msg.seed, max_tokens=msg.max_tokens),
                                executor=self.generate_executor)
        await self.send(
            ident,
            p.GenerateResult(
                id=msg.id,
                status=r.status,
                output=r.quest.model_dump(mode="json"),
                findings=[p.GenFinding(field=f.field, check=f.check, severity=f.severity, message=f.message) for f in r.findings],
                attempts=len(r.attempts),
                tokens={"prompt": r.prompt_tokens, "completion": r.completion_tokens},
                timings={"prefill_ms": round(r.prefill_ms, 1), "decode_ms": round(r.decode_ms, 1)},
            ),
        )

    # ---- lore hot reload ----------------------------------------------------

    def watch_lore(self, root: Path) -> None:
        """Hot-reload the lore folder `root` while serving (call before `run`); see `lore.watch`."""
        self.lore_dir = Path(root)

    async def _watch_lore(self) -> None:
        assert self.lore_dir is not None
        await self.service.watch_lore(self.lore_dir, self._run_blocking, self._lore_event, self._stop)

    async def _lore_event(self, ev: LoreChanged | LoreBroken) -> None:
        eid = self._event_id()
        if isinstance(ev, LoreBroken):
            await self.broadcast(p.LoreFileError(id=eid, path=ev.path, line=ev.line, message=ev.message))
        else:
            await self.broadcast(p.LoreChanged(id=eid, files=ev.files, entries=ev.entries, added=ev.added, deleted=ev.deleted))

    async def broadcast(self, msg: p._Msg) -> None:
        """Send an event to every peer that said hello; peers that are gone (or cannot take it) are forgotten."""
        for ident in list(self.peers):
            try:
                ok = await self.send(ident, msg)
            except zmq.ZMQError as exc:
                log.info("event %s not delivered to %s: %s", msg.type, ident.hex(), exc)
                ok = False
            if not ok:
                self.peers.pop(ident, None)

    async def _say(self, ident: bytes, msg: p.Say) -> None:
        """Stream one turn (the stream's cancel event was registered by `_dispatch`)."""
        await self._stream(ident, msg, self.streams[(ident, msg.id)])

    async def _stream(self, ident: bytes, msg: p.Say, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: object) -> None:
            # the model's stepping thread, which advances every NPC's turn: it must never wait for this loop
            # (a blocking put cost each stream a loop round trip per token and stalled all turns while the loop
            # was busy). Unbounded is safe: sends never block (a reader that does not read loses its replies),
            # so the loop drains it, and a turn holds at most max_tokens pieces.
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work():
            try:
                if ident in self.gone:  # the peer left while this was queued: drop it unrun
                    raise _PeerGone()
                return self.service.turn(
                    msg.session or ident.hex(),
                    msg.npc,
                    msg.text,
                    max_tokens=msg.max_tokens,
                    temperature=msg.temperature,
                    seed=msg.seed,
                    cancel=cancel,
                    on_text=put,
                    client=ident.hex(),
                    state=msg.state,
                )
            finally:
                put(_END)

        future = loop.run_in_executor(self.turn_executor, work)
        seq = 0
        alive = True
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if alive and not cancel.is_set():
                    alive = await self.send(ident, p.Chunk(id=msg.id, seq=seq, text=item))
                    seq += 1
                    if not alive:
                        log.info("peer %s gone: cancelling %s", ident.hex(), msg.id)
                        cancel.set()
            try:
                result = await future
            except _PeerGone:
                self.stats["dropped_departed"] += 1
                return
            except Exception as exc:
                if isinstance(exc, EngineDead):
                    self._engine_dead(exc)
                elif not isinstance(exc, ServiceError):
                    log.exception("turn failed")
                if seq == 0:  # nothing streamed yet: a plain error (unknown_npc comes here, before any token)
                    await self.send(ident, _error(msg.id, exc))
                else:
                    await self.send(ident, p.Done(id=msg.id, finish_reason="error", text=""))
                return
            self.finished.append((msg.id, result.finish_reason, result.completion_tokens))
            if alive:
                sent = 0
                for name, args in result.actions:  # validated against the declared schemas (narrative.actions)
                    if not await self.send(ident, p.Action(id=msg.id, seq=sent, name=name, args=args)):
                        return
                    sent += 1
                await self.send(
                    ident,
                    p.Done(
                        id=msg.id,
                        finish_reason=result.finish_reason,
                        text=result.text,
                        lore=result.lore,
                        tokens={"prompt": result.prompt_tokens, "cached": result.cached_tokens, "completion": result.completion_tokens},
                        timings={
                            "ttft_ms": round(result.ttft_ms, 1),
                            "total_ms": round(result.total_ms, 1),
                            "tokens_per_s": round(result.tokens_per_s, 1),
                        },
                        fields=result.fields or None,
                        actions=sent if result.declared else None,
                        rejected=[p.Rejected(name=n, reason=r) for n, r in result.rejected] or None,
                        forgotten_turns=result.forgotten_turns or None,
                    ),
                )
        finally:
            self.streams.pop((ident, msg.id), None)


class InsecureEndpoint(ValueError):
    """A non-loopback endpoint without CurveZMQ (and without ``allow_insecure_remote``)."""


def is_loopback(endpoint: str) -> bool:
    """Whether `endpoint` can only be reached from this machine (``tcp://127.*``, ``localhost``, ``[::1]``, ``ipc://``, ``inproc://``)."""
    import ipaddress

    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name or an interface (eth0, *): not provably loopback
        return False


def check_exposure(s: ServerSettings) -> tuple[tuple[bytes, bytes], Path] | None:
    """The CurveZMQ setup the endpoint needs: ((public, secret) server key, allowed-clients folder), or None.

    Raises:
        InsecureEndpoint: a non-loopback endpoint without CurveZMQ and without ``allow_insecure_remote``,
            or CurveZMQ half configured.
    """
    if s.curve_secret_key_file or s.curve_allowed_clients_dir:
        if not (s.curve_secret_key_file and s.curve_allowed_clients_dir):
            raise InsecureEndpoint("CurveZMQ needs both server.curve_secret_key_file and server.curve_allowed_clients_dir")
        from zmq.auth import load_certificate

        public, secret = load_certificate(s.curve_secret_key_file)
        if secret is None:
            raise InsecureEndpoint(f"{s.curve_secret_key_file} holds no secret key (give the .key_secret file `narrative keys` wrote)")
        allowed = Path(s.curve_allowed_clients_dir)
        if not allowed.is_dir():
            raise InsecureEndpoint(f"server.curve_allowed_clients_dir {allowed} is not a folder")
        return (public, secret), allowed
    if is_loopback(s.endpoint):
        return None
    if s.allow_insecure_remote:
        log.warning("serving %s WITHOUT authentication (server.allow_insecure_remote): anyone who reaches it can use the sidecar", s.endpoint)
        return None
    raise InsecureEndpoint(
        f"refusing to bind {s.endpoint} without CurveZMQ: set server.curve_secret_key_file and server.curve_allowed_clients_dir "
        "(`narrative keys` makes key pairs; see docs/security.md), or bind tcp://127.0.0.1, "
        "or set server.allow_insecure_remote = true on a trusted network"
    )


class _PeerGone(Exception):
    """A queued request whose peer left before the worker reached it: dropped without running."""


def _error(request_id: str, exc: BaseException) -> p.Error:
    """The wire error for an exception: a `ServiceError`'s own code (and a busy one's retry hint), else ``internal``."""
    if isinstance(exc, ServiceError):
        return p.Error(id=request_id, code=exc.code, message=exc.message, retry_after_ms=getattr(exc, "retry_after_ms", None))
    return p.Error(id=request_id, code=p.ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}")


def serve_forever(server: SidecarServer) -> None:
    """Run `server` on a fresh event loop until Ctrl-C / SIGTERM (Ctrl-C / Ctrl-Break on Windows).

    Clients get ``shutdown`` (reason ``stopping``, the signal's name as message) before the socket closes.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        install_stop_signals(loop, server.stop)
        await server.run()

    asyncio.run(main())


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[str], None]) -> list[str]:
    """Call ``stop(signal name)`` on the loop when the process is asked to stop; returns the signals handled.

    POSIX: SIGINT and SIGTERM through ``loop.add_signal_handler``. Windows has no
    ``add_signal_handler`` (``NotImplementedError`` on the Proactor loop): there
    ``signal.signal`` handles SIGINT (Ctrl-C) and SIGBREAK (Ctrl-Break, what a
    console host sends to stop a process) and hands the call to the loop.
    """
    import signal

    names = [n for n in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, n)]
    handled = []
    for name in names:
        sig = getattr(signal, name)
        try:
            loop.add_signal_handler(sig, stop, name)
        except (NotImplementedError, RuntimeError, ValueError):
            try:
                signal.signal(sig, lambda _signum, _frame, name=name: loop.call_soon_threadsafe(stop, name))
            except (ValueError, OSError):  # not the main thread, or a signal this platform refuses
                continue
        handled.append(name)
    return handled
