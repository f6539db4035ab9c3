"""The codec on its own: good and bad frames (no sockets, no model)."""

import msgpack
import pytest

from bridge import protocol as p


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_round_trip_say_keeps_optional_fields():
    msg = p.Say(id="a", npc="odile-brask", text="hi", seed=3, max_tokens=10)
    back = p.decode_request(p.encode(msg))
    assert back == msg


def test_unknown_extra_fields_are_ignored():
    msg = p.decode_request(pack({"v": 1, "type": "ping", "id": "x", "future_field": [1, 2]}))
    assert msg == p.Ping(id="x")


@pytest.mark.parametrize(
    "frame,code,needle",
    [
        (b"\xc1\xff\x00", p.ErrorCode.BAD_FRAME, "msgpack"),
        (pack([1, 2, 3]), p.ErrorCode.BAD_FRAME, "map"),
        (pack({1: "int key"}), p.ErrorCode.BAD_FRAME, "msgpack"),
        (pack({"v": 1, "id": "q", "type": "teleport"}), p.ErrorCode.UNKNOWN_TYPE, "teleport"),
        (pack({"v": 1, "id": "q", "type": "say", "text": "hi"}), p.ErrorCode.INVALID, "field 'npc'"),
        (pack({"v": 1, "id": "q", "type": "say", "npc": 5, "text": "hi"}), p.ErrorCode.INVALID, "field 'npc'"),
        (pack({"v": 1, "id": "q", "type": "say", "npc": "a", "text": "hi", "max_tokens": 0}), p.ErrorCode.INVALID, "max_tokens"),
        (pack({"v": 9, "id": "q", "type": "ping"}), p.ErrorCode.UNSUPPORTED_VERSION, "version 9"),
        (pack({"v": 1, "id": "q"}), p.ErrorCode.INVALID, "type"),
    ],
)
def test_bad_frames_name_the_problem(frame, code, needle):
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(frame)
    assert info.value.code == code
    assert needle in info.value.message


def test_error_keeps_request_id_when_readable():
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(pack({"v": 1, "id": "req-42", "type": "say"}))
    assert info.value.request_id == "req-42"


def test_frame_size_limit():
    big = pack({"v": 1, "id": "q", "type": "say", "npc": "a", "text": "x" * 3000})
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(big, max_bytes=1000)
    assert info.value.code == p.ErrorCode.FRAME_TOO_LARGE
    assert str(len(big)) in info.value.message


def test_replies_are_not_accepted_as_requests():
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(p.encode(p.Pong(id="x")))
    assert info.value.code == p.ErrorCode.UNKNOWN_TYPE


def _nested(levels: int, leaf: object = "x") -> object:
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def test_deeply_nested_frames_are_invalid_with_the_request_id():
    """Found: `generate.spec` or `declare` parameters nested 500-1,020 deep answered `internal:
    RecursionError` (validation recursed), 1,023+ a `bad_frame` with an empty message."""
    ok = {"v": 1, "id": "g1", "type": "generate", "quest": "q"}
    assert p.decode_request(msgpack.packb({**ok, "state": _nested(3)})).id == "g1"  # ordinary nesting passes the depth check
    for levels in (40, 900):
        with pytest.raises(p.ProtocolError) as exc:
            p.decode_request(msgpack.packb({"v": 1, "id": "g3", "type": "generate", "spec": _nested(levels)}))
        assert exc.value.code == "invalid" and exc.value.request_id == "g3"
        assert "nested 33 deep (at most 32)" in str(exc.value)
    deep = b"\x81\xa1a" * 1100 + b"\xa1x"  # deeper than msgpack's own limit
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_request(deep)
    assert exc.value.code == "bad_frame" and str(exc.value).strip() != "not valid msgpack:"
