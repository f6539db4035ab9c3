"""The sidecar end to end: real SmolLM2 on llama.cpp, real chromadb, real ZeroMQ over loopback TCP."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest

from bridge import protocol as p
from bridge.client import SidecarClient, SidecarError, SidecarTimeout, new_id

NPC = "odile-brask"
OTHER = "hale-corrow"


def test_hello_lists_npcs_and_limits(client):
    ready = client.hello("pytest")
    assert NPC in ready.npcs and OTHER in ready.npcs
    assert ready.limits["max_frame_bytes"] == 16 * 1024
    assert ready.models["dialogue"].endswith(".gguf")


def test_two_turn_conversation_streams_and_remembers(client, runtime):
    session = f"s-{new_id()}"
    chunks1, done1 = client.say_text(NPC, "Good evening. What is the Cracked Bellows famous for?", session=session, max_tokens=40, seed=1)
    assert len(chunks1) > 1, "the reply must stream in more than one chunk"
    assert "".join(chunks1).strip() == done1.text
    assert done1.finish_reason in ("stop", "length")
    assert NPC in done1.lore and len(done1.lore) > 1  # her card plus scene/turn lore
    assert done1.timings["ttft_ms"] > 0 and done1.tokens["completion"] > 0

    chunks2, done2 = client.say_text(NPC, "And who is Pell Sedgewick?", session=session, max_tokens=40, seed=1)
    # turn 2's prompt holds turn 1 (its prompt and the reply) and reuses it from the context
    assert done2.tokens["prompt"] >= done1.tokens["prompt"] + done1.tokens["completion"]
    assert done2.tokens["cached"] >= done1.tokens["prompt"]
    conv = runtime.engine.conversations[(session, NPC)]
    assert [t.player for t in conv.turns] == [
        "Good evening. What is the Cracked Bellows famous for?",
        "And who is Pell Sedgewick?",
    ]
    assert conv.turns[0].reply == done1.text
    assert "pell-sedgewick" in done2.lore


def test_two_clients_at_once_get_their_own_streams(sidecar):
    results: dict[str, object] = {}

    def talk(npc: str, line: str) -> None:
        with SidecarClient(sidecar[0], timeout_s=120) as c:
            rid = new_id()
            seqs, texts, done = [], [], None
            for msg in c.say(npc, line, request_id=rid, max_tokens=24, session=f"par-{npc}"):
                assert msg.id == rid
                if msg.type == "chunk":
                    seqs.append(msg.seq)
                    texts.append(msg.text)
                else:
                    done = msg
            results[npc] = (seqs, texts, done)

    threads = [threading.Thread(target=talk, args=(n, "Who are you?")) for n in (NPC, OTHER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {NPC, OTHER}
    for npc, (seqs, texts, done) in results.items():
        assert seqs == list(range(len(seqs))), f"{npc}: chunks out of order or missing"
        assert "".join(texts).strip() == done.text
        assert npc in done.lore


def test_cancel_mid_stream_frees_the_model(client, sidecar):
    rid = new_id()
    seen = 0
    done = None
    for msg in client.say(NPC, "Tell me everything about the Long Smoulder, slowly.", request_id=rid, max_tokens=400, temperature=1.0, session="cancel"):
        if msg.type == "chunk":
            seen += 1
            if seen == 2:
                client.cancel(rid)
        else:
            done = msg
    assert done.finish_reason == "cancelled"
    assert done.tokens["completion"] < 400
    # the model is free: the next turn runs
    _, after = client.say_text(NPC, "Never mind.", session="cancel", max_tokens=8)
    assert after.finish_reason in ("stop", "length")


def test_disconnect_mid_stream_cancels(sidecar):
    endpoint, server = sidecar
    c = SidecarClient(endpoint, timeout_s=120)
    rid = new_id()
    stream = c.say(NPC, "Describe every street of Cinderfen in detail.", request_id=rid, max_tokens=400, temperature=1.0, session="gone")
    next(stream)
    c.close()  # vanish mid-stream
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(f[0] == rid for f in server.finished):
        time.sleep(0.1)
    [(_, reason, completion)] = [f for f in server.finished if f[0] == rid]
    assert reason == "cancelled" and completion < 400
    with SidecarClient(endpoint, timeout_s=120) as other:
        assert other.ping() > 0


def _raw(client: SidecarClient, payload: bytes, timeout_s: float = 10):
    client.send_raw(payload)
    return client.recv(timeout_s=timeout_s)


@pytest.mark.parametrize(
    "payload,code,needle",
    [
        (b"\x92\x01\x02", p.ErrorCode.BAD_FRAME, "map"),
        (b"\xc1garbage", p.ErrorCode.BAD_FRAME, "msgpack"),
        (msgpack.packb({"v": 1, "id": "u1", "type": "fly"}), p.ErrorCode.UNKNOWN_TYPE, "fly"),
        (msgpack.packb({"v": 1, "id": "m1", "type": "say", "npc": NPC}), p.ErrorCode.INVALID, "field 'text'"),
        (msgpack.packb({"v": 1, "id": "t1", "type": "say", "npc": NPC, "text": 42}), p.ErrorCode.INVALID, "field 'text'"),
        (msgpack.packb({"v": 1, "id": "n1", "type": "say", "npc": "the-king", "text": "hi"}), p.ErrorCode.UNKNOWN_NPC, "the-king"),
        (msgpack.packb({"v": 1, "id": "b1", "type": "say", "npc": NPC, "text": "x" * 20000}), p.ErrorCode.FRAME_TOO_LARGE, "limit is 16384"),
        (msgpack.packb({"v": 1, "id": "c9", "type": "cancel", "target": "nothing"}), p.ErrorCode.UNKNOWN_REQUEST, "nothing"),
    ],
)
def test_bad_input_gets_an_error_and_the_server_goes_on(client, payload, code, needle):
    reply = _raw(client, payload)
    assert reply.type == "error", reply
    assert reply.code == code
    assert needle in reply.message
    assert client.ping() > 0


def test_error_reply_carries_request_id(client):
    reply = _raw(client, msgpack.packb({"v": 1, "id": "abc", "type": "say", "npc": "nobody", "text": "hi"}))
    assert reply.id == "abc"
    with pytest.raises(SidecarError) as info:
        client.say_text("nobody", "hi")
    assert info.value.code == p.ErrorCode.UNKNOWN_NPC


def test_frame_over_hard_limit_drops_only_that_connection(sidecar):
    endpoint, _ = sidecar
    with SidecarClient(endpoint, timeout_s=3) as bad, SidecarClient(endpoint, timeout_s=30) as good:
        assert good.ping() > 0
        bad.send_raw(b"\x00" * (300 * 1024))  # over ZMQ_MAXMSGSIZE (256 KiB here): libzmq closes that connection
        with pytest.raises(SidecarTimeout):
            bad.recv(timeout_s=1.5)
        assert good.ping() > 0  # others unaffected
        time.sleep(0.5)  # the DEALER reconnects by itself
        bad.timeout_s = 30
        assert bad.ping() > 0


def test_ping_answers_while_a_model_decodes(sidecar):
    endpoint, _ = sidecar
    with SidecarClient(endpoint, timeout_s=120) as talker, SidecarClient(endpoint, timeout_s=10) as pinger:
        rid = new_id()
        stream = talker.say(OTHER, "Tell me a long story about the Ashwardens.", request_id=rid, max_tokens=120, temperature=1.0, session="ping")
        next(stream)  # decoding has started
        rtts = [pinger.ping() for _ in range(3)]
        for _ in stream:
            pass
    assert max(rtts) < 5000, rtts  # answered during the decode, not after it


def test_lore_query_over_the_bridge(client):
    res = client.lore_query("Any news of the missing barge?", npc=NPC)
    ids = [e.entry for e in res.entries]
    assert ids[0] == NPC and res.entries[0].why == "card"
    assert "loss-of-the-patient-heron" in ids
