"""Lore text -> embedding vectors on llama.cpp's embedding mode."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from narrative.llm.errors import ModelError
from narrative.llm.model import resolve_model_path
from narrative.settings import EmbeddingSettings


class LlamaEmbedder:
    """Text -> unit-norm embedding vectors with llama.cpp (mean pooling).

    The bundled SmolLM2 gives weak but useful vectors (576 dims); a real embedding
    GGUF (e.g. Qwen3-Embedding-0.6B) does better. Retrieval never rests on it alone.

    Raises:
        ModelError: on load failure.
    """

    def __init__(self, settings: EmbeddingSettings) -> None:
        import llama_cpp

        self.path = resolve_model_path(settings.path)
        try:
            self.llm = llama_cpp.Llama(
                str(self.path),
                embedding=True,
                n_ctx=settings.n_ctx,
                n_batch=settings.n_ctx,
                n_threads=settings.n_threads,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        except ValueError as exc:
            raise ModelError(f"cannot load embedding model {self.path}: {exc}") from None
        self.lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed `texts`; returns shape [len(texts), n_embd]. Texts longer than n_ctx are truncated."""
        with self.lock:
            return self.llm.embed(list(texts), normalize=True, truncate=True)
