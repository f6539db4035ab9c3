"""Backends over HTTP against real servers: ``python -m llama_cpp.server`` processes on loopback with
the bundled SmolLM2 (`tests.narrative.openai_server`). No mock servers.

Covers: a batch over two endpoints generates every spec once and a rerun skips all; killing one
endpoint mid-run moves its work to the other (no duplicate, no loss); kill -9 of the batch
resumes with nothing redone; an endpoint whose output is not valid JSON is retried, then
reported, never written; a dialogue turn through the real sidecar (bridge) streamed from an
endpoint, with the router falling back past a dead one; `narrative models` health; the
off-machine opt-in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from lore.loader import load_catalog
from narrative.batch.fanout import run_fanout
from narrative.batch.generator import BatchOptions
from narrative.settings import EndpointSettings, ModelSettings
from tests.narrative.openai_server import LlamaCppServer, free_port, start_servers

ROOT = Path(__file__).resolve().parents[2]
QUESTS = ROOT / "samples" / "quests"
LORE = ROOT / "samples" / "lore"
SPECS = ["a-tin-for-mother", "forged-tallies", "harrows-lamp", "arrears-in-kilnrow"]
# quality_gate off: these tests are about the fan-out (placement, resume, failover), not whether SmolLM2's
# 24-character texts pass the quality checks (tests/narrative/batch/test_quality_checks.py)
OPTIONS = dict(max_chars=24, max_tokens=300, retries=1, retry_on_findings=False, lore_budget=100, quality_gate=False)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two llama_cpp.server processes (A, B) for the whole module."""
    srv = start_servers(2, tmp_path_factory.mktemp("servers"))
    yield srv
    for s in srv:
        s.stop()


@pytest.fixture(scope="module")
def entries():
    return load_catalog(LORE)


def batch_settings(*urls: str, **endpoint) -> ModelSettings:
    return ModelSettings(backend="openai", endpoints=[EndpointSettings(url=u, retries=1, backoff_s=0.2, **endpoint) for u in urls])


