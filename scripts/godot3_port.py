"""Port the Godot 4 addon's wire layer to Godot 3 GDScript, mechanically, so one source is the truth.

The Godot 4 files in ``bridge/clients/godot/addons/narrative/`` are the source. This script rewrites
them into Godot 3.2+ GDScript so that ``godot3-server`` (the engine that installs on our CI machines;
no Godot 4 binary does) can run the client's real wire code (ZMTP, msgpack, the client node)
against a real sidecar. It is not a general GDScript 4 -> 3 converter: it accepts a documented
*portable subset* and refuses anything outside it with the line number, so a change to the addon
that the port cannot carry fails loudly instead of being run wrongly.

The portable subset (what the addon's wire files may use):

- Godot 4 names with a Godot 3 twin of the same behaviour, renamed here (``RENAMES``):
  ``PackedByteArray`` -> ``PoolByteArray``, ``RefCounted`` -> ``Reference``, ``TYPE_FLOAT`` ->
  ``TYPE_REAL``, ``Time.get_ticks_msec`` -> ``OS.get_ticks_msec``, ``.to_utf8_buffer()`` ->
  ``.to_utf8()``, ``.is_empty()`` -> ``.empty()``, ``minf`` -> ``min`` ...
- Annotations ``@tool``, ``@export var``, ``@onready var`` (-> ``tool``, ``export var``,
  ``onready var``); ``@icon``/``@warning_ignore`` lines are dropped (editor hints only).
- Typed arrays ``Array[T]`` (-> ``Array``), typed signal parameters (types dropped).
- Signals emitted with ``emit_signal("name", ...)`` and connected as ``obj.name.connect(method)``
  (-> ``obj.connect("name", self, "method")``).
- Everything else both versions parse the same: static typing with ``:`` and ``:=``, ``match``,
  ``enum``, ``const X = preload("relative.gd")``, StreamPeerBuffer/StreamPeerTCP calls common to both.
- Per-line escape hatch for the few API differences that are not a rename: a trailing comment
  ``# godot3: <code>`` replaces that line's code (indentation kept) in the Godot 3 build. Used for
  ``StreamPeerTCP.poll()`` (Godot 3 polls inside ``get_status``) and ``PackedByteArray.slice``
  (Godot 3's ``subarray`` has an inclusive end).

Refused (``PortError``): ``await``/``yield``, lambdas, ``super``, ``Callable``, ``signal.emit()``,
``.slice(`` without a pragma (its end is exclusive in 4, inclusive in 3's ``Array.slice``),
``FileAccess``/``DirAccess``/``JSON`` (different APIs), ``&"..."``/``^"..."`` literals,
``@export_*``/``@rpc`` annotations, ``static var``, triple-quoted strings, ``TYPE_STRING_NAME``
without a pragma.

Usage: ``python scripts/godot3_port.py SRC_DIR OUT_DIR`` ports every ``*.gd`` of SRC_DIR.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Godot 4 identifier -> Godot 3 identifier (whole words, in code only: not in strings or comments).
RENAMES: dict[str, str] = {
    "PackedByteArray": "PoolByteArray",
    "PackedStringArray": "PoolStringArray",
    "PackedInt32Array": "PoolIntArray",
    "PackedFloat32Array": "PoolRealArray",
    "PackedVector2Array": "PoolVector2Array",
    "PackedColorArray": "PoolColorArray",
    "RefCounted": "Reference",
    "TYPE_FLOAT": "TYPE_REAL",
    "TYPE_PACKED_BYTE_ARRAY": "TYPE_RAW_ARRAY",
    "TYPE_PACKED_STRING_ARRAY": "TYPE_STRING_ARRAY",
    "TYPE_PACKED_INT32_ARRAY": "TYPE_INT_ARRAY",
    "TYPE_PACKED_FLOAT32_ARRAY": "TYPE_REAL_ARRAY",
    "minf": "min",
    "maxf": "max",
    "mini": "min",
    "maxi": "max",
    "absf": "abs",
    "absi": "abs",
    "clampf": "clamp",
    "clampi": "clamp",
}
# Godot 4 spelling -> Godot 3 spelling (plain substrings, in code only).
SPELLINGS: list[tuple[str, str]] = [
    ("Time.get_ticks_msec(", "OS.get_ticks_msec("),
    ("Time.get_ticks_usec(", "OS.get_ticks_usec("),
    ("Time.get_unix_time_from_system(", "OS.get_unix_time("),
    ("Engine.max_fps", "Engine.target_fps"),
    (".to_utf8_buffer(", ".to_utf8("),
    (".to_ascii_buffer(", ".to_ascii("),
    (".is_empty()", ".empty()"),
]
REFUSED: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bawait\b"), "await (coroutines differ: Godot 3 has yield)"),
    (re.compile(r"\byield\b"), "yield"),
    (re.compile(r"\bfunc\s*\("), "a lambda"),
    (re.compile(r"\bsuper\b"), "super"),
    (re.compile(r"\bCallable\b"), "Callable"),
    (re.compile(r"\.emit\("), "signal.emit() (use emit_signal)"),
    (re.compile(r"\.slice\("), ".slice() without a '# godot3:' pragma (end is exclusive in 4, inclusive in 3)"),
    (re.compile(r"\b(FileAccess|DirAccess|JSON|DisplayServer)\b"), "an API that differs between 3 and 4"),
    (re.compile(r"@(export_\w+|rpc)\b"), "an annotation with no Godot 3 twin"),
    (re.compile(r"\bstatic\s+var\b"), "static var"),
    (re.compile(r"\bTYPE_STRING_NAME\b"), "TYPE_STRING_NAME without a '# godot3:' pragma"),
    (re.compile(r"\.connect\((?!\w+\))"), "connect() other than obj.signal.connect(method)"),
]
PRAGMA = re.compile(r"#\s*godot3:\s?(.*)$")
ANNOTATION = re.compile(r"^(\s*)@(tool|export|onready)\b\s*")
DROPPED_LINE = re.compile(r"^\s*@(icon|warning_ignore)\b")
SIGNAL_DECL = re.compile(r"^(\s*signal\s+\w+)\((.*)\)\s*$")
CONNECT = re.compile(r"\b((?:\w+\.)*?)(\w+)\.connect\((\w+)\)")
TYPED_ARRAY = re.compile(r"\bArray\[\w+\]")
TYPED_FOR = re.compile(r"^(\s*for\s+\w+)\s*:\s*\w+(\s+in\b)")


class PortError(ValueError):
    """The source uses GDScript outside the portable subset. ``problems``: [(line number, message)]."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}:{n}: {msg}" for n, msg in problems)
        super().__init__(f"not in the portable GDScript subset:\n{lines}")


