"""Wires settings into running parts: models, the lore index, the retriever, the dialogue engine, the service."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from lore.index import IndexReport, LoreIndex
from lore.retrieve import Retriever
from lore.schema import LoreEntry
from narrative.backends import Router, quest_generator
from narrative.backends.dialogue import RemoteDialogueEngine, RemoteModel
from narrative.batch.generator import BatchOptions, QuestGenerator
from narrative.dialogue import DialogueEngine
from narrative.llm import LlamaEmbedder, LlamaModel
from narrative.presets import ensure_fits
from narrative.service import NarrativeService

log = logging.getLogger(__name__)

QUESTS_DIR = Path("samples/quests")
"""Where the sidecar looks up quest ids of ``generate`` requests."""


def open_index(settings: Settings, embedder: LlamaEmbedder | None = None) -> tuple[LoreIndex, LlamaEmbedder]:
    """Open the persistent lore index under ``state_dir`` with the configured embedder."""
    embedder = embedder or LlamaEmbedder(settings.embedding)
    index = LoreIndex(settings.state_dir, embedder, settings.lore.collection, settings.lore.chunk_tokens)
    return index, embedder


def sync_lore(settings: Settings) -> dict[str, LoreEntry]:
    """Open the lore index, sync ``settings.lore.dir`` into it, return the catalog (entry id -> entry).

    Lore files with problems are logged; their last indexed version stays in use.

    Raises:
        FileNotFoundError: the lore folder does not exist.
    """
    index, _ = open_index(settings)
    report = index.sync(settings.lore.dir)
    for p in report.problems:
        log.warning("%s", p)
    return dict(index.entries)


@dataclass
class Runtime:
    settings: Settings
    model: LlamaModel | RemoteModel
    embedder: LlamaEmbedder
    index: LoreIndex
    retriever: Retriever
    engine: DialogueEngine | RemoteDialogueEngine
    report: IndexReport | None

    def model_names(self) -> dict[str, str]:
        return {"dialogue": self.model.name, "embedding": self.embedder.path.name}

    def service(self, quests: QuestGenerator | None = None, specs_dir: Path | None = None) -> NarrativeService:
        """The service the bridge serves: this runtime's engine, and `quests` (default: a generator on
        ``batch_model`` over the live lore catalog, in process or on its endpoints; an in-process
        model loads on the first ``generate``)."""
        if quests is None:
            quests = quest_generator(self.settings.batch_model, BatchOptions(), self.index.entries)
        return NarrativeService(self.engine, models=self.model_names(), quests=quests, specs_dir=specs_dir or QUESTS_DIR)


def build_runtime(settings: Settings, lore_dir: Path | None = None, sync: bool = True, progress: bool = False) -> Runtime:
    """Load the models, open (and by default sync) the lore index, and build the dialogue engine.

    Raises:
        narrative.llm.ModelError: a model cannot be loaded (or does not fit: `narrative.presets.DoesNotFit`).
        FileNotFoundError: the lore folder does not exist (when syncing).
    """
    if settings.dialogue_model.backend == "llama.cpp":
        ensure_fits(settings.dialogue_model, settings.context.memory_budget_gib)  # refuse before loading anything, with the numbers
    index, embedder = open_index(settings)
    report = None
    if sync:
        report = index.sync(lore_dir or settings.lore.dir, progress=progress)
        for problem in report.problems:
            log.warning("%s", problem)
        log.info("lore index: %s", report.summary())
    ms = settings.dialogue_model
    if ms.backend == "openai":  # the model is behind HTTP endpoints; lore and history stay here
        router = Router.from_settings("dialogue", ms.endpoints)
        model = RemoteModel.of(router, ms.remote_n_ctx)
        retriever = Retriever(index, model.count_tokens, settings.lore)
        engine = RemoteDialogueEngine(router, retriever, settings.sampling, model, ms.seed)
    else:
        model = LlamaModel(ms)
        retriever = Retriever(index, model.count_tokens, settings.lore)
        engine = DialogueEngine(model, retriever, settings.sampling, settings.context, settings.state_dir, settings.dialogue)
    retriever.warm()
    return Runtime(settings, model, embedder, index, retriever, engine, report)
