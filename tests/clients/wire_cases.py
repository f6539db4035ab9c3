"""Extra wire vectors for the engine clients, encoded by bridge/protocol.py itself (the source of truth).

PROTOCOL.md's examples (bridge/clients/protocol-vectors.json) show one message of each type; these add
the optional fields of the game-events/state/actions messages that the examples leave out, with
nested maps and lists of mixed types (bool, int, float64, str): `say.state`, `event` with each
target and `state`, `state` with floats and bools, `declare` with a per-NPC scope and a richer
schema, `action` with mixed arguments, `done` with `fields`/`actions`/`rejected`/`forgotten_turns`,
`ok.count`, the `unsupported_schema` error and a `busy` error with `retry_after_ms`. Same shape as the vectors file's entries, plus a
`name` the client tests refer to.
"""

from __future__ import annotations

import json
from pathlib import Path

from bridge import protocol as p

GIVE_ITEM = {
    "name": "give_item",
    "description": "Hand the player an item.",
    "parameters": {
        "type": "object",
        "properties": {
            "item": {"type": "string", "enum": ["ale", "room key"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 3},
            "price": {"type": "number", "minimum": 0.5},
            "paid": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 40, "pattern": "^[a-z ]*$"},
        },
        "required": ["item", "count"],
    },
}
OPEN_SHOP = {"name": "open_shop", "description": "Show the wares.", "parameters": {"type": "object", "properties": {}}}


def messages() -> list[tuple[str, p._Msg]]:
    return [
        ("say+state", p.Say(id="r9", npc="odile-brask", text="A room, please.", session="save-1", max_tokens=64, temperature=0.7,
                            seed=3, state={"night": True, "gold": 12, "rep": 0.5, "quest.heron": "done"})),
        ("event+npcs+state", p.Event(id="e2", text="A bell rings.", session="save-1", npcs=["odile-brask", "hale-corrow"],
                                     state={"bell": True, "hour": 23, "temp": -1.25, "weather": "ash"})),
        ("event+location", p.Event(id="e3", text="A fire in Lowmarket.", location="lowmarket")),
        ("event+faction", p.Event(id="e4", text="The reedcutters call a meeting.", faction="reedcutters", session="save-1")),
        ("event+everyone", p.Event(id="e5", text="Night falls.")),
        ("state+mixed", p.State(id="s2", set={"hp": 0.75, "alive": False, "deaths": -3, "big": 70000, "name": "Tam"}, unset=["night", "gold"])),
        ("state+empty", p.State(id="s3", session="save-1")),
        ("declare+npc", p.Declare(id="d2", session="save-1", npc="odile-brask", actions=[GIVE_ITEM, OPEN_SHOP],
                                  fields={"emotion": {"enum": ["neutral", "warm", "wary"], "description": "Her face."},
                                          "gesture": {"enum": ["none", "nod"]}}, max_actions=2)),
        ("declare+remove", p.Declare(id="d3", session="save-1")),
        ("action+mixed", p.Action(id="r9", seq=1, name="give_item", args={"item": "ale", "count": 2, "price": 0.5, "paid": True})),
        ("done+declared", p.Done(id="r9", finish_reason="length", text="Here.", lore=["odile-brask"], tokens={"prompt": 900, "cached": 850, "completion": 30},
                                 timings={"ttft_ms": 40.5, "total_ms": 300.0, "tokens_per_s": 90.25}, fields={"emotion": "warm", "gesture": "nod"},
                                 actions=1, rejected=[{"name": "give_item", "reason": "'dragon' is not one of ['ale', 'room key']"}],
                                 forgotten_turns=2)),
        ("ok+count", p.Ok(id="e2", count=2)),
        ("error+unsupported_schema", p.Error(id="d4", code=p.ErrorCode.UNSUPPORTED_SCHEMA,
                                             message="action 'throw': property 'target': type 'object' is not supported")),
        ("error+busy", p.Error(id="r10", code=p.ErrorCode.BUSY, message="too many requests queued (this connection: 8, all: 8); retry later",
                               retry_after_ms=1500)),
    ]


def cases() -> list[dict]:
    """[{name, type, json, msgpack_hex}], each encoded by `bridge.protocol.encode`."""
    out = []
    for name, msg in messages():
        raw = p.encode(msg)
        assert p.decode(raw) == msg  # a valid message of its type
        out.append({"name": name, "type": msg.type, "json": msg.model_dump(mode="json", exclude_none=True), "msgpack_hex": raw.hex()})
    return out


def write(path: Path) -> Path:
    path.write_text(json.dumps({"source": "tests/clients/wire_cases.py", "vectors": cases()}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
