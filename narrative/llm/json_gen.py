"""Grammar-constrained JSON generation (build-time content, `narrative.batch`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from narrative.llm.errors import ContextOverflow, GrammarRefused, ModelError
from narrative.llm.model import LlamaModel
from narrative.llm.sampling import SamplingParams


@dataclass
class JsonGeneration:
    """The result of one `generate_json` call.

    ``text``: the JSON text (complete when ``finish_reason`` is ``stop``; cut
    when ``length``). ``prompt_tokens``: prompt length (all of it decoded: the
    context is reset first, so a result never depends on what ran before).
    ``completion_tokens``: sampled tokens, structure (braces, keys) included.
    ``prefill_ms``: prompt decode; ``decode_ms``: sampling and decoding the
    completion. Wall-clock milliseconds.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prefill_ms: float
    decode_ms: float

    @property
    def decode_tps(self) -> float:
        """Sampled tokens per second of ``decode_ms`` (0.0 when nothing was sampled)."""
        return self.completion_tokens / (self.decode_ms / 1000) if self.completion_tokens and self.decode_ms > 0 else 0.0


JSON_GENERATOR = "llama-cpp-grammar-1"
"""Names how `generate_json` decodes; part of every batch manifest key (``narrative.batch.manifest``).

Change it whenever the sampling changes (chain, grammar, stop rule), so outputs
of the old decoder are regenerated. History: none (the old forced-structure
decoder, before the key had this component); ``llama-cpp-grammar-1``:
``Llama.generate`` with ``grammar=``."""

_PORT_CHAR_RULE = r'char ::= [^"\\] | '
_UPSTREAM_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | '
_GBNF_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def json_schema_grammar(schema: dict):
    """The ``llama_cpp.LlamaGrammar`` of `json_schema_gbnf` (root rule ``root``). Raises `ModelError`."""
    import llama_cpp

    return llama_cpp.LlamaGrammar.from_string(json_schema_gbnf(schema), verbose=False)


