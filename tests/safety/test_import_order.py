"""``llama_cpp`` is imported before numpy at every entry point (issue 13).

Found: on a CUDA build of llama-cpp-python, importing numpy (or gguf, chromadb...) before
``llama_cpp`` makes model loading crash in the CUDA backend. This CPU build does not crash
either way, so the test checks the order itself, in a fresh process that imports the
project's modules in the order ``narrative serve`` does, then loads a model and decodes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
order = []

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "llama_cpp", "gguf", "chromadb") and name not in order:
            order.append(name)
        return None

sys.meta_path.insert(0, Recorder())
import {entry}                      # the entry point
import app.cli
from app.runtime import build_runtime  # what cmd_serve imports (lore index -> chromadb -> numpy)
from bridge.server import SidecarServer
from narrative.llm import LlamaModel
from narrative.presets import ensure_fits
from narrative.settings import ModelSettings
settings = ModelSettings(n_ctx=256, n_seq_max=1, n_threads=1)
ensure_fits(settings, None)         # build_runtime plans memory before loading (reads the GGUF with gguf -> numpy)
m = LlamaModel(settings)
toks = m.bos() + m.tokenize("Hello")
print("ORDER", ",".join(order))
print("LOADED", len(toks) > 0)
"""


def _order(entry: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(entry=entry)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED True" in out.stdout
    line = next(l for l in out.stdout.splitlines() if l.startswith("ORDER "))
    return line[6:].split(",")


def test_llama_cpp_is_imported_before_numpy_from_the_cli():
    order = _order("app")  # `narrative` (app.cli:main) and `python -m app` both run app/__init__ first
    assert "numpy" in order and order.index("llama_cpp") < order.index("numpy"), order
