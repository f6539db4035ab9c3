"""A grammar llama.cpp refuses is a clear error, never a SIGSEGV (issue 13).

Found: ``limits: {offer: 2000}`` in a batch spec gave a JSON schema whose string
repetition llama.cpp's grammar parser refuses (over its repetition limit); the
sampler was then NULL and the process died with SIGSEGV (rc 139) with no report.
Run in a child process: before the fix it crashes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
from narrative.llm import LlamaModel, ModelError, SamplingParams, generate_json
from narrative.settings import ModelSettings
m = LlamaModel(ModelSettings(n_ctx=512, n_seq_max=1, n_threads=1))
prompt = m.bos() + m.tokenize("Write JSON.")
big = {"type": "object", "properties": {"offer": {"type": "string", "maxLength": 5000}}, "required": ["offer"]}
small = {"type": "object", "properties": {"offer": {"type": "string", "maxLength": 20}}, "required": ["offer"]}
try:
    generate_json(m, prompt, big, SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=1), max_tokens=8)
    print("NO-ERROR")
except ModelError as exc:
    print("REFUSED:", type(exc).__name__, exc)
g = generate_json(m, prompt, small, SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=1), max_tokens=8)
print("NEXT-OK", g.completion_tokens)
"""


def test_refused_grammar_is_an_error_and_the_process_goes_on():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "REFUSED: GrammarRefused" in out.stdout and "NEXT-OK" in out.stdout, out.stdout
