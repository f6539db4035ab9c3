"""The Godot client: its wire layer run in a real engine (godot3-server) against a real sidecar.

What runs where (see bridge/clients/godot/README.md):

- Run in an engine: the addon's msgpack.gd, zmtp.gd and narrative_client.gd, ported mechanically
  to Godot 3 by scripts/godot3_port.py, under ``godot3-server`` (Godot 3.2, headless), over real
  TCP to a real `SidecarServer` (bundled SmolLM2 on llama.cpp, real ZeroMQ ROUTER) on loopback.
- Only parsed and linted: the Godot 4 sources themselves (test_godot_gdscript.py, gdtoolkit),
  plugin.gd and the demo scene's script.

Tests skip with the reason when godot3-server is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import socket
import time

import msgpack
import pytest

from tests.clients import godot_harness as gh

NPC = "odile-brask"
IDLE_S = 7.0  # longer than PEER_TIMEOUT_S: only answered ZMTP PINGs keep the connection
PEER_TIMEOUT_S = 3.0

pytestmark = pytest.mark.skipif(gh.godot3_binary() is None, reason="godot3-server is not installed (scripts/setup.sh apt-installs it; Debian/Ubuntu only)")


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    rc, events, log = gh.run_vectors(tmp_path_factory.mktemp("godot3-vectors"), timeout_s=120)
    assert rc == 0, log
    return events


def test_engine_codec_decodes_and_reencodes_every_protocol_vector(vector_run):
    got = [e for e in vector_run if e["ev"] == "vector"]
    want = gh.vectors()
    assert [e["type"] for e in got] == [v["type"] for v in want]
    for e, v in zip(got, want):
        assert e["error"] == "", (v["type"], e["error"])
        assert e["value"] == v["json"], v["type"]  # floats compared as exact float64 bits
        assert e["reencoded"] == v["msgpack_hex"], f"{v['type']}: not byte-exact"
        assert e["truncated_all_refused"], f"{v['type']}: a truncated prefix decoded without an error"


def test_engine_codec_encodes_like_msgpack_python(vector_run):
    got = [e for e in vector_run if e["ev"] == "encode"]
    assert len(got) == len(gh.ENCODE_CASES)
    for e, value in zip(got, gh.ENCODE_CASES):
        assert e["error"] == "" and e["back_error"] == ""
        assert e["hex"] == msgpack.packb(value, use_bin_type=True).hex(), repr(value)[:80]
        assert e["back"] == value, repr(value)[:80]


def test_engine_codec_reads_every_width_and_refuses_bad_input(vector_run):
    got = {e["hex"]: (e["value"], e["error"]) for e in vector_run if e["ev"] == "decode"}
    assert set(got) == set(gh.DECODE_CASES)
    for h, (value, err) in got.items():
        raw = bytes.fromhex(h)
        if h == "cfffffffffffffffff":
            assert (value, err) == (-1, "")  # uint64 over 2^63-1 wraps (GDScript ints are int64)
        elif h in ("c1", "d40100", "c70100"):
            assert err.startswith("bad type byte"), h
        elif h in ("dd7fffffff", "a5616263"):
            assert err == "truncated", h
        elif h == "0102":
            assert err == "trailing bytes"
        else:
            assert err == "", h
            assert value == msgpack.unpackb(raw, raw=False), h


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(runtime, endpoint: str):
    from bridge.server import SidecarServer
    from tests.conftest import ServerThread

    settings = runtime.settings.server.model_copy(update={"endpoint": endpoint, "peer_timeout_s": PEER_TIMEOUT_S})
    st = ServerThread(SidecarServer(runtime.service(), settings))
    st.start()
    return st


def test_engine_client_session_against_the_real_sidecar(runtime, tmp_path):
    """hello/ready, ping, a streamed say, unknown_npc, cancel mid-stream (with a ping during the
    decode), reset, lore.query, an idle connection kept by PONGs, a connection reset mid-stream
    (in-flight say -> 'disconnected', reconnect), and a sidecar restart mid-stream (reconnect, next say works)."""
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    first = _server(runtime, endpoint)
    servers = [first]

    def restart() -> None:
        servers[-1].stop()  # the sidecar goes away mid-stream...
        time.sleep(0.5)
        servers.append(_server(runtime, endpoint))  # ...and comes back on the same endpoint

    try:
        rc, run = gh.run_session(tmp_path / "proj", port, NPC, IDLE_S, restart)
    finally:
        servers[-1].stop()
    ev = run.events
    print(gh.transcript(ev, "Godot 3 port of the Godot client vs a real sidecar (pytest run)"))
    assert rc == 0, f"{ev[-3:]}\n{run.log()}"
    assert ev[-1]["ev"] == "finished"

    def at(step: int, kind: str) -> list[dict]:
        return [e for e in ev if e["step"] == step and e["ev"] == kind]

    def says_done(step: int) -> list[dict]:
        return [e for e in at(step, "done") if e["message"]["type"] == "done"]

    connected = [e for e in ev if e["ev"] == "connected"]
    assert NPC in connected[0]["npcs"] and connected[0]["limits"]["max_frame_bytes"] > 0
    assert at(1, "pong") and at(1, "pong")[0]["rtt_ms"] < 1000

    # a say that streams more than one chunk, in order, then done
    chunks = at(3, "chunk")
    [done] = says_done(3)
    assert len(chunks) > 1 and [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks).strip() == done["message"]["text"]
    assert done["message"]["finish_reason"] in ("stop", "length") and NPC in done["message"]["lore"]
    assert isinstance(done["message"]["timings"]["ttft_ms"], float)

    [err] = at(4, "error")
    assert err["code"] == "unknown_npc" and "the-king" in err["message"]

    # a request with no reply within its timeout: 'timeout' (and the client cancels it on the sidecar)
    assert [e["code"] for e in at(13, "error")] == ["timeout"]

    # cancel mid-stream, and a ping answered during the decode
    [cancel_done] = says_done(5)
    assert cancel_done["message"]["finish_reason"] == "cancelled"
    assert cancel_done["message"]["tokens"]["completion"] < 200
    assert at(5, "pong") and at(5, "pong")[0]["rtt_ms"] < 5000

    assert at(6, "done")[0]["message"]["type"] == "ok"
    lore = at(7, "done")[0]["message"]
    assert lore["type"] == "lore.result" and lore["entries"][0]["entry"] == NPC

    # idle longer than the sidecar's heartbeat timeout: our PONGs keep the connection
    [idle] = at(8, "idle_end")
    assert idle["zmtp_pings_answered"] >= 2 and idle["connections"] == 1
    assert not [e for e in ev if e["ev"] == "disconnected" and e["step"] < 10]
    assert at(9, "pong")

    # connection reset mid-stream: the in-flight say fails with 'disconnected' (never resent), reconnect
    assert [e["code"] for e in at(10, "error")] == ["disconnected"]
    assert not says_done(10)
    assert [e["connections"] for e in connected] == [1, 2, 3]
    # sidecar restart mid-stream: a graceful stop ends the stream (done 'cancelled') or the drop fails it
    assert says_done(11) or [e["code"] for e in at(11, "error")] == ["disconnected"]
    assert says_done(12)
    # never resent: after its 'disconnected' error, the cut request id is never heard of again
    [lost] = at(10, "error")
    [cut] = at(10, "cut_me")
    assert lost["t_ms"] - cut["t_ms"] < 15000, "the reset was noticed by neither a failed write nor the heartbeat timeout (10 s)"
    assert not [e for e in ev if e.get("id") == lost["id"] and e["t_ms"] > lost["t_ms"]]