def json_schema_gbnf(schema: dict) -> str:
    """The GBNF text (root rule ``root``) for a JSON schema.

    The GBNF comes from llama-cpp-python's port of llama.cpp's
    ``json_schema_to_grammar`` (what ``LlamaGrammar.from_json_schema`` calls;
    it emits properties in the schema's order), with one change: its ``char``
    rule is the one llama.cpp itself uses
    (``common/json-schema-to-grammar.cpp``, since llama.cpp PR #5888), which
    excludes raw control characters. The port's rule lets a raw newline or tab
    into a string (llama-cpp-python issue #1259), and then the text is not JSON.
    Not cached: converting a quest schema takes 0.1-0.2 ms (measured on the
    sample quests), against seconds of generation.

    Raises:
        ModelError: the converter rejects the schema.
    """
    import llama_cpp

    class Converter(llama_cpp.llama_grammar.SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            # the port escapes \r \n " but not the backslash, which a GBNF literal needs: a
            # const with a quote or backslash (json.dumps gives \" and \\) ended the literal
            # early, llama.cpp could not parse the grammar and crashed (SIGSEGV) in sampling
            return '"' + "".join(_GBNF_LITERAL_ESCAPES.get(c, c) for c in literal) + '"'

    try:
        converter = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # as json_schema_to_gbnf
        converter.visit(converter.resolve_refs(json.loads(json.dumps(schema)), "stdin"), "")
        gbnf = converter.format_grammar()
    except Exception as exc:  # the converter raises bare Exception / ValueError / KeyError
        raise ModelError(f"cannot build a grammar from the JSON schema: {type(exc).__name__}: {exc}") from None
    return gbnf.replace(_PORT_CHAR_RULE, _UPSTREAM_CHAR_RULE)


def _check_grammar(model: LlamaModel, grammar) -> None:
    """Build the grammar sampler once and free it: llama.cpp returns NULL for a grammar it refuses
    (and logs why), and ``Llama.generate`` would add that NULL to its sampler chain and crash.

    Raises:
        GrammarRefused: llama.cpp refused the grammar.
    """
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(model.llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
    if not sampler:
        raise GrammarRefused("llama.cpp refused the output grammar (a length limit over its repetition limit of 2000 characters? "
                             "lower the spec's limits)")
    llama_cpp.llama_sampler_free(sampler)


def generate_json(
    model: LlamaModel,
    prompt: Sequence[int],
    schema: dict,
    params: SamplingParams,
    *,
    max_tokens: int,
) -> JsonGeneration:
    """Generate a JSON text matching `schema` after `prompt` (token ids).

    Sampling is llama-cpp-python's own: ``Llama.generate`` with ``grammar=``
    (the grammar of `json_schema_grammar`). Its sampler chain, from `params`:
    repeat penalty over the last ``penalty_last_n`` sampled tokens, the grammar
    (over the whole vocabulary, every step), top-k, top-p, temperature, a draw
    seeded with ``seed`` (greedy when ``temperature`` is 0); min-p and
    typical-p are off.
    Generation ends at the end-of-generation token, which the grammar allows
    only once the document is complete, or as soon as the text parses as JSON
    (the closing brace: nothing but whitespace could follow). The result always
    parses and matches the schema unless `max_tokens` sampled tokens cut it
    (``finish_reason`` ``length``).

    This replaced a decoder of our own (structure forced, per-string grammars
    checked after sampling) that was 1.1x faster: 51.5 vs 46.7 tok/s decode on
    SmolLM2-135M, one sample quest, 2 threads, quiet machine
    (``benchmarks/batch.py --compare-grammar`` before the change). Outside the
    product's core, a maintained library beats our own code at that margin.

    Deterministic for the same model file, settings, prompt, schema and seed on
    one machine: the context is reset, the prompt decoded in the same splits,
    and the seed set explicitly every call. Holds ``model.lock``.

    Raises:
        ContextOverflow: ``len(prompt) + max_tokens`` exceeds ``model.n_ctx``.
        GrammarRefused: llama.cpp refuses the schema's grammar (a ``maxLength``
            over its repetition limit, ...); checked before sampling, which would crash.
        ModelError: empty prompt, a seed of 0xFFFFFFFF (llama.cpp's "random
            seed"), or the schema cannot be turned into a grammar.
    """
    prompt = list(prompt)
    if not prompt:
        raise ModelError("empty prompt")
    if len(prompt) + max_tokens > model.n_ctx:
        raise ContextOverflow(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds n_ctx {model.n_ctx}")
    seed = params.seed & 0xFFFFFFFF
    if seed == 0xFFFFFFFF:
        raise ModelError("seed 0xFFFFFFFF means a random seed to llama.cpp; pick another")
    grammar = json_schema_grammar(schema)
    _check_grammar(model, grammar)
    llm = model.llm
    out: list[int] = []
    finish = "length"
    with model.lock:
        saved_last_n = llm.last_n_tokens_size
        llm.last_n_tokens_size = params.penalty_last_n  # read by Llama's sampler chain (penalty_last_n)
        try:
            llm.reset()
            llm.set_seed(seed)
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            # The prompt is evaluated: generate() sees an exact cache hit and samples at once.
            tokens = llm.generate(
                prompt, top_k=params.top_k, top_p=params.top_p, min_p=0.0, typical_p=1.0, temp=params.temperature,
                repeat_penalty=params.repeat_penalty, grammar=grammar, reset=True,
            )
            try:
                while len(out) < max_tokens:
                    tok = next(tokens)
                    if model.is_stop(tok):
                        finish = "stop"
                        break
                    out.append(tok)
                    if b"}" in llm.detokenize([tok]):  # a few times per document
                        try:
                            json.loads(llm.detokenize(out).decode("utf-8"))
                        except ValueError:
                            continue
                        finish = "stop"
                        break
            finally:
                tokens.close()
            t2 = time.perf_counter()
        finally:
            llm.last_n_tokens_size = saved_last_n
    return JsonGeneration(
        text=llm.detokenize(out).decode("utf-8", errors="replace"),
        finish_reason=finish,
        prompt_tokens=len(prompt),
        completion_tokens=len(out),
        prefill_ms=(t1 - t0) * 1000,
        decode_ms=(t2 - t1) * 1000,
    )
