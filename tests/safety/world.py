"""A one-NPC world for the safety tests: the real SmolLM2 model and the real dialogue engine,
with a fake retriever (`OneNpcRetriever`, named as one) instead of the chromadb index, so a
sidecar starts in seconds on a loaded machine. Turns are real llama.cpp decodes (short prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lore.retrieve import Pick, Selection, UnknownNpc
from lore.schema import Kind, LoreEntry, NpcCard

NPC = "mira"

MIRA = LoreEntry(
    id=NPC, kind=Kind.npc, name="Mira", text="Mira keeps the forge at Saltmere.",
    npc=NpcCard(persona="The village smith, gruff and kind.", voice="Short sentences."),
)


@dataclass
class _Index:  # a fake: what the engine and the service read of a LoreIndex
    version: int = 1
    entries: dict = field(default_factory=lambda: {NPC: MIRA})
    sources: dict = field(default_factory=lambda: {NPC: "npcs/mira.md"})

    def npcs(self) -> list[LoreEntry]:
        return [MIRA]

    def nearest(self, text: str, k: int) -> list[tuple[str, float]]:
        return [(NPC, 0.5)]


@dataclass
class OneNpcRetriever:
    """A fake retriever: one NPC (`MIRA`), no per-turn lore."""

    index: _Index = field(default_factory=_Index)
    vector_k: int = 4
    prefix_budget: int = 400

    def tokens(self, entry: LoreEntry) -> int:
        return len(entry.text.split())

    def npc(self, npc_id: str) -> LoreEntry:
        if npc_id != NPC:
            raise UnknownNpc(f"unknown NPC {npc_id!r} (known: {NPC})")
        return MIRA

    def prefix(self, npc_id: str) -> list[Pick]:
        return [Pick(entry=self.npc(npc_id), score=1.0, why="card", tokens=20)]

    def select(self, npc_id, line, history=(), exclude=(), state=None):
        self.npc(npc_id)
        return Selection()


def make_model(n_ctx: int = 2048, n_seq_max: int = 1):
    from narrative.llm import LlamaModel
    from narrative.settings import ModelSettings

    return LlamaModel(ModelSettings(n_ctx=n_ctx, n_seq_max=n_seq_max, n_threads=1))


def make_service(model=None, state_dir: Path | None = None, **context):
    """A `NarrativeService` over the one-NPC world (`model`: default a fresh SmolLM2, 2048 tokens)."""
    from narrative.dialogue import DialogueEngine
    from narrative.service import NarrativeService
    from narrative.settings import ContextSettings, SamplingSettings

    model = model or make_model()
    engine = DialogueEngine(model, OneNpcRetriever(), SamplingSettings(max_tokens=8, temperature=0.0), ContextSettings(**context), state_dir)
    return NarrativeService(engine, models={"dialogue": model.name})
