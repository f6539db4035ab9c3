"""Hot reload while the sidecar serves: edit, break, fix and delete a lore file with a client connected.

Real parts: the bundled SmolLM2 (dialogue and embeddings) on llama.cpp, chromadb on
disk, ZeroMQ over loopback TCP, watchfiles on the real file system. The polling
fallback is tested on its own with the fake embedder.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from lore.index import LoreIndex
from lore.watch import watch_lore
from tests.conftest import SAMPLES, ServerThread, make_settings
from tests.lore.helpers import FakeHashEmbedder, lore_file

SUBSET = ["npcs/odile-brask.md", "places/cracked-bellows.md", "items/smokeglass.md", "factions/reedcutters.md", "places/kilnrow.md"]
NPC = "odile-brask"


def wait_events(client, want: str, timeout_s: float = 20.0) -> list:
    """Events until one of type `want` arrives (or fail after `timeout_s`)."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += client.events(timeout_s=0.5)
        if any(e.type == want for e in got):
            return got
    raise AssertionError(f"no {want} event within {timeout_s} s; got {got}")


def turn_ok(client, text: str) -> None:
    _, done = client.say_text(NPC, text, max_tokens=2, temperature=0.0)
    assert done.finish_reason in ("stop", "length"), done


@pytest.fixture
def live(tmp_path, embedder):
    from app.runtime import open_index
    from bridge.client import SidecarClient
    from bridge.server import SidecarServer
    from lore.retrieve import Retriever
    from narrative.dialogue import DialogueEngine
    from narrative.llm import LlamaModel
    from narrative.service import NarrativeService

    root = tmp_path / "lore"
    for rel in SUBSET:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / rel, root / rel)
    s = make_settings(tmp_path / "state")
    s.lore.dir = root
    index, _ = open_index(s, embedder)
    assert not index.sync(root).problems
    model = LlamaModel(s.dialogue_model)
    lo = s.lore
    retriever = Retriever(index, model.count_tokens, lo)
    server = SidecarServer(NarrativeService(DialogueEngine(model, retriever, s.sampling)), s.server)
    server.watch_lore(root)
    st = ServerThread(server)
    client = SidecarClient(st.start(), timeout_s=300)
    client.hello("hot-reload-test")
    yield root, client, index, server
    client.close()
    st.stop()
    assert st.error is None, st.error


def test_edit_break_fix_delete_while_connected(live):
    root, client, index, _ = live
    f = root / "items" / "smokeglass.md"
    good = f.read_text()
    turn_ok(client, "Hello there.")

    f.write_text(good.replace("keys: [", "keys: [zebra-lantern, ", 1))
    events = wait_events(client, "lore.changed")
    assert any(e.type == "lore.changed" and e.files == ["items/smokeglass.md"] and e.added > 0 for e in events)
    why = client.lore_explain(NPC, "Have you seen the zebra-lantern?")
    assert any(x.entry == "smokeglass" and x.key == "zebra-lantern" for x in why.included), why
    turn_ok(client, "Have you seen the zebra-lantern?")

    f.write_text(good.replace("kind: item", "kind: [item", 1))
    events = wait_events(client, "lore.error")
    err = next(e for e in events if e.type == "lore.error")
    assert err.path == "items/smokeglass.md" and err.line > 1 and "YAML" in err.message
    assert "zebra-lantern" in index.entries["smokeglass"].keys  # the last good version stays in service
    turn_ok(client, "And the zebra-lantern, once more?")

    f.write_text(good)
    wait_events(client, "lore.changed")
    assert "zebra-lantern" not in index.entries["smokeglass"].keys
    turn_ok(client, "Tell me about smokeglass.")

    f.unlink()
    wait_events(client, "lore.changed")
    assert "smokeglass" not in index.entries
    why = client.lore_explain(NPC, "Tell me about smokeglass.")
    assert all(x.entry != "smokeglass" for x in why.included + why.dropped)
    turn_ok(client, "Tell me about smokeglass.")


def test_an_edit_of_prefix_lore_reaches_an_open_conversation(live):
    root, client, _, server = live
    engine = server.service.engine
    turn_ok(client, "Hello there.")
    conv = next(c for (_, npc), c in engine.conversations.items() if npc == NPC)
    before = engine.model.detokenize(conv.prefix_tokens)
    assert "zebra-oath" not in before
    f = root / "places" / "cracked-bellows.md"  # Odile's location: in her stable prefix
    f.write_text(f.read_text().rstrip() + "\nEvery regular swears the zebra-oath at the door.\n")
    wait_events(client, "lore.changed")
    _, done = client.say_text(NPC, "What is new here?", max_tokens=2, temperature=0.0)
    assert done.finish_reason in ("stop", "length"), done
    assert "zebra-oath" in engine.model.detokenize(conv.prefix_tokens)
    assert [t.player for t in conv.turns] == ["Hello there.", "What is new here?"]  # the history stays
    # the engine re-decoded from the edit on: less than the old prefix was reused
    assert done.tokens["cached"] < len(conv.prefix_tokens), done.tokens


def test_polling_fallback_reindexes_one_file(tmp_path):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "a.md").write_text(lore_file("Apples.", kind="lore", name="Apple"))
    (root / "b.md").write_text(lore_file("Bees.", kind="lore", name="Bee"))
    index = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    index.sync(root)
    events = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def blocking(fn, *args):
            return fn(*args)

        async def on_event(ev):
            events.append(ev)

        task = asyncio.create_task(watch_lore(root, index, blocking, on_event, stop, poll_s=0.1, force_polling=True))
        await asyncio.sleep(0.3)
        (root / "a.md").write_text(lore_file("Apples, red.", kind="lore", name="Apple", keys=["cider"]))
        await asyncio.sleep(0.6)
        (root / "b.md").write_text("---\nkind: lore\nname: [\n---\n")
        await asyncio.sleep(0.6)
        (root / "a.md").unlink()
        await asyncio.sleep(0.6)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    kinds = [(e.kind, e.files) for e in events]
    assert kinds == [("changed", ["a.md"]), ("error", ["b.md"]), ("changed", ["a.md"])], kinds
    assert set(index.entries) == {"b"} and index.entries["b"].text == "Bees."