def split_code(line: str) -> list[tuple[bool, str]]:
    """Split one line into (is_code, text) runs: string literals and the trailing comment are not code."""
    runs: list[tuple[bool, str]] = []
    buf = ""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "#":
            break
        if c in "\"'":
            if buf:
                runs.append((True, buf))
            j = i + 1
            while j < len(line) and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            runs.append((False, line[i : j + 1]))
            buf = ""
            i = j + 1
            continue
        buf += c
        i += 1
    if buf:
        runs.append((True, buf))
    if i < len(line):
        runs.append((False, line[i:]))
    return runs


def _rewrite_code(code: str) -> str:
    for old, new in SPELLINGS:
        code = code.replace(old, new)
    for old, new in RENAMES.items():
        code = re.sub(rf"\b{old}\b", new, code)
    return TYPED_ARRAY.sub("Array", code)


def port_line(line: str, n: int, problems: list[tuple[int, str]]) -> str | None:
    """The Godot 3 form of one source line (None: drop it); records refusals in `problems`."""
    if '"""' in line or "'''" in line:
        problems.append((n, "a triple-quoted string"))
        return line
    runs = split_code(line)
    comment = runs[-1][1] if runs and not runs[-1][0] and runs[-1][1].startswith("#") else ""
    pragma = PRAGMA.search(comment) if comment else None
    if pragma:
        indent = line[: len(line) - len(line.lstrip())]
        return indent + pragma.group(1).rstrip()
    if DROPPED_LINE.match(line):
        return None
    code_only = "".join(t for is_code, t in runs if is_code)
    for pattern, what in REFUSED:
        if pattern.search(code_only):
            problems.append((n, what))
    if re.search(r"[&^]\"", line[: len(line) - len(comment)]):
        problems.append((n, "a StringName/NodePath literal"))
    m = ANNOTATION.match(line)
    if m:
        line = f"{m.group(1)}{m.group(2)}{'' if m.group(2) == 'tool' else ' '}{line[m.end():]}"
        if m.group(2) == "tool":
            line = line.rstrip()
        runs = split_code(line)
    out = "".join(_rewrite_code(t) if is_code else t for is_code, t in runs)
    sig = SIGNAL_DECL.match(out)
    if sig and sig.group(2).strip():
        params = [p.split(":")[0].strip() for p in sig.group(2).split(",")]
        out = f"{sig.group(1)}({', '.join(params)})"
    out = TYPED_FOR.sub(r"\1\2", out)
    out = CONNECT.sub(r'\1connect("\2", self, "\3")', out)
    return out


def port_source(text: str, path: str = "<source>") -> str:
    """Godot 4 GDScript (portable subset) -> Godot 3 GDScript. Raises `PortError` listing every refusal."""
    problems: list[tuple[int, str]] = []
    out: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        ported = port_line(line, n, problems)
        if ported is not None:
            out.append(ported)
    if problems:
        raise PortError(path, problems)
    return "\n".join(out) + "\n"


def port_dir(src: Path, dst: Path) -> list[Path]:
    """Port every ``*.gd`` directly in `src` into `dst` (created); returns the files written."""
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(src.glob("*.gd")):
        out = dst / f.name
        out.write_text(port_source(f.read_text(encoding="utf-8"), str(f)), encoding="utf-8")
        written.append(out)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("Usage: ")[1].strip(), file=sys.stderr)
        return 2
    try:
        for f in port_dir(Path(argv[0]), Path(argv[1])):
            print(f)
    except PortError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
