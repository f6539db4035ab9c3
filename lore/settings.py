"""Settings of lore indexing and selection (``[lore]`` in the sidecar's settings file).

`lore.retrieve.Retriever` takes its defaults from here, so a retriever built
without settings selects exactly as the sidecar does.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LoreSettings(BaseModel):
    """Lore indexing and retrieval."""

    model_config = ConfigDict(extra="forbid")  # a typo in a settings file is an error, not a silent no-op

    dir: Path = Field(Path("samples/lore"), description="Folder of lore files (Markdown + YAML front matter).")
    collection: str = Field("lore", description="chromadb collection name.")
    chunk_tokens: int = Field(120, ge=32, le=2048, description="Target chunk size in words (approx. tokens).")
    token_budget: int = Field(400, ge=0, description="Tokens of per-turn lore injected into a dialogue turn.")
    prefix_budget: int = Field(700, ge=0, description="Tokens of static lore (scene, constant, prefix entries) in an NPC's stable prefix, besides its card.")
    vector_k: int = Field(8, ge=0, le=100, description="Nearest chunks fetched from the vector store per turn.")
    min_similarity: float = Field(0.0, ge=-1.0, le=1.0, description="Cosine similarity below which vector hits are ignored.")
    scan_depth: int = Field(2, ge=0, description="Earlier player lines scanned for keys besides the current one.")
    max_recursion: int = Field(2, ge=0, le=10, description="Recursion steps: keys in the text of included entries trigger further entries, this many steps deep; 0 disables (SillyTavern: Max Recursion Steps).")
    vector_weight: float = Field(1.0, ge=0.0, description="Weight of the embedding ranking in the reciprocal rank fusion of similarity hits; 0 brings no vector hit in. 1.0 measured best with the bundled all-MiniLM-L6-v2 (benchmarks/retrieval_quality.py --compare: reworded questions, hybrid top-3 0.97 vs 0.78 at 0).")
    lexical_weight: float = Field(1.0, ge=0.0, description="Weight of the BM25 ranking over entry text in the same fusion.")
    min_partial_tokens: int = Field(64, ge=1, description="An entry named in the player's line (or larger than token_budget) that does not fit whole is trimmed to its leading sentences when at least this many tokens of budget are left.")
