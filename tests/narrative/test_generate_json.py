"""`narrative.llm.generate_json`: llama-cpp-python's ``grammar=`` sampling on real models (the bundled
SmolLM2 and the tiny random-weight qwen35moe, whose recurrent state must be cleared between calls)."""

from __future__ import annotations

import json

import pytest

from narrative.llm import ContextOverflow, LlamaModel, SamplingParams, generate_json, json_schema_grammar
from narrative.settings import BUNDLED_MODEL, ModelSettings


def sampling(temperature: float, seed: int) -> SamplingParams:
    """The batch's default sampling (BatchOptions: top_p 0.95, top_k 40, repeat penalty 1.1 over 64 tokens)."""
    return SamplingParams(temperature=temperature, top_p=0.95, top_k=40, repeat_penalty=1.1, seed=seed)


def string(lo: int, hi: int) -> dict:
    return {"type": "string", "minLength": lo, "maxLength": hi}


def obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


SCHEMA = obj({"title": string(3, 12), "dialogue": obj({"offer": string(4, 16), "accept": string(4, 16)}), "summary": string(4, 12)})


@pytest.fixture(scope="module", params=["smollm2", "qwen35moe"])
def model(request, fixture_paths):
    path = BUNDLED_MODEL if request.param == "smollm2" else str(fixture_paths[request.param])
    m = LlamaModel(ModelSettings(path=path, n_ctx=1024, n_threads=1, n_seq_max=1))
    yield m
    m.close()


def prompt(m: LlamaModel) -> list[int]:
    text = m.format.system("Write JSON.") + m.format.user("A quest about eels.") + m.format.assistant_open
    return m.bos() + m.tokenize(text, special=True)  # only the template's markers and plain text here


def test_grammar_keeps_schema_order_and_excludes_raw_control_characters():
    gbnf = json_schema_grammar(SCHEMA)._grammar
    root = next(line for line in gbnf.splitlines() if line.startswith("root ::="))
    assert root.index("title") < root.index("dialogue") < root.index("summary")  # schema order, not sorted
    char = next(line for line in gbnf.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F" in char  # llama.cpp's rule: a raw newline in a string would not be JSON


def test_output_parses_in_schema_order_and_same_seed_same_text(model):
    p = prompt(model)
    a = generate_json(model, p, SCHEMA, sampling(0.7, 1), max_tokens=120)
    other = generate_json(model, p, SCHEMA, sampling(0.7, 2), max_tokens=120)  # runs in between: nothing may leak into the next call
    b = generate_json(model, p, SCHEMA, sampling(0.7, 1), max_tokens=120)
    assert a.finish_reason == "stop", a
    data = json.loads(a.text)
    assert list(data) == ["title", "dialogue", "summary"] and list(data["dialogue"]) == ["offer", "accept"]
    assert 3 <= len(data["title"]) <= 12 and all(4 <= len(v) <= 16 for v in data["dialogue"].values())
    assert b.text == a.text
    assert other.text != a.text
    assert a.prompt_tokens == len(p) and a.completion_tokens > 0 and a.prefill_ms > 0 and a.decode_ms > 0


def test_cut_at_max_tokens_is_a_prefix_with_finish_length(model):
    p = prompt(model)
    full = generate_json(model, p, SCHEMA, sampling(0.7, 3), max_tokens=120)
    cut = generate_json(model, p, SCHEMA, sampling(0.7, 3), max_tokens=5)
    assert cut.finish_reason == "length" and cut.completion_tokens == 5
    assert full.text.startswith(cut.text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.text)


def test_prompt_plus_max_tokens_over_n_ctx_raises(model):
    p = prompt(model)
    with pytest.raises(ContextOverflow):
        generate_json(model, p, SCHEMA, sampling(0.7, 1), max_tokens=model.n_ctx - len(p) + 1)


QUOTED = 'Lock ordinance "eleven", friend. A \\ B\nnext line.'  # a hand-written line (keep_lines) with quotes, a backslash, a newline


def quoted_schema() -> dict:
    return obj({"offer": {"type": "string", "const": QUOTED}, "summary": string(4, 12)})


def test_a_const_with_quotes_and_backslashes_is_escaped_in_the_grammar():
    # the port's literal escaping left backslashes alone: '\\"' closed the GBNF literal early, llama.cpp
    # failed to parse the grammar and then crashed (SIGSEGV) in sampling: one quoted keep_lines line
    # killed the batch (or the sidecar, for a bridge 'generate' request)
    gbnf = json_schema_grammar(quoted_schema())._grammar
    offer = next(line for line in gbnf.splitlines() if line.startswith("offer ::="))
    assert offer == r'offer ::= "\"Lock ordinance \\\"eleven\\\", friend. A \\\\ B\\nnext line.\""', offer


def test_a_const_with_quotes_and_backslashes_comes_out_verbatim(model):
    g = generate_json(model, prompt(model), quoted_schema(), sampling(0.7, 1), max_tokens=120)
    assert g.finish_reason == "stop", g
    assert json.loads(g.text)["offer"] == QUOTED
