"""Protocol fuzzing (issue 13): generated frames against the real sidecar process over loopback TCP.

Hypothesis generates frames: random bytes, truncated msgpack, request-shaped maps with wrong
types per field, huge ints, deep nesting, non-str keys, bin for str, ext types, multi-frame
messages, unknown types. Each frame goes to a real `SidecarServer` process (the one-NPC world
of `tests.safety.world`: real SmolLM2, real dialogue engine) and must be answered with the
error the codec (`bridge.protocol.decode_request`) gives it, or dropped by a documented rule
(a `cancel` of a running stream has no reply of its own). After every 1,000 frames a second
client must get a `pong` and a real turn. The process must never exit.

``NARRATIVE_FUZZ_FRAMES`` (default 10000) sets the count; the figures go to stdout
(``pytest -s``) and ``fuzz-figures.json`` in the sidecar's state dir.
"""

from __future__ import annotations

import json
import os
import time

import msgpack
import pytest
import zmq

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bridge import protocol as p  # noqa: E402
from bridge.client import SidecarClient  # noqa: E402
from tests.safety.procs import SidecarProcess  # noqa: E402
from tests.safety.world import NPC  # noqa: E402

FRAMES = int(os.environ.get("NARRATIVE_FUZZ_FRAMES", "10000"))
CHECK_EVERY = 1000
ANSWER_TIMEOUT_S = 60.0  # a valid say is a real turn, queued behind others on a loaded machine: a hang is no answer in 60 s
FIELDS = ["v", "id", "type", "npc", "text", "session", "max_tokens", "temperature", "seed", "target", "client",
          "history", "quest", "spec", "kind"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(),
    st.text(max_size=40), st.binary(max_size=40), st.just("x" * 5000),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
keys = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.binary(max_size=4))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=12)
good = {
    "v": st.just(1), "id": st.text(min_size=1, max_size=12), "npc": st.sampled_from([NPC, "nobody", "nobody-2", "x"]),
    "text": st.text(min_size=1, max_size=30), "session": st.sampled_from(["", "fz-1", "fz-2"]), "max_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2), "seed": st.integers(0, 2**31), "target": st.text(min_size=1, max_size=8),
    "client": st.text(max_size=10), "history": st.lists(st.text(max_size=10), max_size=3), "quest": st.text(max_size=10),
    "spec": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), "kind": st.just("quest"),
}
type_names = st.one_of(st.sampled_from(sorted(p.REQUEST_TYPES) + ["ready", "done", "error", "x" * 300, ""]), values)


@st.composite
def request_like(draw) -> dict:
    out: dict = {"type": draw(type_names)}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        out[name] = draw(st.one_of(good.get(name, values), values)) if name != "type" else out["type"]
    for k, v in draw(st.dictionaries(keys, values, max_size=2)).items():  # unknown / non-str keys
        out.setdefault(k, v)
    return out


REQUEST_FIELDS = {
    "hello": ["client"], "ping": [], "say": ["npc", "text", "session", "max_tokens", "temperature", "seed"],
    "cancel": ["target"], "reset": ["npc", "session"], "lore.query": ["text", "npc"],
    "lore.explain": ["npc", "text", "history"], "generate": ["kind", "quest", "seed"],
}


@st.composite
def near_valid(draw) -> dict:
    """A valid request of a random type with at most one field replaced by any value, or dropped."""
    kind = draw(st.sampled_from(sorted(REQUEST_FIELDS)))
    out = {"v": 1, "id": draw(good["id"]), "type": kind}
    for name in REQUEST_FIELDS[kind]:
        out[name] = draw(good[name])
    how = draw(st.sampled_from(["as is", "replace", "drop"]))
    name = draw(st.sampled_from(sorted(out)))
    if how == "replace":
        out[name] = draw(values)
    elif how == "drop":
        del out[name]
    return out


def _pack(obj) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return b"\xc1"  # never-used msgpack byte


