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
disconnected client fails (``EHOSTUNREACH``) and its stream is cancelled;
ZMTP heartbeats (``ZMQ_HEARTBEAT_IVL``/``_TIMEOUT``) make libzmq notice a dead
TCP peer that never closed its connection.
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
        self.turn_executor = ThreadPoolExecutor(max_workers=max(1, service.turn_slots()), thread_name_prefix="turn")
        self.streams: dict[tuple[bytes, str], threading.Event] = {}
        self.tasks: set[asyncio.Task] = set()
        self.finished: deque[tuple[str, str, int]] = deque(maxlen=256)  # (request id, finish_reason, completion tokens)
        self.bound = asyncio.Event()
        self.endpoint = settings.endpoint
        self._stop = asyncio.Event()
        self.handlers: dict[str, Callable[[bytes, object], Awaitable[None]]] = {
            "hello": self._hello,
            "ping": self._ping,
            "say": self._say,
            "cancel": self._cancel,
            "reset": self._reset,
            "lore.query": self._lore_query,
            "lore.explain": self._lore_explain,
            "generate": self._generate,
        }
        self.peers: set[bytes] = set()  # identities that said hello: they get lore.changed / lore.error events
        self.lore_dir: Path | None = None  # set by watch_lore(): hot reload while serving
        self._events = 0
        self.shutdown_reason: tuple[str, str] = ("stopping", "")  # (reason, message) of the shutdown event

    # ---- socket ----------------------------------------------------------

    def _open(self) -> zmq.asyncio.Socket:
        s = self.settings
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, s.hard_max_frame_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(s.peer_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(s.peer_timeout_s * 1000))
        sock.bind(s.endpoint)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    async def send(self, ident: bytes, msg: p._Msg) -> bool:
        """Send one message to a peer; False when the peer is gone."""
        assert self.sock is not None
        try:
            await self.sock.send_multipart([ident, p.encode(msg)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise

    async def run(self) -> None:
        """Bind and serve until `stop` is called. Raises ``zmq.ZMQError`` if the endpoint cannot be bound."""
        self.sock = self._open()
        self.bound.set()
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
                await self._dispatch(frames)
        finally:
            reason, message = self.shutdown_reason
            await self.broadcast(p.Shutdown(id=self._event_id(), reason=reason, message=message))
            for cancel in self.streams.values():
                cancel.set()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
            self.sock.close(linger=0)
            self.executor.shutdown(wait=True, cancel_futures=True)
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

    async def _run_blocking(self, fn, *args):
        """Run a blocking service call on the decode worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _dispatch(self, frames: list[bytes]) -> None:
        ident = frames[0]
        if len(frames) != 2:
            await self.send(ident, p.Error(id="?", code=p.ErrorCode.BAD_FRAME, message=f"expected 1 payload frame, got {len(frames) - 1}"))
            return
        try:
            msg = p.decode_request(frames[1], self.settings.max_frame_bytes)
        except p.ProtocolError as exc:
            log.info("bad request from %s: %s", ident.hex(), exc.message)
            await self.send(ident, p.Error(id=exc.request_id, code=exc.code, message=exc.message))
            return
        try:
            await self.handlers[msg.type](ident, msg)
        except ServiceError as exc:  # the one place a service error becomes a wire error
            await self.send(ident, _error(msg.id, exc))
        except EngineDead as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=str(exc)))
            self._engine_dead(exc)
        except Exception as exc:  # a handler bug must not kill the loop
            log.exception("handler %s failed", msg.type)
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"))

    # ---- handlers --------------------------------------------------------

    async def _hello(self, ident: bytes, msg: p.Hello) -> None:
        self.peers.add(ident)
        svc = self.service
        lim = svc.limits()
        limits = {"max_frame_bytes": self.settings.max_frame_bytes, "max_tokens": lim.max_tokens, "n_ctx": lim.n_ctx}
        await self.send(ident, p.Ready(id=msg.id, server=SERVER_NAME, models=svc.models, npcs=svc.npcs(), limits=limits))

    async def _ping(self, ident: bytes, msg: p.Ping) -> None:
        await self.send(ident, p.Pong(id=msg.id))

    async def _reset(self, ident: bytes, msg: p.Reset) -> None:
        await self._run_blocking(self.service.reset, msg.session or ident.hex(), msg.npc)
        await self.send(ident, p.Ok(id=msg.id))

    async def _cancel(self, ident: bytes, msg: p.Cancel) -> None:
        cancel = self.streams.get((ident, msg.target))
        if cancel is None:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_REQUEST, message=f"no running request {msg.target!r}"))
            return
        cancel.set()  # the target stream ends with done(finish_reason=cancelled)

    async def _lore_query(self, ident: bytes, msg: p.LoreQuery) -> None:
        hits = await self._run_blocking(self.service.query_lore, msg.text, msg.npc)
        await self.send(ident, p.LoreResult(id=msg.id, entries=[p.LoreHit(**asdict(h)) for h in hits]))

    async def _lore_explain(self, ident: bytes, msg: p.LoreExplain) -> None:
        d = await self._run_blocking(self.service.explain, msg.npc, msg.text, msg.history)
        await self.send(ident, p.LoreExplanation(id=msg.id, **asdict(d)))

    async def _generate(self, ident: bytes, msg: p.Generate) -> None:
        """One quest from a spec (``narrative batch``'s generator), on the decode worker; the batch model loads on first use."""
        source = msg.quest if msg.quest is not None else msg.spec
        r = await self._run_blocking(lambda: self.service.generate_quest(source, seed=msg.seed, max_tokens=msg.max_tokens))
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
                self.peers.discard(ident)

    async def _say(self, ident: bytes, msg: p.Say) -> None:
        key = (ident, msg.id)
        if key in self.streams:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INVALID, message=f"request id {msg.id!r} is already streaming"))
            return
        cancel = threading.Event()
        self.streams[key] = cancel
        task = asyncio.create_task(self._stream(ident, msg, cancel))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _stream(self, ident: bytes, msg: p.Say, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.settings.stream_queue)

        def put(item: object) -> None:  # decoding thread: blocks while the queue is full
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        def work():
            try:
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
                    ),
                )
        finally:
            self.streams.pop((ident, msg.id), None)


def _error(request_id: str, exc: BaseException) -> p.Error:
    """The wire error for an exception: a `ServiceError`'s own code, else ``internal``."""
    if isinstance(exc, ServiceError):
        return p.Error(id=request_id, code=exc.code, message=exc.message)
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
