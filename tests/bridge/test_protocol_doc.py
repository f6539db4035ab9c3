"""Every example in bridge/PROTOCOL.md decodes, validates, and re-encodes to the same bytes."""

import json
import re
from pathlib import Path

import msgpack
import pytest

from bridge import protocol as p

DOC = Path(__file__).resolve().parents[2] / "bridge" / "PROTOCOL.md"
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
