"""scripts/godot3_port.py: the Godot 4 -> Godot 3 port of the addon's wire layer (pure text, no engine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from godot3_port import PortError, port_dir, port_source  # noqa: E402

ADDON = ROOT / "bridge" / "clients" / "godot" / "addons" / "narrative"


def test_renames_annotations_signals_and_connect():
    src = "\n".join([
        "@tool",
        "extends RefCounted",
        "signal chunk(id: String, seq: int)",
        "@export var endpoint := \"PackedByteArray stays in strings\"",
        "@onready var label: Label = $Label",
        "var buf := PackedByteArray()  # PackedByteArray stays in comments",
        "var names: Array[String] = []",
        "func f(x) -> void:",
        "\tif x.is_empty() or typeof(x) == TYPE_FLOAT:",
        "\t\tvar t := Time.get_ticks_msec() + maxf(1.0, 2.0)",
        "\t\tvar b := \"é\".to_utf8_buffer()",
        "\t\tnode.done.connect(_on_done)",
        "\t\tfor i: int in 3:",
        "\t\t\tpass",
    ])
    assert port_source(src).splitlines() == [
        "tool",
        "extends Reference",
        "signal chunk(id, seq)",
        "export var endpoint := \"PackedByteArray stays in strings\"",
        "onready var label: Label = $Label",
        "var buf := PoolByteArray()  # PackedByteArray stays in comments",
        "var names: Array = []",
        "func f(x) -> void:",
        "\tif x.empty() or typeof(x) == TYPE_REAL:",
        "\t\tvar t := OS.get_ticks_msec() + max(1.0, 2.0)",
        "\t\tvar b := \"é\".to_utf8()",
        "\t\tnode.connect(\"done\", self, \"_on_done\")",
        "\t\tfor i in 3:",
        "\t\t\tpass",
    ]


def test_pragma_replaces_the_line_and_keeps_indentation():
    src = "func f(b):\n\treturn b.slice(1, 3)  # godot3: return b.subarray(1, 2)\n\t_tcp.poll()  # godot3: pass\n"
    assert port_source(src) == "func f(b):\n\treturn b.subarray(1, 2)\n\tpass\n"


@pytest.mark.parametrize("line,what", [
    ("\tawait get_tree().process_frame", "await"),
    ("\tvar f := func(x): return x", "lambda"),
    ("\tsuper._ready()", "super"),
    ("\tchunk.emit(1)", "emit"),
    ("\tvar s := b.slice(1, 2)", "slice"),
    ("\tvar j = JSON.parse_string(t)", "differs"),
    ("\tvar n := &\"name\"", "StringName"),
    ("\tx.connect(\"sig\", Callable(self, \"m\"))", "Callable"),
    ("\tif t == TYPE_STRING_NAME:", "TYPE_STRING_NAME"),
])
def test_refuses_what_it_cannot_port_with_the_line_number(line, what):
    with pytest.raises(PortError) as info:
        port_source(f"extends Node\nfunc f():\n{line}\n", "x.gd")
    assert any(n == 3 and what in msg for n, msg in info.value.problems), info.value.problems
    assert "x.gd:3:" in str(info.value)


def test_the_addon_wire_layer_ports(tmp_path):
    from godot3_port import split_code

    out = port_dir(ADDON, tmp_path)
    assert {p.name for p in out} == {"msgpack.gd", "zmtp.gd", "narrative_client.gd", "plugin.gd"}
    for p in out:
        code = "\n".join("".join(t for is_code, t in split_code(line) if is_code) for line in p.read_text().splitlines())
        for godot4_only in ("PackedByteArray", "RefCounted", "Time.", "@export", "is_empty()", ".slice(", "to_utf8_buffer"):
            assert godot4_only not in code, (p.name, godot4_only)
