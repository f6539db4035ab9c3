"""The sidecar's ZeroMQ ROUTER server.

One asyncio loop owns the socket (``zmq.asyncio``). Requests are dispatched
through a handler table keyed by message type; a handler's exception becomes an
``error`` reply and the loop goes on. Model and database calls run in one
worker thread, so pings are answered while a model decodes. A bounded queue
sits between the decoding thread and the sender (backpressure).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zmq
import zmq.asyncio

from bridge import protocol as p
from lore.retrieve import UnknownNpc
from narrative.dialogue import DialogueEngine
from narrative.settings import ServerSettings

log = logging.getLogger(__name__)

SERVER_NAME = "narrative-sidecar/0.1"
_END = object()


class SidecarServer:
    """Serves the protocol in `bridge.protocol` for one `DialogueEngine`.

    Args:
        engine: the dialogue engine (model + lore).
        settings: endpoint and limits.
        models: role -> model name, announced in ``ready``.
    """

    def __init__(self, engine: DialogueEngine, settings: ServerSettings, models: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.models = models or {}
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
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
        self.quests = None  # a narrative.batch.runner.QuestService answering 'generate'; None: the request is refused
        self.peers: set[bytes] = set()  # identities that said hello: they get lore.changed / lore.error events
        self.lore_dir: Path | None = None  # set by watch_lore(): hot reload while serving
        self._events = 0

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
            for cancel in self.streams.values():
                cancel.set()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=10)
            self.sock.close(linger=0)
            self.executor.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        self._stop.set()

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
        except Exception as exc:  # a handler bug must not kill the loop
            log.exception("handler %s failed", msg.type)
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"))

    # ---- handlers --------------------------------------------------------

    async def _hello(self, ident: bytes, msg: p.Hello) -> None:
        self.peers.add(ident)
        m = self.engine.model
        await self.send(
            ident,
            p.Ready(
                id=msg.id,
                server=SERVER_NAME,
                models=self.models,
                npcs=[e.id for e in self.engine.retriever.index.npcs()],
                limits={
                    "max_frame_bytes": self.settings.max_frame_bytes,
                    "max_tokens": 4096,
                    "n_ctx": m.n_ctx,
                },
            ),
        )

    async def _ping(self, ident: bytes, msg: p.Ping) -> None:
        await self.send(ident, p.Pong(id=msg.id))

    async def _reset(self, ident: bytes, msg: p.Reset) -> None:
        try:
            self.engine.reset(msg.session or ident.hex(), msg.npc)
        except UnknownNpc as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_NPC, message=exc.args[0]))
            return
        await self.send(ident, p.Ok(id=msg.id))

    async def _cancel(self, ident: bytes, msg: p.Cancel) -> None:
        cancel = self.streams.get((ident, msg.target))
        if cancel is None:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_REQUEST, message=f"no running request {msg.target!r}"))
            return
        cancel.set()  # the target stream ends with done(finish_reason=cancelled)

    async def _lore_query(self, ident: bytes, msg: p.LoreQuery) -> None:
        r = self.engine.retriever
        loop = asyncio.get_running_loop()
        try:
            if msg.npc:
                sel = await loop.run_in_executor(self.executor, r.select, msg.npc, msg.text)
                picks = sel.prefix + sel.turn
            else:
                hits = await loop.run_in_executor(self.executor, r.index.nearest, msg.text, r.vector_k)
                picks = [_vector_pick(r, eid, sim) for eid, sim in hits if eid in r.index.entries]
        except UnknownNpc as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_NPC, message=exc.args[0]))
            return
        hits_out = [
            p.LoreHit(entry=x.entry.id, name=x.entry.name, kind=x.entry.kind.value, score=round(x.score, 4), why=x.why, tokens=x.tokens)
            for x in picks
        ]
        await self.send(ident, p.LoreResult(id=msg.id, entries=hits_out))

    # ---- lore: explain and hot reload -------------------------------------

    async def _lore_explain(self, ident: bytes, msg: p.LoreExplain) -> None:
        from lore.explain import explain

        loop = asyncio.get_running_loop()
        try:
            d = await loop.run_in_executor(self.executor, explain, self.engine.retriever, msg.npc, msg.text, msg.history)
        except UnknownNpc as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_NPC, message=exc.args[0]))
            return
        fields = {k: v for k, v in d.items() if k not in ("line",)}
        await self.send(ident, p.LoreExplanation(id=msg.id, **fields))

    # ---- content generation ------------------------------------------------

    async def _generate(self, ident: bytes, msg: p.Generate) -> None:
        """One quest from a spec (``narrative.batch``), on the decode worker thread; the batch model loads on first use."""
        from narrative.batch.prompt import UnknownEntry
        from narrative.batch.spec import SpecError

        if self.quests is None:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INVALID, message="this sidecar does not serve 'generate' (no quest service)"))
            return
        loop = asyncio.get_running_loop()
        source = msg.quest if msg.quest is not None else msg.spec
        try:
            r = await loop.run_in_executor(self.executor, lambda: self.quests.generate(source, seed=msg.seed, max_tokens=msg.max_tokens))
        except KeyError as exc:
            code = p.ErrorCode.INVALID if isinstance(exc, UnknownEntry) else p.ErrorCode.UNKNOWN_QUEST
            await self.send(ident, p.Error(id=msg.id, code=code, message=str(exc.args[0])))
            return
        except SpecError as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INVALID, message=str(exc)))
            return
        if r.quest is None or r.status == "failed":
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.GENERATION_FAILED, message=r.error or "no valid text"))
            return
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

    def watch_lore(self, root: Path) -> None:
        """Hot-reload the lore folder `root` while serving (call before `run`); see `lore.watch`."""
        self.lore_dir = Path(root)

    async def _watch_lore(self) -> None:
        from lore.watch import watch_lore

        loop = asyncio.get_running_loop()

        async def blocking(fn, *args):  # the worker thread: never during a turn's retrieval or decode
            return await loop.run_in_executor(self.executor, fn, *args)

        assert self.lore_dir is not None
        await watch_lore(self.lore_dir, self.engine.retriever.index, blocking, self._lore_event, self._stop)

    async def _lore_event(self, ev) -> None:
        self._events += 1
        eid = f"ev-{self._events}"
        if ev.kind == "error":
            for prob in ev.problems:
                await self.broadcast(p.LoreFileError(id=eid, path=ev.files[0], line=prob.line, message=prob.message))
        else:
            n = sum(1 for e in self.engine.retriever.index.entries.values() if e.kind.value != "npc")
            await self.broadcast(p.LoreChanged(id=eid, files=ev.files, entries=n, added=ev.report.added, deleted=ev.report.deleted))

    async def broadcast(self, msg: p._Msg) -> None:
        """Send an event to every peer that said hello; peers that are gone are forgotten."""
        for ident in list(self.peers):
            if not await self.send(ident, msg):
                self.peers.discard(ident)

    async def _say(self, ident: bytes, msg: p.Say) -> None:
        try:
            self.engine.retriever.npc(msg.npc)
        except UnknownNpc as exc:
            await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.UNKNOWN_NPC, message=exc.args[0]))
            return
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
                return self.engine.turn(
                    msg.session or ident.hex(),
                    msg.npc,
                    msg.text,
                    max_tokens=msg.max_tokens,
                    temperature=msg.temperature,
                    seed=msg.seed,
                    cancel=cancel,
                    on_text=put,
                )
            finally:
                put(_END)

        future = loop.run_in_executor(self.executor, work)
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
                log.exception("turn failed")
                if seq == 0:
                    await self.send(ident, p.Error(id=msg.id, code=p.ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"))
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


def _vector_pick(r, eid: str, sim: float):
    from lore.retrieve import Pick

    e = r.index.entries[eid]
    return Pick(e, sim, f"vector:{sim:.3f}", r.tokens(e))


def serve_forever(server: SidecarServer) -> None:
    """Run `server` on a fresh event loop until Ctrl-C / SIGTERM."""
    import signal

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.run()

    asyncio.run(main())
