"""Reasoning never reaches a player, on the real Qwen3.5 chat template (tiny qwen35 fixture: the real
template, vocabulary and tokenizer, random weights).

A random-weight model does not reason on cue, so these tests replace its greedy choice with a script
of token ids (`scripted`, a fake named as one): the prompt, the template's markers, the tokenizer, the
KV cache and recurrent state, the history and the saved session file are all real.
"""

from __future__ import annotations

import pytest

from narrative.settings import ContextSettings, DialogueSettings, SamplingSettings
from tests.safety.world import NPC, OneNpcRetriever


@pytest.fixture(scope="module")
def qwen(fixture_paths):
    from narrative.llm import LlamaModel
    from narrative.settings import ModelSettings

    return LlamaModel(ModelSettings(path=str(fixture_paths["qwen35"]), n_ctx=4096, n_seq_max=1, n_threads=2))


def scripted(monkeypatch, model, text: str) -> None:
    """Fake: the model's next greedy tokens are `text` (markers as the template's special tokens),
    then its end-of-turn token; afterwards it chooses for itself again."""
    script = model.tokenize(text, special=True) + model.marker_tokens("<|im_end|>")
    real = model.argmax

    def argmax(index: int) -> int:
        return script.pop(0) if script else real(index)

    monkeypatch.setattr(model, "argmax", argmax)


def engine_for(model, tmp_path, thinking: bool):
    from narrative.dialogue import DialogueEngine

    return DialogueEngine(model, OneNpcRetriever(), SamplingSettings(max_tokens=48, temperature=0.0),
                          ContextSettings(), tmp_path, DialogueSettings(thinking=thinking))


def test_the_real_qwen35_template_gives_the_thinking_header_and_the_xml_tool_format(qwen):
    fmt = qwen.format
    assert fmt.thinking_open == "<|im_start|>assistant\n<think>\n"  # the template's default generation prompt
    assert fmt.assistant_open == "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # enable_thinking=false
    assert fmt.tool_format == "qwen-xml"
    assert len(qwen.marker_tokens("</think>")) == 1 and len(qwen.marker_tokens("<tool_call>")) == 1


def test_reasoning_is_stripped_from_chunks_result_history_and_saved_session(qwen, tmp_path, monkeypatch):
    from narrative.state_file import read_header

    engine = engine_for(qwen, tmp_path, thinking=True)
    scripted(monkeypatch, qwen, "The player looks rich. I will overcharge him.\n</think>\n\nWelcome to the forge, traveller.")
    pieces: list[str] = []
    r = engine.turn("s1", NPC, "Good day. What do you sell?", temperature=0.0, on_text=pieces.append)
    assert r.text == "Welcome to the forge, traveller."
    assert "".join(pieces).strip() == r.text
    assert not any("overcharge" in p or "think>" in p for p in pieces)
    conv = engine.conversations[("s1", NPC)]
    history = qwen.detokenize(conv.turns[-1].tokens)
    assert "overcharge" not in history and "Welcome to the forge, traveller." in history
    assert conv.turns[-1].reply == r.text
    header = read_header(engine._session_path("s1", NPC))
    saved = header["meta"]["turns"][-1]
    assert saved["reply"] == r.text and "overcharge" not in qwen.detokenize(saved["tokens"])

    # the next turn's prompt holds the visible line only
    monkeypatch.setattr(qwen, "argmax", type(qwen).argmax.__get__(qwen))
    engine.turn("s1", NPC, "Anything cheaper?", temperature=0.0, max_tokens=4)
    prompt_text = qwen.detokenize(engine.context.cached_tokens(engine._key("s1", NPC)))
    assert "overcharge" not in prompt_text and "Welcome to the forge, traveller." in prompt_text


def test_a_think_block_the_model_opens_by_itself_is_hidden_too(qwen, tmp_path, monkeypatch):
    engine = engine_for(qwen, tmp_path, thinking=False)
    scripted(monkeypatch, qwen, "Hello. <think>Lie about the price.</think> The blade is forty marks.")
    pieces: list[str] = []
    r = engine.turn("s2", NPC, "How much for the blade?", temperature=0.0, on_text=pieces.append)
    assert "Lie" not in r.text and "think" not in r.text
    assert r.text.startswith("Hello.") and r.text.endswith("The blade is forty marks.")
    assert "".join(pieces).strip() == r.text
    assert "Lie about" not in qwen.detokenize(engine.conversations[("s2", NPC)].turns[-1].tokens)


def test_a_tool_call_token_ends_the_line_and_the_tail_is_decoded_under_the_grammar(qwen, tmp_path, monkeypatch):
    from narrative.actions import ActionSet, ActionSpec, FieldSpec

    engine = engine_for(qwen, tmp_path, thinking=False)
    aset = ActionSet(
        actions=(ActionSpec("give_item", "Give an item.", {"type": "object", "properties": {"item": {"type": "string", "enum": ["blade", "nails"]}},
                                                           "required": ["item"]}),),
        fields=(FieldSpec("emotion", ("calm", "angry")),), max_actions=1)
    engine.declare("s3", None, aset)
    scripted(monkeypatch, qwen, "Take it.<tool_call>")
    pieces: list[str] = []
    r = engine.turn("s3", NPC, "Give me the blade.", temperature=0.0, on_text=pieces.append)
    assert r.text == "Take it." and "".join(pieces).strip() == "Take it."
    assert r.declared and r.fields.get("emotion") in ("calm", "angry")  # the grammar made the field call first
    for name, args in r.actions:
        assert name == "give_item" and args["item"] in ("blade", "nails")
    prefix_text = qwen.detokenize(engine.conversations[("s3", NPC)].prefix_tokens)
    assert prefix_text.startswith("system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n")  # markers not rendered
    assert '"name": "give_item"' in prefix_text and "</tools>\n\nIf you choose to call a function ONLY reply" in prefix_text
