"""Wires settings into running parts: models, the lore index, the retriever, the dialogue engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lore.index import IndexReport, LoreIndex
from lore.retrieve import Retriever
from narrative.dialogue import DialogueEngine
from narrative.models import LlamaEmbedder, LlamaModel
from narrative.presets import ensure_fits
from narrative.settings import Settings

log = logging.getLogger(__name__)


def open_index(settings: Settings, embedder: LlamaEmbedder | None = None) -> tuple[LoreIndex, LlamaEmbedder]:
    """Open the persistent lore index under ``state_dir`` with the configured embedder."""
    embedder = embedder or LlamaEmbedder(settings.embedding)
    index = LoreIndex(settings.state_dir, embedder, settings.lore.collection, settings.lore.chunk_tokens)
    return index, embedder


@dataclass
class Runtime:
    settings: Settings
    model: LlamaModel
    embedder: LlamaEmbedder
    index: LoreIndex
    retriever: Retriever
    engine: DialogueEngine
    report: IndexReport | None

    def model_names(self) -> dict[str, str]:
        return {"dialogue": self.model.name, "embedding": self.embedder.path.name}


def build_runtime(settings: Settings, lore_dir: Path | None = None, sync: bool = True, progress: bool = False) -> Runtime:
    """Load the models, open (and by default sync) the lore index, and build the dialogue engine.

    Raises:
        narrative.models.ModelError: a model cannot be loaded.
        FileNotFoundError: the lore folder does not exist (when syncing).
    """
    ensure_fits(settings.dialogue_model, settings.context.memory_budget_gib)  # refuse before loading anything, with the numbers
    index, embedder = open_index(settings)
    report = None
    if sync:
        report = index.sync(lore_dir or settings.lore.dir, progress=progress)
        for problem in report.problems:
            log.warning("%s", problem)
        log.info("lore index: %s", report.summary())
    model = LlamaModel(settings.dialogue_model)
    retriever = Retriever.from_settings(index, model.count_tokens, settings.lore)
    retriever.warm()
    engine = DialogueEngine(model, retriever, settings.sampling, settings.context, settings.state_dir)
    return Runtime(settings, model, embedder, index, retriever, engine, report)
