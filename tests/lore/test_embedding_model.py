"""The bundled sentence embedder: all-MiniLM-L6-v2 converted to GGUF, run on llama.cpp (issue 16). Real model."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


def test_minilm_gguf_embeds_like_the_model_card():
    pytest.importorskip("gguf")
    from lore.embedding_model import EmbeddingModelError, minilm_gguf
    from narrative.llm import LlamaEmbedder
    from narrative.settings import EmbeddingSettings

    try:
        path = minilm_gguf(ROOT / ".cache")
    except EmbeddingModelError as exc:
        pytest.skip(str(exc))
    emb = LlamaEmbedder(EmbeddingSettings(path=str(path), n_ctx=256, n_threads=2))
    a, b, c = emb(["A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."])
    assert len(a) == 384

    def dot(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y))

    # sentence-transformers gives 0.755 / 0.05 for these pairs with the original PyTorch model
    assert abs(dot(a, b) - 0.755) < 0.01 and dot(a, c) < 0.15
    assert emb.llm.tokenize(b"Valdris!") == [101, 11748, 13626, 2483, 999, 102]  # [CLS] val ##dr ##is ! [SEP] (WordPiece)
