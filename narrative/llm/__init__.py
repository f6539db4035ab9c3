"""Model hosting on llama.cpp: the only package that imports ``llama_cpp``.

==================  =====================================================
module              what lives there
==================  =====================================================
``model``           `LlamaModel` (load from settings, tokenize, decode into
                    sequences, sequence states, sampler), `resolve_model_path`
``chat_format``     `ChatFormat`: a chat template's turn markers
``sampling``        `SamplingParams`: one decode's sampling, frozen
``embedder``        `LlamaEmbedder`: lore text -> unit vectors
``json_gen``        `generate_json`: grammar-constrained JSON (batch content)
``errors``          `ModelError` and its kinds
==================  =====================================================

``llama_cpp`` is imported inside functions, never at module level, so importing
this package stays cheap; the CLI imports ``llama_cpp`` first when it will load
a model (see `app.cli`).
"""

from narrative.llm.chat_format import ChatFormat
from narrative.llm.embedder import LlamaEmbedder
from narrative.llm.errors import ContextOverflow, GrammarRefused, KvCacheFull, ModelError, StateError
from narrative.llm.json_gen import JSON_GENERATOR, JsonGeneration, generate_json, json_schema_gbnf, json_schema_grammar
from narrative.llm.model import Generation, LlamaModel, Sampler, StateBuffer, read_model_metadata, resolve_model_path
from narrative.llm.sampling import SamplingParams

__all__ = [
    "ChatFormat",
    "ContextOverflow",
    "Generation",
    "GrammarRefused",
    "JSON_GENERATOR",
    "JsonGeneration",
    "KvCacheFull",
    "LlamaEmbedder",
    "LlamaModel",
    "ModelError",
    "Sampler",
    "SamplingParams",
    "StateBuffer",
    "StateError",
    "generate_json",
    "json_schema_gbnf",
    "json_schema_grammar",
    "load_backend",
    "read_model_metadata",
    "resolve_model_path",
]


def load_backend() -> bool:
    """Import ``llama_cpp`` now; call it first at an entry point, before anything imports numpy
    (chromadb, gguf): on a CUDA build, numpy loaded first makes model loading crash in the CUDA
    backend. Returns False when llama-cpp-python is not installed (commands without a model still run)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True
