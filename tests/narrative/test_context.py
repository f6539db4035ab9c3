"""The context engine on real llama.cpp: SmolLM2 (KV trimming) and the tiny
qwen35 / qwen35moe hybrids (recurrent-state checkpoints).

Correctness is checked against a full re-evaluation with greedy sampling: the
tokens produced after resuming from a checkpoint (or a trimmed KV cache, a RAM
snapshot, a state file, another conversation's prefix) must equal those of the
same prompt decoded from token 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from narrative.context import ContextEngine, StateMismatch
from narrative.llm import LlamaModel, SamplingParams, StateError
from narrative.settings import BUNDLED_MODEL, ContextSettings, ModelSettings

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("smollm2", "qwen35", "qwen35moe")
GEN = 8  # tokens generated per call: enough to compare, cheap on 2 cores

LORE = (
    "The harbor town of Cinderfen sits where the black river meets the sea. "
    "Its docks are run by the Lantern Guild, whose master keeps the tide ledgers. "
    "Smugglers use the old salt tunnels under the fish market when the fog is thick. "
)


@pytest.fixture(scope="module")
def models(fixture_paths):
    paths = {"smollm2": BUNDLED_MODEL, **{k: str(v) for k, v in fixture_paths.items()}}
    out = {name: LlamaModel(ModelSettings(path=paths[name], n_ctx=4096, n_batch=256, n_threads=2, n_seq_max=2)) for name in MODELS}
    yield out
    for m in out.values():
        m.close()


def fresh_engine(model: LlamaModel, **kw) -> ContextEngine:
    for s in range(model.n_seq_max):
        model.seq_clear(s)
    return ContextEngine(model, ContextSettings(**kw))


def greedy(engine: ContextEngine, key: str, prompt: list[int], boundaries=()):
    return engine.generate(key, prompt, GREEDY, boundaries=boundaries, max_tokens=GEN)


def parts(model: LlamaModel):
    """(stable prefix, turn A, turn B) as token lists in the model's chat format."""
    fmt = model.format
    prefix = model.bos() + model.chat_tokens(fmt.system_pieces("You are Mara, the harbor master.\n\n" + LORE * 3))
    a = model.chat_tokens(fmt.user_pieces("Who runs the docks?", then_assistant=True))
    b = model.chat_tokens(fmt.user_pieces("Tell me about the salt tunnels.", then_assistant=True))
    return prefix, a, b


def common(x: list[int], y: list[int]) -> int:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n


def reference(model: LlamaModel, prompt: list[int], boundaries=()) -> list[int]:
    """Greedy tokens of `prompt` decoded from token 0 in an empty context."""
    e = fresh_engine(model)
    g = greedy(e, "ref", prompt, boundaries)
    assert g.cached_tokens == 0
    return g.tokens


@pytest.mark.parametrize("name", MODELS)
def test_branch_resumes_from_checkpoint_and_matches_full_reevaluation(models, name):
    m = models[name]
    prefix, a, b = parts(m)
    e = fresh_engine(m)
    g1 = greedy(e, "npc", prefix + a, boundaries=[len(prefix)])
    assert g1.cached_tokens == 0
    assert e.checkpoints("npc") == [len(prefix)]
    # a branch: same stable prefix, a different turn (other dynamic lore / edited line / regenerate)
    g2 = greedy(e, "npc", prefix + b, boundaries=[len(prefix)])
    if m.has_recurrent_state:
        assert g2.cached_tokens == len(prefix), "resumed from the checkpoint at the end of the stable prefix, not token 0"
    else:  # the KV cache is trimmed exactly at the divergence (inside the user turn's header)
        assert g2.cached_tokens == common(prefix + a, prefix + b) >= len(prefix)
    assert e.last_evaluated == len(prefix + b) - g2.cached_tokens
    if m.has_recurrent_state:
        assert e.stats.restored_checkpoints == 1
        assert len(e.convs["npc"].checkpoints[0].data) > 0
    else:
        assert e.stats.trimmed == 1
    assert g2.tokens == reference(m, prefix + b, [len(prefix)])


