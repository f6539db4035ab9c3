"""Shared test fixtures: the sample lore indexed once per session, a real sidecar on loopback TCP.

Everything here is real: the bundled SmolLM2 GGUF on llama.cpp, a chromadb store
on disk, ZeroMQ sockets. Tests that need ../shared skip with a reason when it is absent.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "lore"
SHARED = ROOT.parent / "shared"
CORPORA = SHARED / "corpora"


def need_corpora() -> Path:
    """Skip the calling test when ../shared/corpora is absent (as on a user's machine)."""
    if not CORPORA.is_dir():
        pytest.skip(f"needs the shared corpora at {CORPORA} (present on the team's machines only)")
    return CORPORA


@pytest.fixture(scope="session")
def fixture_paths() -> dict[str, Path]:
    """The tiny random-weight qwen35 / qwen35moe GGUFs ({'qwen35': path, 'qwen35moe': path}), built once.

    Skips when the llama-cpp-python sdist (their tokenizer and chat template) cannot be found or downloaded.
    """
    import subprocess

    from tests.fixtures.make_qwen35 import build_fixtures, ensure_sdist

    try:
        sdist = ensure_sdist(ROOT / ".cache")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"llama-cpp-python sdist unavailable to build the qwen35 fixtures: {exc}")
    return build_fixtures(ROOT / "tests" / ".fixtures", sdist)


@pytest.fixture(scope="session")
def fixture_paths_q4_1(fixture_paths) -> dict[str, Path]:
    """The same tiny qwen35 / qwen35moe models with Q4_1 matrices (tests/fixtures/make_qwen35.py
    `write_qwen35`, matrix_type): llama.cpp's CPU backend has no tinyBLAS kernel for Q4_1, so a row's
    logits do not depend on how many rows share its micro-batch (the batching tests need that)."""
    from tests.fixtures.make_qwen35 import build_fixtures, ensure_sdist

    return build_fixtures(ROOT / "tests" / ".fixtures", ensure_sdist(ROOT / ".cache"), matrix_type="q4_1")


def make_settings(state_dir: Path, **server):
    from app.settings import load_settings
    from bridge.settings import ServerSettings

    s = load_settings(state_dir=state_dir)
    s.lore.dir = SAMPLES
    s.server = ServerSettings(endpoint="tcp://127.0.0.1:*", **server)
    return s


@pytest.fixture(scope="session")
def embedder():
    from narrative.llm import LlamaEmbedder
    from narrative.settings import EmbeddingSettings

    return LlamaEmbedder(EmbeddingSettings())


@pytest.fixture(scope="session")
def sample_state(tmp_path_factory, embedder) -> Path:
    """A state dir with samples/lore indexed (done once; copy it before mutating)."""
    from lore.index import LoreIndex

    state = tmp_path_factory.mktemp("state")
    report = LoreIndex(state, embedder).sync(SAMPLES)
    assert not report.problems, report.problems
    return state


@pytest.fixture(scope="session")
def runtime(sample_state, embedder):
    from app.runtime import Runtime, open_index
    from lore.retrieve import Retriever
    from narrative.dialogue import DialogueEngine
    from narrative.llm import LlamaModel

    s = make_settings(sample_state, max_frame_bytes=16 * 1024, hard_max_frame_bytes=256 * 1024)
    index, _ = open_index(s, embedder)
    model = LlamaModel(s.dialogue_model)
    lo = s.lore
    retriever = Retriever(index, model.count_tokens, lo)
    return Runtime(s, model, embedder, index, retriever, DialogueEngine(model, retriever, s.sampling), None)


class ServerThread:
    """A real `SidecarServer` on its own event loop in a background thread."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.server.run())
        except BaseException as exc:  # surfaced by the fixture
            self.error = exc

    def start(self) -> str:
        self.thread.start()
        for _ in range(200):
            if self.server.bound.is_set():
                return self.server.endpoint
            self.thread.join(0.05)
        raise RuntimeError(f"sidecar did not bind: {self.error}")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(30)


@pytest.fixture(scope="session")
def sidecar(runtime):
    """(endpoint, server) of a running sidecar over the sample world."""
    from bridge.server import SidecarServer

    st = ServerThread(SidecarServer(runtime.service(), runtime.settings.server))
    endpoint = st.start()
    yield endpoint, st.server
    st.stop()
    assert st.error is None, st.error


@pytest.fixture
def client(sidecar):
    from bridge.client import SidecarClient

    c = SidecarClient(sidecar[0], timeout_s=120)
    yield c
    c.close()


def copy_samples(dst: Path) -> Path:
    shutil.copytree(SAMPLES, dst)
    return dst
