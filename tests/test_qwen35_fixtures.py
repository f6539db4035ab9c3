"""The tiny random-weight qwen35 / qwen35moe fixtures load and run in llama.cpp."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.make_qwen35 import (  # noqa: E402
    ARCHS,
    build_fixtures,
    ensure_sdist,
    read_sources,
    read_stamp,
    write_qwen35,
)

llama_cpp = pytest.importorskip("llama_cpp")
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

N_VOCAB = 151_936
MAX_BYTES = 40_000_000


@pytest.fixture(scope="session")
def sdist() -> Path:
    try:
        return ensure_sdist(ROOT / ".cache")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:  # offline, no cached sdist
        pytest.skip(f"llama-cpp-python sdist unavailable: {e}")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory, sdist) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("qwen35"), sdist)


def test_build_is_cached_and_deterministic(fixtures, sdist, tmp_path):
    assert set(fixtures) == set(ARCHS)
    for arch, path in fixtures.items():
        assert path.stat().st_size < MAX_BYTES
        assert read_stamp(path) is not None
    mtimes = {a: p.stat().st_mtime_ns for a, p in fixtures.items()}
    again = build_fixtures(fixtures["qwen35"].parent, sdist)
    assert again == fixtures
    assert {a: p.stat().st_mtime_ns for a, p in again.items()} == mtimes  # not rebuilt
    copy = write_qwen35(tmp_path / "again.gguf", moe=False, sdist=sdist, seed=0)
    assert copy.read_bytes() == fixtures["qwen35"].read_bytes()


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_runs_in_llama_cpp(fixtures, sdist, arch):
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(str(fixtures[arch]), n_ctx=512, n_threads=1, n_threads_batch=1,
                          seed=0, verbose=False)
    load_s = time.perf_counter() - t0

    assert llama_cpp.llama_model_is_hybrid(llm.model)
    assert llm.metadata["general.architecture"] == arch
    assert llm.n_vocab() == N_VOCAB

    template = llm.metadata["tokenizer.chat_template"]
    assert template == read_sources(sdist)[1]  # Qwen3.5's own template
    fmt = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    prompt = fmt(messages=[
        {"role": "system", "content": "You are Mira, the village blacksmith."},
        {"role": "user", "content": "Can you mend my sword?"},
    ]).prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    think = llm.tokenize(b"<think>", add_bos=False, special=True)
    assert len(think) == 1 and tokens[-2] == think[0]

    t1 = time.perf_counter()
    out = []
    for tok in llm.generate(tokens, temp=0.0):
        out.append(tok)
        if len(out) == 16:
            break
    gen_s = time.perf_counter() - t1
    assert len(out) == 16 and all(0 <= t < N_VOCAB for t in out)
    assert load_s < 10 and gen_s < 10, (load_s, gen_s)
