"""The batch over several OpenAI-compatible endpoints: `run_fanout`.

Same plan, manifest, outputs and report as `narrative.batch.runner.run_batch`
(its `plan_batch` and record format; the output folder's lock; per-item atomic
writes, output before record), so kill -9 resume and skip-unchanged work exactly
as in process. What differs is who generates:

- each endpoint gets ``concurrency`` worker threads; the workers take items from
  one shared queue, so a fast endpoint takes more of them;
- when an endpoint goes down (`narrative.backends.EndpointDown`: no answer after
  its retries), the item it held goes back to the front of the queue and that
  endpoint's workers stop; the others take the rest. An item is written only by
  the worker that finished it, so none is lost or written twice. An endpoint
  found down stays out for the rest of the run (rerun to use it again: finished
  items are skipped);
- when every endpoint is down, the items left are reported ``failed`` (not
  written) and a rerun picks them up;
- an output that is not valid JSON for the schema is retried on the same
  endpoint (``BatchOptions.retries``, next seed each time), then reported
  ``failed``, never written: a bad output is the model's, not the endpoint's
  health.

The report and each manifest record name the endpoint that made the item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path


from lore.schema import LoreEntry
from narrative.backends.http import EndpointDown, OpenAIEndpoint
from narrative.backends.quests import RemoteQuestGenerator
from narrative.batch.generator import BatchOptions, ItemResult
from narrative.batch.manifest import Manifest
from narrative.batch.report import BatchSummary, PlanItem, write_batch_report
from narrative.batch.runner import _read_output, _record, lock_output, plan_batch, select_specs
from narrative.files import atomic_write
from narrative.settings import ModelSettings

log = logging.getLogger(__name__)


class _Queue:
    """The items left, shared by every endpoint's workers. ``take`` blocks while other workers
    hold items that may come back; returns None when the work is over or the endpoint is out."""

    def __init__(self, items: list[PlanItem], urls: list[str]) -> None:
        self.pending: deque[PlanItem] = deque(items)
        self.in_flight = 0
        self.alive = set(urls)
        self.cv = threading.Condition()

    def take(self, url: str) -> PlanItem | None:
        with self.cv:
            while True:
                if url not in self.alive:
                    return None
                if self.pending:
                    self.in_flight += 1
                    return self.pending.popleft()
                if self.in_flight == 0:
                    return None
                self.cv.wait()

    def done(self) -> None:
        with self.cv:
            self.in_flight -= 1
            self.cv.notify_all()

    def give_back(self, item: PlanItem, url: str) -> None:
        """`url` went down holding `item`: the item goes first in line for the others."""
        with self.cv:
            self.in_flight -= 1
            self.pending.appendleft(item)
            self.alive.discard(url)
            self.cv.notify_all()


def run_fanout(
    specs_dir: Path,
    out: Path,
    model_settings: ModelSettings,
    options: BatchOptions,
    entries: Mapping[str, LoreEntry],
    *,
    force: bool = False,
    dry_run: bool = False,
    only: list[str] | None = None,
    progress: bool = True,
    on_item: Callable[[ItemResult], None] | None = None,
) -> BatchSummary:
    """Generate every spec under `specs_dir` into `out` on the endpoints of `model_settings`
    (``backend = "openai"``); arguments, files and errors as `narrative.batch.runner.run_batch`.

    Raises:
        narrative.backends.AllEndpointsDown: no endpoint answers at the start (the model id
            that keys the manifest cannot be read).
    """
    t0 = time.perf_counter()
    specs, problems = select_specs(specs_dir, only)
    gen = RemoteQuestGenerator(model_settings, options, entries)
    lock = None if dry_run else lock_output(out)
    try:
        endpoints = _healthy(gen)
        manifest = Manifest.load(out / "manifest.json")
        plan = plan_batch(specs, gen, manifest, out, force)
        spec_ids = {s.spec.id for s in specs}
        orphans = sorted(p.stem for p in (out / "quests").glob("*.json") if p.stem not in spec_ids) if not only else []
        if dry_run:
            results = [ItemResult(it.spec_file.spec.id, "skipped" if it.action == "skip" else it.action, it.reasons, error=it.error) for it in plan]
            return BatchSummary(results, plan, time.perf_counter() - t0, problems, orphans)

        done: dict[str, ItemResult] = {}
        write = threading.Lock()  # manifest, report, progress bar, on_item: one item at a time

        def summary() -> BatchSummary:
            return BatchSummary([done[it.spec_file.spec.id] for it in plan if it.spec_file.spec.id in done], plan, time.perf_counter() - t0, problems, orphans)

        def finish(it: PlanItem, r: ItemResult) -> None:
            with write:
                if it.action == "generate" and r.quest is not None and r.status != "failed":
                    data = r.quest.dump()
                    atomic_write(out / "quests" / f"{r.quest_id}.json", data)  # the output first ...
                    manifest.record(r.quest_id, _record(r, it.components, data) | {"endpoint": r.endpoint})  # ... then its record
                done[r.quest_id] = r
                if r.status != "skipped":
                    write_batch_report(out, summary(), manifest)  # a killed run still leaves a report
                if bar is not None and it.action == "generate":
                    bar.set_postfix_str(f"{r.quest_id} @ {r.endpoint or '-'}")
                    bar.update(1)
                if on_item is not None:
                    on_item(r)

        todo = [it for it in plan if it.action == "generate"]
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="quests", unit="quest")
        for it in plan:
            spec = it.spec_file.spec
            if it.action == "error":
                finish(it, ItemResult(spec.id, "failed", error=it.error))
            elif it.action == "skip":
                finish(it, ItemResult(spec.id, "skipped"))
            elif it.action == "adopt":
                data, quest = _read_output(out / "quests" / f"{spec.id}.json")  # type: ignore[misc]
                with write:
                    manifest.record(spec.id, _record(ItemResult(spec.id, "adopted", it.reasons, quest=quest), it.components, data))
                finish(it, ItemResult(spec.id, "adopted", it.reasons, quest=quest))

        queue = _Queue(todo, [ep.url for ep in endpoints])

        def worker(ep: OpenAIEndpoint) -> None:
            while (it := queue.take(ep.url)) is not None:
                spec = it.spec_file.spec
                try:
                    r = gen.generate(spec, endpoint=ep)
                except EndpointDown as exc:
                    log.warning("endpoint %s is down (%s): %s goes to the other endpoints", ep.url, exc, spec.id)
                    gen.router.mark_down(ep, str(exc))
                    queue.give_back(it, ep.url)
                    return
                except Exception as exc:  # a refused request or a bug: this item fails, the run goes on
                    log.exception("%s failed on %s", spec.id, ep.url)
                    r = ItemResult(spec.id, "failed", error=f"{type(exc).__name__}: {exc}", endpoint=ep.url)
                r.reasons = it.reasons
                try:
                    finish(it, r)
                finally:
                    queue.done()

        threads = [threading.Thread(target=worker, args=(ep,), name=f"fanout {ep.url} #{i}", daemon=True)
                   for ep in endpoints for i in range(ep.settings.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for it in queue.pending:  # every endpoint went down
            finish(it, ItemResult(it.spec_file.spec.id, "failed", it.reasons, error="every endpoint is down; rerun to generate it"))
        if bar is not None:
            bar.close()
        s = summary()
        write_batch_report(out, s, manifest)
        return s
    finally:
        gen.close()
        if lock is not None and lock.is_locked:
            lock.release()


def _healthy(gen: RemoteQuestGenerator) -> list[OpenAIEndpoint]:
    """The endpoints that answer ``GET /models`` now (the others are left out of this run, with a
    warning); warns when they list different models (their outputs would differ)."""
    up, lists = [], {}
    for ep, h in zip(gen.router.endpoints, gen.router.health()):
        if h.ok:
            up.append(ep)
            lists[ep.url] = h.models
        else:
            log.warning("endpoint %s is down at the start, left out of this run: %s", ep.url, h.error)
            gen.router.mark_down(ep, h.error or "down")
    if len({tuple(m) for m in lists.values()}) > 1:
        log.warning("the endpoints serve different models (%s): items may differ by endpoint", lists)
    return up
