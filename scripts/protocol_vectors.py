"""Writes bridge/clients/protocol-vectors.json from the byte-exact examples in bridge/PROTOCOL.md.

The JSON file is the one set of wire test vectors every client's test reads (Python, C#, GDScript):
each entry is {"type": message type, "json": the example map, "msgpack_hex": its exact bytes}.
`tests/bridge/test_protocol_doc.py` fails when the file and PROTOCOL.md disagree; rerun this then.

Usage: python scripts/protocol_vectors.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "bridge" / "PROTOCOL.md"
VECTORS = ROOT / "bridge" / "clients" / "protocol-vectors.json"
SECTION = re.compile(r"^### `([a-z.]+)`\n(.*?)(?=^### |\Z)", re.S | re.M)


def doc_examples(doc: Path = DOC) -> list[dict]:
    """Every (type, json, msgpack hex) example of PROTOCOL.md, in page order.

    Raises:
        ValueError: a message section lacks its json or msgpack block.
    """
    out = []
    for name, body in SECTION.findall(doc.read_text(encoding="utf-8")):
        j = re.search(r"```json\n(.*?)\n```", body, re.S)
        h = re.search(r"```msgpack\n(.*?)\n```", body, re.S)
        if not (j and h):
            raise ValueError(f"{doc}: section {name} lacks a json or msgpack block")
        raw = bytes.fromhex(h.group(1).replace("\n", " "))
        out.append({"type": name, "json": json.loads(j.group(1)), "msgpack_hex": raw.hex()})
    return out


def render(examples: list[dict]) -> str:
    return json.dumps({"source": "bridge/PROTOCOL.md", "vectors": examples}, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTORS.write_text(render(doc_examples()), encoding="utf-8")
    print(f"wrote {VECTORS.relative_to(ROOT)}")