@pytest.mark.parametrize("name", MODELS)
def test_next_turn_decodes_only_new_tokens_and_regenerate_matches(models, name):
    m = models[name]
    prefix, a, b = parts(m)
    e = fresh_engine(m)
    g1 = greedy(e, "npc", prefix + a, boundaries=[len(prefix)])
    close = m.marker_tokens(m.format.assistant_close)
    history = prefix + a + g1.tokens + close
    before = m.n_decoded
    g2 = greedy(e, "npc", history + b, boundaries=[len(prefix), len(history)])
    n_new = len(history + b) - g2.cached_tokens
    assert g2.cached_tokens >= len(prefix + a) + len(g1.tokens) - 1  # all of turn 1 reused (the last sampled token was never decoded)
    assert n_new <= len(close) + len(b) + 1
    assert m.n_decoded - before == n_new + len(g2.tokens) - (g2.finish_reason != "stop")
    # regenerate turn 2: resumes from the checkpoint at the end of the history
    g3 = greedy(e, "npc", history + b, boundaries=[len(prefix), len(history)])
    if m.has_recurrent_state:
        assert g3.cached_tokens == len(history)
    else:  # KV trimming reuses all but the last prompt token
        assert g3.cached_tokens == len(history + b) - 1
    assert g3.tokens == g2.tokens  # the restored state is exactly the one the first pass had there


@pytest.mark.parametrize("name", ["smollm2", "qwen35"])
def test_switching_npcs_keeps_their_prefixes(models, name):
    """n_seq_max=2: A and B stay hot side by side; C evicts the least recent into the RAM store."""
    m = models[name]
    pa, a, b = parts(m)
    pb = m.bos() + m.chat_tokens(m.format.system_pieces("You are Oren, a smuggler.\n\n" + LORE * 2))
    pc = m.bos() + m.chat_tokens(m.format.system_pieces("You are Ilse, a priest.\n\n" + LORE * 2))
    ref_a, ref_b = reference(m, pa + a, [len(pa)]), reference(m, pb + b, [len(pb)])  # first: it clears the context
    e = fresh_engine(m)
    greedy(e, "A", pa + a, [len(pa)])
    greedy(e, "B", pb + a, [len(pb)])
    g = greedy(e, "A", pa + b, [len(pa)])
    assert g.cached_tokens >= len(pa)  # A's prefix survived B's turn
    greedy(e, "C", pc + a, [len(pc)])  # evicts B (least recently used) into the RAM store
    assert e.convs["B"].seq is None and e.convs["B"].snapshot is not None
    g = greedy(e, "B", pb + b, [len(pb)])
    assert e.stats.snapshots_loaded == 1
    assert g.cached_tokens >= len(pb)
    assert g.tokens == ref_b
    # B's return evicted A; A comes back and evicts C, whose snapshot is written into the buffer that
    # B's load gave back (same size class): no new host buffer, and A still answers as a full re-evaluation
    assert e.convs["A"].snapshot is not None and e.convs["C"].seq is not None
    before = m.state_buffer_counts()
    g = greedy(e, "A", pa + a, [len(pa)])
    assert e.stats.snapshots_loaded == 2 and e.stats.snapshots_saved == 3
    after = m.state_buffer_counts()
    assert after["snapshot_reused"] == before["snapshot_reused"] + 1, (before, after)
    assert after["snapshot_allocated"] == before["snapshot_allocated"]
    assert g.tokens == ref_a


@pytest.mark.parametrize("name", ["smollm2", "qwen35moe"])
def test_two_conversations_share_a_stable_prefix(models, name):
    m = models[name]
    prefix, a, b = parts(m)
    e = fresh_engine(m)
    greedy(e, "player1", prefix + a, [len(prefix)])
    g = greedy(e, "player2", prefix + b, [len(prefix)])
    assert e.stats.shared_prefixes == 1
    assert g.cached_tokens == len(prefix)  # shared up to the donor's checkpoint
    assert g.tokens == reference(m, prefix + b, [len(prefix)])


