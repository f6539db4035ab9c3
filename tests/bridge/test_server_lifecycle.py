"""The ``shutdown`` event, and a loop that keeps answering: clients learn the sidecar is going down instead of waiting for a heartbeat timeout, and ping is answered while other requests wait for the decode worker.

Real ZeroMQ over loopback TCP and a real `SidecarServer`; the engine of the second test is a
fake (`FailingEngine`, named as one): it stands for a model that fails inside llama.cpp on every
turn, which the bundled model cannot be made to do on demand.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from bridge import protocol as p
from bridge.client import SidecarClient, SidecarError, new_id
from bridge.server import SidecarServer
from bridge.settings import ServerSettings
from narrative.llm import ModelError
from narrative.service import FATAL_AFTER, NarrativeService
from tests.conftest import ServerThread


@contextlib.contextmanager
def serving(engine) -> Iterator[str]:
    """A real SidecarServer over `engine` on loopback TCP; yields its endpoint, stops it after."""
    st = ServerThread(SidecarServer(NarrativeService(engine), ServerSettings(endpoint="tcp://127.0.0.1:*")))
    try:
        yield st.start()
    finally:
        st.stop()
    assert st.error is None, st.error


def wait_event(client: SidecarClient, kind: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ev in client.events(timeout_s=0.5):
            if ev.type == kind:
                return ev
    raise AssertionError(f"no {kind} event within {timeout_s} s")


def test_stop_sends_shutdown_to_every_client():
    st = ServerThread(SidecarServer(NarrativeService(None), ServerSettings(endpoint="tcp://127.0.0.1:*")))
    endpoint = st.start()
    with SidecarClient(endpoint, timeout_s=10) as a, SidecarClient(endpoint, timeout_s=10) as b:
        a.hello("a")
        b.hello("b")
        st.loop.call_soon_threadsafe(st.server.stop, "SIGTERM")
        for c in (a, b):
            ev = wait_event(c, "shutdown")
            assert ev.reason == "stopping" and ev.message == "SIGTERM" and ev.id.startswith("ev-")
    st.thread.join(30)
    assert not st.thread.is_alive() and st.error is None


class FailingEngine:
    """A fake dialogue engine whose every turn fails inside the model (as llama_decode returning an error)."""

    class model:
        n_ctx = 512

    class retriever:
        class index:
            @staticmethod
            def npcs():
                class Card:
                    id = "fake-npc"

                return [Card()]

    calls = 0

    def turn(self, *args, **kwargs):
        FailingEngine.calls += 1
        raise ModelError("llama_decode failed with code -3 at position 0 of sequence 0")


def test_an_engine_that_keeps_failing_sends_engine_failed_and_stops():
    server = SidecarServer(NarrativeService(FailingEngine()), ServerSettings(endpoint="tcp://127.0.0.1:*"))
    st = ServerThread(server)
    endpoint = st.start()
    with SidecarClient(endpoint, timeout_s=10) as c:
        assert c.hello("t").npcs == ["fake-npc"]
        for i in range(FATAL_AFTER):
            with pytest.raises(SidecarError) as err:
                c.say_text("fake-npc", "hello")
            assert err.value.code == "internal"
        ev = wait_event(c, "shutdown")
        assert ev.reason == "engine_failed" and "llama_decode failed" in ev.message
    st.thread.join(30)
    assert not st.thread.is_alive() and st.error is None
    assert FailingEngine.calls == FATAL_AFTER


def test_one_failed_turn_is_not_fatal():
    """A single model failure answers `internal` and the sidecar keeps serving (ping still answered, no shutdown)."""
    with serving(FailingEngine()) as endpoint, SidecarClient(endpoint, timeout_s=10) as c:
        c.hello("t")
        with pytest.raises(SidecarError):
            c.say_text("fake-npc", "hello")
        assert c.ping() is not None
        assert not c.events(timeout_s=0.3)


class SlowLoreEngine(FailingEngine):
    """A fake dialogue engine (named as one) whose lore query holds the decode worker for 2 s, as a turn would."""

    class retriever(FailingEngine.retriever):
        vector_k = 1

        class index(FailingEngine.retriever.index):
            entries: dict = {}

            @staticmethod
            def nearest(text, k):
                time.sleep(2.0)
                return []


def test_ping_is_answered_while_a_lore_query_waits_for_the_worker():
    """lore.query (like reset, lore.explain, generate) waits for the decode worker; the loop must keep answering ping."""
    with serving(SlowLoreEngine()) as endpoint, SidecarClient(endpoint, timeout_s=10) as c:
        c.hello("t")
        qid = c.send(p.LoreQuery(id=new_id(), text="anything"))
        time.sleep(0.2)
        rtt = c.ping()
        assert rtt < 1000, f"ping waited {rtt:.0f} ms behind a lore query"
        assert c.recv(qid).type == "lore.result"


class BusyEngine(FailingEngine):
    """A fake dialogue engine (named as one) whose model queue is always full, as the scheduler's Busy."""

    def turn(self, *args, **kwargs):
        from narrative.scheduler import Busy

        raise Busy("64 turns wait for the model", retry_after_ms=1500)


def test_a_full_model_queue_is_busy_with_its_retry_hint_on_the_wire():
    with serving(BusyEngine()) as endpoint, SidecarClient(endpoint, timeout_s=10) as c:
        c.hello("t")
        rid = c.send(p.Say(id=new_id(), npc="fake-npc", text="hello"))
        err = c.recv(rid)
        assert err.type == "error" and err.code == "busy" and err.retry_after_ms == 1500, err
