"""The lore index: validated entries -> chunks -> embeddings -> a persistent chromadb collection.

Ingestion is idempotent (after LangChain's indexing API): chunk ids are content
hashes, unchanged chunks are skipped, chunks a file no longer produces are
deleted, and a file that fails to load keeps its last good chunks in service.
Every chunk's metadata names its source file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from lore.keywords import KeywordIndex
from lore.lexical import Bm25Index
from lore.loader import LoreFile, LoreFileError, LoreProblem, load_dir, load_file
from lore.render import entry_document
from lore.schema import Kind, LoreEntry

log = logging.getLogger(__name__)

Embedder = Callable[[Sequence[str]], list[list[float]]]
"""Texts -> unit-norm vectors, one per text (shape [n, dim])."""

INDEX_FORMAT = 1  # bump when chunking or metadata changes, so ids change and everything re-embeds


def embedder_id(embed: Embedder) -> str:
    """What identifies an embedder's vectors, stored with the index so a change of model is detected.

    ``embed.model_id`` when it has one; else its model file's name and size
    (``embed.path``, as `narrative`'s llama.cpp embedder has); else its class name.
    """
    mid = getattr(embed, "model_id", None)
    if mid:
        return str(mid)
    path = getattr(embed, "path", None)
    if path is not None:
        p = Path(path)
        return f"{p.name}:{p.stat().st_size}" if p.is_file() else p.name
    return type(embed).__qualname__


@dataclass
class IndexReport:
    """Counts from one `LoreIndex.sync` run. Chunk counts; ``files_changed`` counts files."""

    added: int = 0
    skipped: int = 0
    deleted: int = 0
    files_changed: int = 0
    files_removed: int = 0
    problems: list[LoreProblem] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.added} added, {self.skipped} skipped, {self.deleted} deleted chunks; "
            f"{self.files_changed} files changed, {self.files_removed} removed, {len(self.problems)} problems "
            f"in {self.seconds:.2f} s"
        )


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    entry_id: str
    source: str
    seq: int


def chunk_entry(entry: LoreEntry, source: str, max_words: int) -> list[Chunk]:
    """Split an entry into chunks of at most ~`max_words` words on paragraph boundaries.

    Each chunk starts with the entry's name so it embeds with its subject.
    Ids: sha256 of (format, source, entry JSON, chunk text), so any change to
    the entry re-embeds it and nothing else.
    """
    body = entry_document(entry)
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
    pieces: list[str] = []
    cur: list[str] = []
    words = 0
    for para in paragraphs:
        n = len(para.split())
        if cur and words + n > max_words:
            pieces.append("\n\n".join(cur))
            cur, words = [], 0
        cur.append(para)
        words += n
    if cur:
        pieces.append("\n\n".join(cur))
    # the (format, source, entry JSON) head is hashed once and copied per chunk: linear in the entry's
    # size (hashing the whole JSON for every chunk was quadratic), same ids as before
    head = hashlib.sha256(f"{INDEX_FORMAT}\0{source}\0{entry.model_dump_json()}\0".encode())
    chunks = []
    for i, piece in enumerate(pieces or [entry.name]):
        text = piece if i == 0 else f"{entry.name}: {piece}"
        h = head.copy()
        h.update(f"{i}\0{text}".encode())
        digest = h.hexdigest()[:32]
        chunks.append(Chunk(id=digest, text=text, entry_id=entry.id, source=source, seq=i))
    return chunks


class LoreIndex:
    """A persistent chromadb collection of lore chunks plus an in-memory catalog of entries.

    Args:
        state_dir: folder for the chromadb files (created if missing).
        embed: the embedder; must be the same model for indexing and querying.
        collection: collection name.
        chunk_words: chunk size target in words.
    """

    def __init__(self, state_dir: Path, embed: Embedder, collection: str = "lore", chunk_words: int = 200) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.embed = embed
        self.chunk_words = chunk_words
        state_dir.mkdir(parents=True, exist_ok=True)
        self._client = chromadb.PersistentClient(
            path=str(state_dir / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
        )
        self._col = self._client.get_or_create_collection(
            collection, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )
        self.embedder = embedder_id(embed)
        self.reindex_reason: str | None = None  # set when the stored vectors come from another embedder
        stored = (self._col.metadata or {}).get("embedder")
        if stored != self.embedder and (stored is not None or self._col.count()):
            self.reindex_reason = f"embedder changed from {stored or 'unrecorded'} to {self.embedder}: every chunk is re-embedded at the next sync"
            log.warning("lore index %s: %s", state_dir, self.reindex_reason)
        elif stored is None:
            self._col.modify(metadata={"embedder": self.embedder})
        self._collection_name = collection
        self.entries: dict[str, LoreEntry] = {}
        self.sources: dict[str, str] = {}  # entry id -> source file
        self.keywords = KeywordIndex()
        self.lexical = Bm25Index()
        self.version = 0  # bumped whenever the catalog changes (retrievers cache per version)
        self._load_catalog()

    # ---- catalog ---------------------------------------------------------

    def _load_catalog(self) -> None:
        got = self._col.get(where={"seq": 0}, include=["metadatas"])
        entries: dict[str, LoreEntry] = {}
        sources: dict[str, str] = {}
        for meta in got["metadatas"] or []:
            if meta and "entry" in meta:
                try:
                    entry = LoreEntry.model_validate_json(meta["entry"])
                except ValidationError as exc:
                    # stored by an older version that kept the field as free data (a `when:` written before
                    # conditions existed): the file itself reports the problem at the next sync
                    log.warning("lore index: entry from %s no longer validates, left out: %s", meta.get("source"), exc)
                    continue
                entries[entry.id] = entry
                sources[entry.id] = str(meta["source"])
        self.keywords.rebuild(entries.values())
        self.lexical.rebuild(entries.values())
        self.entries, self.sources = entries, sources  # swapped whole: readers in other threads see old or new
        self.version += 1

    def npcs(self) -> list[LoreEntry]:
        return sorted((e for e in self.entries.values() if e.kind == Kind.npc and not e.disabled), key=lambda e: e.id)

    def __len__(self) -> int:
        return self._col.count()

    # ---- ingestion -------------------------------------------------------

    def _existing_by_source(self) -> dict[str, set[str]]:
        got = self._col.get(include=["metadatas"])
        by_source: dict[str, set[str]] = {}
        for cid, meta in zip(got["ids"], got["metadatas"] or []):
            by_source.setdefault(str((meta or {}).get("source", "")), set()).add(cid)
        return by_source

    def sync(self, root: Path, progress: bool = False) -> IndexReport:
        """Bring the collection in line with the lore folder `root`.

        A file that fails validation keeps its previously indexed chunks; a file
        that no longer exists loses its chunks. Store writes happen before the
        in-memory catalog is refreshed.

        Raises:
            FileNotFoundError: `root` is not a folder.
        """
        import time

        t0 = time.perf_counter()
        files, problems = load_dir(root)
        report = IndexReport(problems=problems)
        if self.reindex_reason is not None:  # vectors of another model: drop them all, re-embed below
            self._client.delete_collection(self._collection_name)
            self._col = self._client.create_collection(
                self._collection_name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}, metadata={"embedder": self.embedder}
            )
            self.reindex_reason = None
        existing = self._existing_by_source()
        broken = {p.path.relative_to(root).as_posix() for p in problems if p.path.is_relative_to(root)}
        on_disk = {f.rel for f in files} | broken

        to_embed: list[tuple[Chunk, LoreFile, LoreEntry]] = []
        to_delete: list[str] = []
        for lf in files:
            chunks = [(c, e) for e in lf.entries for c in chunk_entry(e, lf.rel, self.chunk_words)]
            new_ids = {c.id for c, _ in chunks}
            old_ids = existing.get(lf.rel, set())
            report.skipped += len(new_ids & old_ids)
            stale = old_ids - new_ids
            fresh = [(c, lf, e) for c, e in chunks if c.id not in old_ids]
            if stale or fresh:
                report.files_changed += 1
            to_delete.extend(stale)
            to_embed.extend(fresh)
        for source, ids in existing.items():
            if source not in on_disk:
                report.files_removed += 1
                to_delete.extend(ids)

        self._upsert(to_embed, progress)
        report.added = len(to_embed)
        if to_delete:
            self._col.delete(ids=to_delete)
        report.deleted = len(to_delete)
        self._load_catalog()
        report.seconds = time.perf_counter() - t0
        return report

    def sync_file(self, root: Path, path: Path) -> IndexReport:
        """Re-index one lore file of the folder `root` (hot reload): O(size of that file), not of the folder.

        A file that no longer exists loses its entries and chunks. A file that
        fails to load keeps its last good version in service and the problem is
        returned in ``report.problems``. An entry id already defined by another
        file is a problem too (the file is not indexed).

        Raises:
            ValueError: `path` is not inside `root`.
        """
        import time

        t0 = time.perf_counter()
        path = Path(path)
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
        report = IndexReport()
        old = self._col.get(where={"source": rel}, include=[])
        old_ids = set(old["ids"])
        if not path.exists():
            if old_ids:
                self._col.delete(ids=sorted(old_ids))
                report.deleted = len(old_ids)
                report.files_removed = 1
            self._update_catalog(rel, [])
            report.seconds = time.perf_counter() - t0
            return report
        try:
            lf = load_file(path, Path(root))
        except LoreFileError as exc:
            report.problems = exc.problems
            report.seconds = time.perf_counter() - t0
            return report
        clash = [e.id for e in lf.entries if e.id in self.sources and self.sources[e.id] != rel]
        if clash:
            report.problems = [LoreProblem(path, 2, f"duplicate id {clash[0]!r}, already defined in {self.sources[clash[0]]}")]
            report.seconds = time.perf_counter() - t0
            return report
        chunks = [(c, e) for e in lf.entries for c in chunk_entry(e, lf.rel, self.chunk_words)]
        new_ids = {c.id for c, _ in chunks}
        fresh = [(c, lf, e) for c, e in chunks if c.id not in old_ids]
        stale = old_ids - new_ids
        report.skipped = len(new_ids & old_ids)
        self._upsert(fresh, progress=False)
        report.added = len(fresh)
        if stale:
            self._col.delete(ids=sorted(stale))
        report.deleted = len(stale)
        report.files_changed = int(bool(fresh or stale))
        self._update_catalog(rel, list(lf.entries))
        report.seconds = time.perf_counter() - t0
        return report

    def _update_catalog(self, source: str, entries: list[LoreEntry]) -> None:
        """Replace the catalog entries of one source file (copy-on-write, then one swap)."""
        gone = [eid for eid, src in self.sources.items() if src == source]
        new_entries = dict(self.entries)
        new_sources = dict(self.sources)
        for eid in gone:
            new_entries.pop(eid, None)
            new_sources.pop(eid, None)
            self.keywords.remove(eid)
            self.lexical.remove(eid)
        for e in entries:
            new_entries[e.id] = e
            new_sources[e.id] = source
            self.keywords.add(e)
            self.lexical.add(e)
        self.entries, self.sources = new_entries, new_sources
        self.version += 1

    def _upsert(self, items: list[tuple[Chunk, LoreFile, LoreEntry]], progress: bool, batch: int = 32) -> None:
        bar = None
        if progress and items:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="embedding lore", unit="chunk")
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            vectors = self.embed([c.text for c, _, _ in part])
            metas = []
            for c, lf, e in part:
                meta = {"source": lf.rel, "digest": lf.digest, "entry_id": e.id, "kind": e.kind.value, "seq": c.seq}
                if c.seq == 0:
                    meta["entry"] = e.model_dump_json()
                metas.append(meta)
            self._col.upsert(ids=[c.id for c, _, _ in part], embeddings=vectors, documents=[c.text for c, _, _ in part], metadatas=metas)
            if bar:
                bar.update(len(part))
        if bar:
            bar.close()

    # ---- queries ---------------------------------------------------------

    def nearest(self, text: str, k: int) -> list[tuple[str, float]]:
        """Entry ids of the `k` nearest chunks to `text`, best first, as (entry id, cosine similarity).

        One entry appears once, with its best chunk's similarity.
        """
        n = self._col.count() if k > 0 and self.reindex_reason is None else 0  # another model's vectors are not comparable
        if n == 0:
            return []
        [vec] = self.embed([text])
        res = self._col.query(query_embeddings=[vec], n_results=min(k, n), include=["metadatas", "distances"])
        best: dict[str, float] = {}
        for meta, dist in zip(res["metadatas"][0], res["distances"][0]):
            eid = str(meta["entry_id"])
            sim = 1.0 - float(dist)
            if eid not in best or sim > best[eid]:
                best[eid] = sim
        return sorted(best.items(), key=lambda kv: -kv[1])

    def similarity(self, text: str, entry_id: str) -> float | None:
        """Cosine similarity of `text` to the entry's best chunk, or None when the entry has no chunks."""
        got = self._col.get(where={"entry_id": entry_id}, include=["embeddings"])
        embs = got.get("embeddings")
        if embs is None or len(embs) == 0:
            return None
        [vec] = self.embed([text])
        return max(float(sum(a * b for a, b in zip(vec, e))) for e in embs)

    def describe(self) -> str:
        return json.dumps({"chunks": len(self), "entries": len(self.entries), "npcs": [e.id for e in self.npcs()]})
