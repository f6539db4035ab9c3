"""The dialogue path on the context engine: turn 2 decodes only its new tokens,
over the real sidecar too; conversations survive a restart; Qwen3.5's template."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_turn_two_decodes_only_new_tokens_over_the_sidecar(client):
    session = "ctx-test-session"
    d1 = [m for m in client.say("odile-brask", "Who runs the docks?", session=session, max_tokens=8, seed=1) if m.type == "done"][0]
    d2 = [m for m in client.say("odile-brask", "And the salt tunnels?", session=session, max_tokens=8, seed=1) if m.type == "done"][0]
    t1, t2 = d1.tokens, d2.tokens
    assert t1["cached"] == 0 or t1["cached"] < t1["prompt"]
    # turn 1's whole prompt and its reply are reused; only the close tag, this turn's lore and line are decoded
    assert t2["cached"] >= t1["prompt"] + t1["completion"] - 1
    assert t2["prompt"] - t2["cached"] < t2["prompt"] - t1["prompt"] + 1


def test_conversation_survives_a_restart(runtime, tmp_path):
    from narrative.dialogue import DialogueEngine
    from narrative.settings import ContextSettings

    m = runtime.model
    e1 = DialogueEngine(m, runtime.retriever, runtime.settings.sampling, ContextSettings(), tmp_path)
    r1 = e1.turn("player-7", "odile-brask", "Who runs the docks?", max_tokens=8, temperature=0.0)
    held = e1.context.cached_tokens(e1._key("player-7", "odile-brask"))
    assert e1.save_sessions() == 1
    assert len(list((tmp_path / "sessions").glob("*.ctx"))) == 1

    e2 = DialogueEngine(m, runtime.retriever, runtime.settings.sampling, ContextSettings(), tmp_path)  # a restarted sidecar
    before = m.n_decoded
    conv = e2.conversation("player-7", "odile-brask")
    assert m.n_decoded == before  # restored, not re-decoded
    assert [t.player for t in conv.turns] == ["Who runs the docks?"] and conv.turns[0].reply == r1.text
    r2 = e2.turn("player-7", "odile-brask", "And the salt tunnels?", max_tokens=8, temperature=0.0)
    assert r2.cached_tokens == len(held)  # the prefix and turn 1 were not decoded again
    never_fed = len(m.marker_tokens(m.format.assistant_close)) + 1  # the close tag, and the last sampled token of a 'length' finish
    assert len(held) >= len(conv.prefix_tokens) + len(conv.turns[0].tokens) - never_fed

    e2.reset("player-7", "odile-brask")
    assert not list((tmp_path / "sessions").glob("*.ctx"))


@pytest.fixture(scope="module")
def qwen35_path(fixture_paths) -> Path:
    return fixture_paths["qwen35"]


def test_chat_format_matches_the_qwen35_template_with_thinking_off(qwen35_path):
    """The prompt of a turn is byte-identical to Qwen3.5's own template rendering
    (enable_thinking=false); earlier turns differ on purpose: see the last assert."""
    import jinja2.sandbox

    from narrative.llm import ChatFormat, read_model_metadata

    meta = read_model_metadata(qwen35_path)
    template = meta["tokenizer.chat_template"]
    fmt = ChatFormat.from_template(template)
    assert fmt.name == "chatml-think-off"
    render = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template).render

    def theirs(messages):
        return render(messages=messages, add_generation_prompt=True, enable_thinking=False)

    sys_, u1, a1, u2 = "You are Mara.", "Who runs the docks?", "The Lantern Guild.", "And the tunnels?"
    ours_turn1 = fmt.system(sys_) + fmt.user(u1) + fmt.assistant_open
    assert ours_turn1 == theirs([{"role": "system", "content": sys_}, {"role": "user", "content": u1}])
    assert fmt.assistant_open.endswith("<think>\n\n</think>\n\n")
    ours_turn2 = ours_turn1 + a1 + fmt.assistant_close + fmt.user(u2) + fmt.assistant_open
    their_turn2 = theirs(
        [{"role": "system", "content": sys_}, {"role": "user", "content": u1}, {"role": "assistant", "content": a1}, {"role": "user", "content": u2}]
    )
    # The template drops the (empty) think block of earlier assistant turns, which changes
    # the history's tokens every turn; we keep the tokens the model actually saw (append-only).
    assert ours_turn2.replace("<|im_start|>assistant\n<think>\n\n</think>\n\n" + a1, "<|im_start|>assistant\n" + a1) == their_turn2