@pytest.mark.parametrize("name", MODELS)
def test_saved_session_restores_without_decoding(models, name, tmp_path):
    m = models[name]
    prefix, a, b = parts(m)
    e = fresh_engine(m)
    g1 = greedy(e, "npc", prefix + a, [len(prefix)])
    history = prefix + a + g1.tokens + m.marker_tokens(m.format.assistant_close)
    path = tmp_path / "npc.ctx"
    size = e.save("npc", path, meta={"npc": "mara"})
    assert size > 0
    held = e.cached_tokens("npc")
    # the next turn without a restart (not a reference from token 0: the history holds tokens decoded
    # one at a time while generating, and llama.cpp's one-token and batched paths differ in the last
    # bits, notably the DeltaNet's recurrent vs chunked forms)
    want = greedy(e, "npc", history + b, [len(prefix), len(history)]).tokens
    e2 = fresh_engine(m)  # a restarted sidecar: empty context
    before = m.n_decoded
    assert e2.load("npc", path) == {"npc": "mara"}
    assert m.n_decoded == before  # nothing re-decoded
    assert e2.cached_tokens("npc") == held
    assert e2.checkpoints("npc") == [len(prefix)]
    g2 = greedy(e2, "npc", history + b, [len(prefix), len(history)])
    assert g2.cached_tokens == len(held)
    assert g2.tokens == want
    # the restored checkpoint still serves a branch, exactly
    e3 = fresh_engine(m)
    e3.load("npc", path)
    g3 = greedy(e3, "npc", prefix + b, [len(prefix)])
    assert g3.cached_tokens >= len(prefix)
    assert g3.tokens == reference(m, prefix + b, [len(prefix)])


def test_state_file_from_another_model_or_settings_is_refused(models, tmp_path):
    q, moe = models["qwen35"], models["qwen35moe"]
    prefix, a, _ = parts(q)
    e = fresh_engine(q)
    greedy(e, "npc", prefix + a, [len(prefix)])
    path = tmp_path / "q.ctx"
    e.save("npc", path)
    with pytest.raises(StateMismatch, match="model_file"):
        fresh_engine(moe).load("npc", path)
    other = LlamaModel(ModelSettings(path=str(q.path), n_ctx=1024, n_threads=2, n_seq_max=1))
    try:
        with pytest.raises(StateMismatch, match="n_ctx: saved 2048, current 1024"):
            ContextEngine(other).load("npc", path)
    finally:
        other.close()
    bad = tmp_path / "bad.ctx"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(StateError, match="not a narrative context state file"):
        fresh_engine(q).load("npc", bad)


def test_foreign_use_of_the_context_is_detected(models):
    """Llama's own API (here Llama.generate) clears every sequence: the engine notices and re-decodes."""
    m = models["smollm2"]
    prefix, a, b = parts(m)
    e = fresh_engine(m)
    greedy(e, "npc", prefix + a, [len(prefix)])
    for _, _tok in zip(range(2), m.llm.generate(prefix + b, temp=0.0)):  # a foreign user of the same context
        pass
    g = greedy(e, "npc", prefix + b, [len(prefix)])
    assert g.cached_tokens == 0
    assert g.tokens == reference(m, prefix + b, [len(prefix)])



def test_branch_matches_full_reevaluation_with_q8_kv_and_flash_attention(fixture_paths):
    """The production configuration of the presets (q8_0 KV, flash attention) on the hybrid fixture."""
    m = LlamaModel(ModelSettings(path=str(fixture_paths["qwen35"]), n_ctx=4096, n_batch=256, n_threads=2, n_seq_max=2,
                                 type_k="q8_0", type_v="q8_0", flash_attn=True))
    try:
        prefix, a, b = parts(m)
        e = fresh_engine(m)
        greedy(e, "npc", prefix + a, [len(prefix)])
        g = greedy(e, "npc", prefix + b, [len(prefix)])
        assert g.cached_tokens == len(prefix) and e.stats.restored_checkpoints == 1
        assert g.tokens == reference(m, prefix + b, [len(prefix)])
    finally:
        m.close()
