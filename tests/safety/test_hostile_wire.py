"""Hostile and broken clients against a real sidecar over loopback TCP (issue 13, "Found").

The server is a real `SidecarServer` with the real SmolLM2 model and dialogue engine; only the
lore retriever is a fake (`tests.safety.world.OneNpcRetriever`), so the sidecar starts in seconds.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from bridge import protocol as p
from bridge.client import SidecarClient, SidecarError, new_id
from bridge.server import SidecarServer
from bridge.settings import ServerSettings
from tests.conftest import ServerThread
from tests.safety.world import NPC, make_model, make_service


@pytest.fixture(scope="module")
def model():
    return make_model()


def start(model, **settings) -> ServerThread:
    st = ServerThread(SidecarServer(make_service(model), ServerSettings(endpoint="tcp://127.0.0.1:*", **settings)))
    st.start()
    return st


@pytest.fixture(scope="module")
def server(model):
    st = start(model)
    yield st
    st.stop()
    assert st.error is None, st.error


def alive(endpoint: str, timeout_s: float = 10.0) -> None:
    with SidecarClient(endpoint, timeout_s=timeout_s) as c:
        c.ping()


@pytest.mark.parametrize("payload", [bytes.fromhex("81a26964a0"), msgpack.packb({"v": 1, "type": "ping", "id": "x" * 129})],
                         ids=["empty-id", "id-129-chars"])
def test_unusable_request_id_gets_error_with_placeholder_id(server, payload):
    """Found: `{"id": ""}` (bytes 81 a2 69 64 a0) or a 129-char id killed the server."""
    endpoint = server.server.endpoint
    with SidecarClient(endpoint, timeout_s=10) as c:
        c.send_raw(payload)
        reply = c.recv(timeout_s=10)
        assert reply.type == "error" and reply.id == "?" and reply.code in (p.ErrorCode.INVALID, p.ErrorCode.BAD_FRAME)
        c.ping()
    assert server.error is None


def test_reader_that_never_reads_costs_only_its_own_replies(model):
    """Found: ~20,000 hello never read made send() raise zmq.Again and end the process."""
    st = start(model, send_hwm=20)
    endpoint = st.server.endpoint
    try:
        ctx = zmq.Context.instance()
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.RCVHWM, 1)
        flood.setsockopt(zmq.RCVBUF, 4096)  # little kernel buffering: the server's queue for it fills
        flood.setsockopt(zmq.LINGER, 0)
        flood.connect(endpoint)
        frame = p.encode(p.Hello(id="h" * 128, client="never-reads" * 10))
        with SidecarClient(endpoint, timeout_s=10) as other:  # another peer keeps the ROUTER writable
            other.ping()
            for i in range(20_000):
                flood.send(frame)
                if i % 2000 == 0:
                    other.ping()
            for _ in range(30):  # while the sidecar works through the 20,000 (a few seconds)
                time.sleep(0.5)
                other.ping()
        alive(endpoint)
        assert st.server.stats["dropped_replies"] > 0
        flood.close(linger=0)
        alive(endpoint)
    finally:
        st.stop()
    assert st.error is None, st.error


def test_flood_then_disconnect_is_bounded_and_others_are_served(model):
    """Found: ~100,000 say then a disconnect kept every turn queued; nobody else was served for 60 s."""
    st = start(model, max_queued_per_client=4, max_queued=16)
    endpoint = st.server.endpoint
    try:
        ctx = zmq.Context.instance()
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.LINGER, 0)
        flood.connect(endpoint)
        for i in range(3000):
            flood.send(p.encode(p.Say(id=f"f{i}", npc=NPC, text="Tell me everything.", max_tokens=8)))
        busy = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and busy < 100:
            if flood.poll(500):
                msg = p.decode(flood.recv())
                if msg.type == "error" and msg.code == p.ErrorCode.BUSY:
                    assert msg.retry_after_ms and msg.retry_after_ms > 0
                    busy += 1
        assert busy >= 100, busy
        flood.close(linger=0)
        t0 = time.monotonic()
        with SidecarClient(endpoint, timeout_s=60) as c:
            _, done = c.say_text(NPC, "Hello, Mira.", max_tokens=4)
            assert done.finish_reason in ("stop", "length")
        waited = time.monotonic() - t0
        assert waited < 45, waited  # at most the flooder's bounded queue (4 turns of 8 tokens) before us
        # the departed flooder's turns (batched beside ours) end at their next chunk; nothing of it lingers
        deadline = time.monotonic() + 30
        while st.server.queued() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st.server.queued() == 0
    finally:
        st.stop()
    assert st.error is None, st.error


def test_reconnect_with_same_routing_id_mid_stream_is_answered(server):
    """Found: a client that closed mid-stream and reconnected at once with the same routing id got nothing for 60 s."""
    endpoint = server.server.endpoint
    ctx = zmq.Context.instance()

    def dealer() -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"player-1")
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    a = dealer()
    a.send(p.encode(p.Say(id="long", npc=NPC, text="Tell me a long story about the forge.", max_tokens=200)))
    assert a.poll(60_000), "no chunk"
    a.close(linger=0)
    b = dealer()
    try:
        b.send(p.encode(p.Ping(id="again")))
        deadline = time.monotonic() + 10
        got = None
        while time.monotonic() < deadline and got is None:
            if b.poll(500):
                msg = p.decode(b.recv())
                if msg.id == "again":
                    got = msg
        assert got is not None and got.type == "pong"
    finally:
        b.close(linger=0)


def test_max_tokens_over_what_fits_is_a_named_error_and_the_advertised_limit_is_served(server):
    """Found: say max_tokens 4096 got `internal` (ContextOverflow) although ready advertised 4096."""
    with SidecarClient(server.server.endpoint, timeout_s=120) as c:
        ready = c.hello()
        limit = ready.limits["max_tokens"]
        assert limit + 64 <= ready.limits["n_ctx"]
        with pytest.raises(SidecarError) as err:
            list(c.say(NPC, "Hi.", max_tokens=4096, session=f"s-{new_id()}"))
        assert err.value.code == p.ErrorCode.CONTEXT_OVERFLOW
        _, done = c.say_text(NPC, "Hi.", max_tokens=limit, session=f"s-{new_id()}", seed=1)
        assert done.finish_reason in ("stop", "length")