def manifest_items(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["items"]


def test_two_endpoints_generate_each_spec_once_then_skip(servers, entries, tmp_path):
    a, b = servers
    out = tmp_path / "out"
    seen: list[str] = []
    s = run_fanout(QUESTS, out, batch_settings(a.url, b.url), BatchOptions(**OPTIONS), entries, only=SPECS[:3], progress=False,
                   on_item=lambda r: seen.append(r.quest_id))
    assert sorted(seen) == sorted(SPECS[:3])  # each once
    assert s.generated == 3 and s.failed == 0, [(r.quest_id, r.error) for r in s.items]
    made_by = {r.quest_id: r.endpoint for r in s.items}
    assert set(made_by.values()) == {a.url, b.url}, made_by  # both endpoints worked
    items = manifest_items(out)
    assert {k: v["endpoint"] for k, v in items.items()} == made_by
    assert all(v["components"]["model"] == "openai:smollm2" and v["components"]["generator"] == "openai-chat-json-1" for v in items.values())
    report = (out / "report.md").read_text()
    for q, url in made_by.items():
        assert f"| {q} |" in report and url in report
    assert json.loads((out / "report.json").read_text())["summary"]["by_endpoint"] == {
        u: sum(1 for v in made_by.values() if v == u) for u in set(made_by.values())
    }

    again = run_fanout(QUESTS, out, batch_settings(a.url, b.url), BatchOptions(**OPTIONS), entries, only=SPECS[:3], progress=False)
    assert again.count("skipped") == 3 and again.generated == 0


def test_killed_endpoint_moves_its_work_to_the_other(servers, entries, tmp_path, caplog):
    b = servers[1]
    c = LlamaCppServer(tmp_path).wait_ready()  # the node that dies
    out = tmp_path / "out"
    seen: list[tuple[str, str | None]] = []

    def on_item(r) -> None:
        seen.append((r.quest_id, r.endpoint))
        if len(seen) == 1:
            c.kill()  # SIGKILL mid-run: C holds or is about to take another item

    try:
        s = run_fanout(QUESTS, out, batch_settings(b.url, c.url), BatchOptions(**OPTIONS), entries, only=SPECS, progress=False, on_item=on_item)
    finally:
        c.stop()
    ids = [q for q, _ in seen]
    assert sorted(ids) == sorted(SPECS), seen  # no loss, no duplicate
    assert s.generated == len(SPECS) and s.failed == 0, [(r.quest_id, r.error) for r in s.items]
    by_c = [q for q, e in seen if e == c.url]
    assert len(by_c) <= 2, seen  # the first item, or one it had finished as it died
    assert len(seen) - len(by_c) >= len(SPECS) - 2 and all(e in (b.url, c.url) for _, e in seen), seen
    moved = [r.getMessage() for r in caplog.records if "goes to the other endpoints" in r.getMessage()]
    assert len(moved) == 1 and c.url in moved[0], moved  # C's item went back to the queue, once
    assert set(manifest_items(out)) == set(SPECS)
    assert sorted(p.stem for p in (out / "quests").glob("*.json")) == sorted(SPECS)


def test_kill9_of_the_batch_resumes_with_nothing_redone(servers, tmp_path):
    a, b = servers
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "app", "batch", str(QUESTS), "--out", str(out), "--lore", str(LORE), "--lore-files", "--no-progress",
           "--endpoint", a.url, "--endpoint", b.url, "--max-chars", "24", "--max-tokens", "300", "--retries", "1",
           "--no-retry-on-findings", "--lore-budget", "100", "--no-quality-gate", "--only", *SPECS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.json").exists() and manifest_items(out):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = set(manifest_items(out)) | {p.stem for p in (out / "quests").glob("*.json")}
    assert first and first < set(SPECS), first

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "per endpoint:" in done.stdout
    items = json.loads((out / "report.json").read_text())["items"]
    status = {i["quest"]: i["status"] for i in items}
    assert all(status[q] in ("skipped", "adopted") for q in first), status  # nothing redone
    assert all(status[q] in ("ok", "flagged") for q in set(SPECS) - first), status
    assert set(manifest_items(out)) == set(SPECS)


def test_invalid_json_is_retried_then_reported_never_written(servers, entries, tmp_path):
    a = servers[0]
    out = tmp_path / "out"
    # no response_format: the server samples free text, which is not the quest's JSON (cut at 24 tokens)
    ms = batch_settings(a.url, structured_output="none")
    s = run_fanout(QUESTS, out, ms, BatchOptions(**(OPTIONS | {"max_tokens": 24})), entries, only=SPECS[:1], progress=False)
    (r,) = s.items
    assert r.status == "failed" and len(r.attempts) == 2, r  # one try + one retry (next seed)
    assert all(att.error for att in r.attempts) and r.endpoint == a.url
    assert not (out / "quests" / f"{SPECS[0]}.json").exists()
    assert SPECS[0] not in (manifest_items(out) if (out / "manifest.json").exists() else {})
    report = (out / "report.md").read_text()
    assert f"### {SPECS[0]} (failed)" in report and "attempt 2:" in report


def remote_engine(sample_state, embedder, endpoints: list[EndpointSettings]):
    """(settings, RemoteDialogueEngine) over the indexed sample world, on `endpoints` in order."""
    from app.runtime import open_index
    from lore.retrieve import Retriever
    from narrative.backends import Router
    from narrative.backends.dialogue import RemoteDialogueEngine, RemoteModel
    from tests.conftest import make_settings

    s = make_settings(sample_state)
    s.dialogue_model = ModelSettings(backend="openai", remote_n_ctx=4096, endpoints=endpoints)
    index, _ = open_index(s, embedder)
    router = Router.from_settings("dialogue", s.dialogue_model.endpoints)
    model = RemoteModel.of(router, s.dialogue_model.remote_n_ctx)
    return s, RemoteDialogueEngine(router, Retriever(index, model.count_tokens, s.lore), s.sampling, model)


def test_dialogue_turn_through_the_sidecar_from_an_endpoint(servers, sample_state, embedder):
    from bridge.client import SidecarClient
    from bridge.server import SidecarServer
    from narrative.service import NarrativeService
    from tests.conftest import ServerThread

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: the router falls back to A
    s, engine = remote_engine(sample_state, embedder, [EndpointSettings(url=dead, retries=0), EndpointSettings(url=servers[0].url)])
    router = engine.router
    st = ServerThread(SidecarServer(NarrativeService(engine, models={"dialogue": engine.model.name}), s.server))
    endpoint = st.start()
    npc = "odile-brask"
    try:
        with SidecarClient(endpoint, timeout_s=300) as c:
            assert npc in c.hello("pytest").npcs
            chunks1, done1 = c.say_text(npc, "Good evening. What is the Cracked Bellows famous for?", session="remote", max_tokens=12, seed=1)
            assert len(chunks1) > 1 and "".join(chunks1).strip() == done1.text
            assert done1.finish_reason in ("stop", "length") and npc in done1.lore
            assert done1.tokens["completion"] > 0 and done1.timings["ttft_ms"] > 0
            conv = engine.conversations[("remote", npc)]
            first = conv.messages()
            chunks2, done2 = c.say_text(npc, "And who is Pell Sedgewick?", session="remote", max_tokens=12, seed=1)
            assert "".join(chunks2).strip() == done2.text
    finally:
        st.stop()
    assert router.is_down(router.endpoints[0]) and not router.is_down(router.endpoints[1])
    # history stays in the sidecar, and the prompt only grows: turn 2's messages start with turn 1's, byte for byte
    msgs = conv.messages()
    assert msgs[: len(first)] == first and len(msgs) == len(first) + 2
    assert msgs[0]["role"] == "system" and "Odile" in msgs[0]["content"]
    assert [t.player for t in conv.turns] == ["Good evening. What is the Cracked Bellows famous for?", "And who is Pell Sedgewick?"]
    assert "pell-sedgewick" in done2.lore


def test_every_endpoint_down_fails_the_turn_not_the_sidecar(sample_state, embedder):
    from narrative.backends import AllEndpointsDown
    from narrative.service import FATAL_AFTER, NarrativeService

    dead = [EndpointSettings(url=f"http://127.0.0.1:{free_port()}/v1", retries=0) for _ in range(2)]
    _, engine = remote_engine(sample_state, embedder, dead)
    service = NarrativeService(engine)
    for _ in range(FATAL_AFTER + 1):  # not EngineDead: the endpoints may come back
        with pytest.raises(AllEndpointsDown, match="every dialogue endpoint is down"):
            service.turn("s", "odile-brask", "Hello?", max_tokens=4)
    assert not engine.conversations[("s", "odile-brask")].turns


def test_models_shows_backends_and_health(servers, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = tmp_path / "narrative.toml"
    cfg.write_text(f'[batch_model]\nbackend = "openai"\n[[batch_model.endpoints]]\nurl = "{servers[0].url}"\n'
                   f'concurrency = 4\n[[batch_model.endpoints]]\nurl = "{dead}"\n')
    r = subprocess.run([sys.executable, "-m", "app", "models", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # one endpoint is down
    lines = r.stdout.splitlines()
    assert any(line.startswith("dialogue") and "llama.cpp" in line and "ok:" in line for line in lines), r.stdout
    assert any(servers[0].url in line and "up," in line and "smollm2" in line and "x4" in line for line in lines), r.stdout
    assert any(dead in line and "DOWN" in line for line in lines), r.stdout


def test_offsite_endpoints_need_an_explicit_opt_in():
    with pytest.raises(ValidationError, match="allow_offsite"):
        EndpointSettings(url="https://api.example.com/v1")
    from narrative.backends import egress_notice

    hosted = ModelSettings(backend="openai", endpoints=[EndpointSettings(url="https://api.example.com/v1", allow_offsite=True, api_key_env="X")])
    local = ModelSettings(backend="openai", endpoints=[EndpointSettings(url="http://127.0.0.1:8080/v1")])
    assert egress_notice({"dialogue": ModelSettings(), "batch": ModelSettings()}) == []  # the default: nothing leaves the process
    (line,) = egress_notice({"dialogue": hosted})
    assert "https://api.example.com/v1" in line and "leaves this machine" in line
    assert "loopback" in egress_notice({"batch": local})[0]