frames = st.one_of(
    near_valid().map(lambda d: [_pack(d)]),
    near_valid().map(lambda d: [_pack(d)]),
    request_like().map(lambda d: [_pack(d)]),
    st.tuples(request_like(), st.integers(0, 50)).map(lambda t: [_pack(t[0])[: t[1]]]),  # truncated
    st.binary(max_size=200).map(lambda b: [b]),
    st.integers(1, 5000).map(lambda d: [b"\x91" * d + b"\xc0"]),  # deep nesting: arrays
    st.integers(1, 5000).map(lambda d: [b"\x81\xa1k" * d + b"\xc0"]),  # deep nesting: maps
    st.sampled_from([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff"]).map(lambda b: [b]),
    st.lists(request_like().map(_pack), min_size=2, max_size=3),  # multi-frame messages
    st.binary(min_size=17_000, max_size=20_000).map(lambda b: [b]),  # over max_frame_bytes (16 KiB here)
)


def expected(parts: list[bytes]) -> str | None:
    """The reply the protocol defines for `parts`: an error code, 'ok' (a valid request), or None (no reply of its own)."""
    if len(parts) != 1:
        return p.ErrorCode.BAD_FRAME
    try:
        msg = p.decode_request(parts[0], 16 * 1024)
    except p.ProtocolError as exc:
        return exc.code
    return None if msg.type == "cancel" else "ok"


@pytest.fixture(scope="module")
def fuzz_sidecar(tmp_path_factory):
    state = tmp_path_factory.mktemp("fuzz")
    sc = SidecarProcess(state, max_frame_bytes=16 * 1024, hard_max_frame_bytes=256 * 1024)
    yield sc
    sc.stop()


def test_fuzz_frames_never_crash_or_hang_the_sidecar(fuzz_sidecar):
    sc = fuzz_sidecar
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(sc.endpoint)
    checker = SidecarClient(sc.endpoint, timeout_s=120)
    stats = {"frames": 0, "answered": 0, "no_reply_by_rule": 0, "slowest_ms": 0.0, "slowest_frame": "", "slowest_error_ms": 0.0,
             "codes": {}, "internal": [], "checks": 0, "turn_ms": []}

    def check_alive() -> None:
        assert sc.alive(), sc.output()
        checker.ping()
        t0 = time.perf_counter()
        _, done = checker.say_text(NPC, "Hello, Mira.", max_tokens=2, seed=1)
        assert done.finish_reason in ("stop", "length")
        stats["turn_ms"].append(round((time.perf_counter() - t0) * 1000))
        stats["checks"] += 1

    @settings(max_examples=FRAMES, deadline=None, database=None, phases=[Phase.generate], derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames)
    def one(parts: list[bytes]) -> None:
        want = expected(parts)
        sock.send_multipart(parts)
        stats["frames"] += 1
        t0 = time.perf_counter()
        deadline = t0 + (2.0 if want is None else ANSWER_TIMEOUT_S)
        got = None
        while time.perf_counter() < deadline:
            if not sock.poll(int(max(1, (deadline - time.perf_counter()) * 1000))):
                break
            msg = p.decode(sock.recv())
            if msg.id == "fz-cancel":  # the answer to our own cancel of a stream that had ended
                continue
            if msg.type == "chunk":  # a valid say: cut it short, this is not about the model
                sock.send(p.encode(p.Cancel(id="fz-cancel", target=msg.id)))
                continue
            got = msg
            break
        ms = (time.perf_counter() - t0) * 1000
        if want is None:
            stats["no_reply_by_rule"] += 1
        else:
            assert got is not None, f"no answer in {ANSWER_TIMEOUT_S} s to {parts[0][:80]!r}"
            if want != "ok":
                assert got.type == "error" and got.code == want, (parts[0][:80], want, got)
            code = got.code if got.type == "error" else got.type
            stats["codes"][code] = stats["codes"].get(code, 0) + 1
            stats["answered"] += 1
            if code == p.ErrorCode.INTERNAL:  # defined ("keeps serving"), but worth knowing which requests
                stats["internal"].append(got.message[:120])
            if ms > stats["slowest_ms"]:
                stats["slowest_ms"], stats["slowest_frame"] = round(ms, 1), parts[0][:60].hex()
            if got.type == "error" and ms > stats["slowest_error_ms"]:  # refusals: no model work behind them
                stats["slowest_error_ms"] = round(ms, 1)
        if stats["frames"] % CHECK_EVERY == 0:
            check_alive()

    t_start = time.perf_counter()
    try:
        one()
        check_alive()
    finally:
        sock.close(linger=0)
        checker.close()
        stats["seconds"] = round(time.perf_counter() - t_start, 1)
        stats["alive"] = sc.alive()
        print("\nFUZZ", json.dumps(stats))
        (sc.state_dir / "fuzz-figures.json").write_text(json.dumps(stats, indent=1))
    assert stats["frames"] >= FRAMES and stats["alive"]
