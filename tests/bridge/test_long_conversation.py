"""A conversation longer than its context, over the real sidecar on a hybrid model (tiny Qwen3.5:
Gated DeltaNet layers whose recurrent state cannot be trimmed): the oldest turns are dropped, the
NPC's stable prefix (card, static lore) stays byte for byte and is never decoded again (counted in
decoded tokens), and every turn is answered."""

from __future__ import annotations

import pytest

from tests.conftest import ServerThread, make_settings

NPC = "odile-brask"
LINES = [
    "Good evening. What is this place?",
    "Who drinks here on a night like this?",
    "Tell me about the reedcutters.",
    "What happened to the patient heron?",
    "Is the Sallow Lock safe after dark?",
    "What does bluewick oil smell like?",
    "Who is Pell Sedgewick to you?",
    "What do the Ashwardens want?",
]


@pytest.fixture
def hybrid_sidecar(tmp_path, sample_state, embedder, fixture_paths):
    import shutil

    from app.runtime import open_index
    from bridge.client import SidecarClient
    from bridge.server import SidecarServer
    from lore.retrieve import Retriever
    from narrative.dialogue import DialogueEngine
    from narrative.llm import LlamaModel
    from narrative.service import NarrativeService
    from narrative.settings import ContextSettings, ModelSettings

    state = tmp_path / "state"
    shutil.copytree(sample_state, state)
    s = make_settings(state)
    index, _ = open_index(s, embedder)
    # 2 sequences of 2,560 tokens: the sample NPC's prefix (~1,600 tokens) leaves room for a few turns
    model = LlamaModel(ModelSettings(path=str(fixture_paths["qwen35"]), n_ctx=5120, n_seq_max=2, n_threads=2))
    retriever = Retriever(index, model.count_tokens, s.lore)
    engine = DialogueEngine(model, retriever, s.sampling, ContextSettings(persist=False))
    st = ServerThread(SidecarServer(NarrativeService(engine), s.server))
    client = SidecarClient(st.start(), timeout_s=300)
    yield client, engine
    client.close()
    st.stop()
    assert st.error is None, st.error


def test_conversation_past_its_context_keeps_the_prefix_and_does_not_decode_it_again(hybrid_sidecar):
    client, engine = hybrid_sidecar
    session = "long-1"
    prefix = None
    card_text = None
    drops = 0
    stats = engine.context.stats
    for i in range(24):
        line = LINES[i % len(LINES)]
        before_restored, before_full = stats.restored_checkpoints, stats.full_reevaluations
        chunks, done = client.say_text(NPC, line, session=session, max_tokens=64, temperature=0.0)
        assert done.finish_reason in ("stop", "length"), f"turn {i}: {done.finish_reason}"
        conv = engine.conversations[(session, NPC)]
        if prefix is None:
            prefix = list(conv.prefix_tokens)
            card_text = engine.model.detokenize(prefix)
            assert "Odile" in card_text
        assert conv.prefix_tokens == prefix, f"turn {i}: the stable prefix changed"
        assert engine.model.n_ctx == 2560
        assert done.tokens["prompt"] + done.tokens["completion"] <= engine.model.n_ctx
        if done.forgotten_turns:
            drops += 1
            # the prompt diverges right after the prefix: the checkpoint at the prefix end is restored
            # and only the kept turns and this line are decoded, never the prefix
            assert done.tokens["cached"] == len(prefix), f"turn {i}: cached {done.tokens['cached']}, prefix {len(prefix)}"
            assert stats.restored_checkpoints == before_restored + 1
        elif i > 0:
            assert done.tokens["cached"] >= len(prefix), f"turn {i}: the prefix was decoded again"
        assert stats.full_reevaluations == before_full == 0, f"turn {i}: a full re-decode from token 0"
        if drops >= 2 and i >= 12:
            break
    assert drops >= 2, f"the conversation never outgrew its context in {i + 1} turns"
    cached = engine.context.cached_tokens(engine._key(session, NPC))
    assert cached[: len(prefix)] == prefix
    assert conv.forgotten >= drops and len(conv.turns) >= 1
    print(f"\n{i + 1} turns, {drops} drops, {conv.forgotten} turns forgotten, prefix {len(prefix)} tokens never re-decoded")
