"""Hot reload: re-index a lore file when a designer saves it, while the sidecar runs.

`watch_lore` is a coroutine the server runs beside its socket loop. It watches
the lore folder with ``watchfiles`` (inotify / FSEvents / ReadDirectoryChangesW
through the Rust ``notify`` crate; https://watchfiles.helpmanual.io/) or, when
that package is missing, by polling modification times every ``poll_s``. Each
changed lore file is re-indexed alone with `LoreIndex.sync_file`, through the
caller's `run_blocking` (the server's single worker thread, so a re-index never
runs during a turn's retrieval or decode):

* saved and valid: its entries are replaced -> event ``lore.changed``;
* saved but broken (YAML or schema error, duplicate id): the last good version
  stays in service -> event ``lore.error`` naming ``path:line`` (and a log warning);
* deleted: its entries leave the index -> event ``lore.changed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from lore.index import IndexReport, LoreIndex
from lore.loader import LORE_SUFFIXES, SKIPPED_NAMES, lore_paths

log = logging.getLogger(__name__)


@dataclass
class LoreEvent:
    """One hot-reload outcome. ``kind``: ``changed`` or ``error``; paths are relative to the lore folder."""

    kind: str
    files: list[str]
    report: IndexReport
    problems: list = field(default_factory=list)


def _is_lore(path: Path, root: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if any(part.startswith(".") for part in rel.parts):
        return False
    return path.suffix.lower() in LORE_SUFFIXES and path.name.lower() not in SKIPPED_NAMES


async def _changes_watchfiles(root: Path, stop: asyncio.Event, debounce_ms: int):
    from watchfiles import awatch

    async for changes in awatch(root, stop_event=stop, debounce=debounce_ms, step=50, recursive=True):
        yield {Path(p) for _, p in changes}


async def _changes_polling(root: Path, stop: asyncio.Event, poll_s: float):
    def snapshot() -> dict[Path, tuple[int, int]]:
        out = {}
        for p in lore_paths(root):
            try:
                st = p.stat()
            except OSError:
                continue
            out[p] = (st.st_mtime_ns, st.st_size)
        return out

    seen = snapshot()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=poll_s)
            return
        except asyncio.TimeoutError:
            pass
        now = snapshot()
        changed = {p for p in now.keys() | seen.keys() if now.get(p) != seen.get(p)}
        seen = now
        if changed:
            yield changed


async def watch_lore(
    root: Path,
    index: LoreIndex,
    run_blocking: Callable[..., Awaitable],
    on_event: Callable[[LoreEvent], Awaitable[None]],
    stop: asyncio.Event,
    *,
    debounce_ms: int = 300,
    poll_s: float = 0.5,
    force_polling: bool = False,
) -> None:
    """Watch `root` until `stop` is set; re-index each changed lore file and report through `on_event`.

    Args:
        root: the lore folder (the one the index was synced from).
        index: the live index.
        run_blocking: ``await run_blocking(fn, *args)`` runs a blocking call (e.g. in the server's worker thread).
        on_event: called once per changed file with a `LoreEvent`.
        stop: set to end the watch.
        debounce_ms: changes within this window are batched (editors write a file in several steps).
        poll_s: polling interval when ``watchfiles`` is unavailable or `force_polling`.
    """
    root = Path(root).resolve()
    source = None
    if not force_polling:
        try:
            import watchfiles  # noqa: F401

            source = _changes_watchfiles(root, stop, debounce_ms)
        except ImportError:
            log.info("watchfiles is not installed: polling %s every %.1f s", root, poll_s)
    if source is None:
        source = _changes_polling(root, stop, poll_s)
    log.info("watching lore folder %s for changes", root)
    async for paths in source:
        for path in sorted(p for p in paths if _is_lore(p.resolve() if p.exists() else p, root)):
            path = path.resolve() if path.exists() else path
            rel = path.relative_to(root).as_posix()
            try:
                report = await run_blocking(index.sync_file, root, path)
            except Exception as exc:  # an index failure must not end the watch
                log.exception("re-indexing %s failed", rel)
                from lore.loader import LoreProblem

                report = IndexReport(problems=[LoreProblem(path, 0, f"re-index failed: {type(exc).__name__}: {exc}")])
            if report.problems:
                for problem in report.problems:
                    log.warning("lore reload: %s (the last good version stays in service)", problem)
                await on_event(LoreEvent("error", [rel], report, list(report.problems)))
            else:
                log.info("lore reload: %s: %s", rel, report.summary())
                await on_event(LoreEvent("changed", [rel], report))
