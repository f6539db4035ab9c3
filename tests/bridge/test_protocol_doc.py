"""Every example in bridge/PROTOCOL.md decodes, validates, and re-encodes to the same bytes."""

import json
import re
from pathlib import Path

import msgpack
import pytest

from bridge import protocol as p

DOC = Path(__file__).resolve().parents[2] / "bridge" / "PROTOCOL.md"
VECTORS = DOC.parent / "clients" / "protocol-vectors.json"
SECTION = re.compile(r"^### `([a-z.]+)`\n(.*?)(?=^### |\Z)", re.S | re.M)


def examples() -> list[tuple[str, str, bytes]]:
    out = []
    for name, body in SECTION.findall(DOC.read_text()):
        j = re.search(r"```json\n(.*?)\n```", body, re.S)
        h = re.search(r"```msgpack\n(.*?)\n```", body, re.S)
        assert j and h, f"section {name} lacks a json or msgpack block"
        out.append((name, j.group(1), bytes.fromhex(h.group(1).replace("\n", " "))))
    return out


def test_doc_has_an_example_of_every_message_type():
    documented = {name for name, _, _ in examples()}
    all_types = {m.model_fields["type"].default for m in p._Msg.__subclasses__()}
    assert all_types <= documented, f"undocumented: {sorted(all_types - documented)}"


@pytest.mark.parametrize("name,js,raw", examples(), ids=[e[0] for e in examples()])
def test_example_is_byte_exact(name, js, raw):
    assert msgpack.unpackb(raw, raw=False) == json.loads(js)
    msg = p.decode(raw)
    assert msg.type == name
    assert p.encode(msg) == raw


def test_client_vectors_file_matches_the_doc():
    """bridge/clients/protocol-vectors.json (read by the C# and GDScript tests) is PROTOCOL.md's examples."""
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    want = [(name, json.loads(js), raw.hex()) for name, js, raw in examples()]
    got = [(v["type"], v["json"], v["msgpack_hex"]) for v in vectors]
    assert got == want, "bridge/clients/protocol-vectors.json is stale: run python scripts/protocol_vectors.py"
