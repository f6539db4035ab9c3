"""The Godot 4 addon as Godot 4 source: every .gd parsed by gdparse and linted by gdlint (gdtoolkit,
the GDScript 2 parser/linter from PyPI), and the demo scene's references checked.

Only parsed, never run: no Godot 4 binary installs on these machines. Its wire layer is run in an
engine by test_godot_client.py (ported to Godot 3 by scripts/godot3_port.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GODOT = ROOT / "bridge" / "clients" / "godot"
ADDON = GODOT / "addons" / "narrative"
ADDON_GD = sorted(ADDON.rglob("*.gd"))
RUNNER = Path(__file__).resolve().parent / "godot" / "runner.gd"


def tool(name: str) -> str:
    """gdparse/gdlint next to this Python (the venv), else on PATH; skips when gdtoolkit is missing."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found: pip install gdtoolkit (in the project's test extra)")
    return found


def test_the_addon_has_the_files_godot_expects():
    cfg = (ADDON / "plugin.cfg").read_text()
    assert re.search(r'^script="plugin.gd"$', cfg, re.M)
    assert {p.name for p in ADDON_GD} >= {"plugin.gd", "narrative_client.gd", "zmtp.gd", "msgpack.gd", "npc_dialogue_demo.gd"}
    client = (ADDON / "narrative_client.gd").read_text()
    assert re.search(r"^class_name NarrativeClient$", client, re.M)
    for sig in ("chunk(id: String, seq: int, text: String)", "npc_action(id: String, name: String, args: Dictionary)",
                "done(id: String, message: Dictionary)",
                "error(id: String, code: String, message: String)", "connected", "disconnected("):
        assert f"signal {sig}" in client


@pytest.mark.parametrize("path", [*ADDON_GD, RUNNER], ids=lambda p: str(p.relative_to(ROOT)))
def test_gdparse_accepts(path):
    r = subprocess.run([tool("gdparse"), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", ADDON_GD, ids=lambda p: str(p.relative_to(ROOT)))
def test_gdlint_is_clean(path):
    r = subprocess.run([tool("gdlint"), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_demo_scene_references_exist():
    scene = (ADDON / "demo" / "npc_dialogue_demo.tscn").read_text()
    assert scene.startswith("[gd_scene") and "format=3" in scene.splitlines()[0]  # Godot 4 scene format
    for res in re.findall(r'path="res://([^"]+)"', scene):
        assert (GODOT / res).is_file(), f"the demo scene points at a missing file: res://{res}"
    nodes = {"."}
    for name, parent in re.findall(r'\[node name="([^"]+)" type="\w+"(?: parent="([^"]*)")?', scene):
        nodes.add(name if parent in ("", ".") else f"{parent}/{name}")
    script = (ADDON / "demo" / "npc_dialogue_demo.gd").read_text()
    for path in re.findall(r"\$([\w/]+)", script):
        assert path in nodes, f"the demo script uses ${path}, not a node of the scene {sorted(nodes)}"
