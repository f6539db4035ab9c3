"""The batch job over a folder of specs: `plan_batch`, then `run_batch`.

`run_batch` plans first (which items are up to date, which must be generated
and why), then generates with a progress bar, writing each output atomically
and recording it in the manifest right after. A rerun after a crash skips every
item recorded (or whose output already carries the current key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from lore.schema import LoreEntry
from narrative.batch.generator import BatchOptions, ItemResult, QuestGenerator
from narrative.batch.manifest import Components, Manifest, reasons, sha256_bytes
from narrative.batch.output import QuestText
from narrative.batch.prompt import UnknownEntry
from narrative.batch.report import BatchSummary, PlanItem, write_batch_report
from narrative.batch.spec import SpecFile, _key_lines, load_specs
from narrative.files import atomic_write, remove_stale_temps
from narrative.settings import ModelSettings

log = logging.getLogger(__name__)


class OutputLocked(RuntimeError):
    """Another batch run holds the output folder's lock."""


class UnknownQuest(ValueError):
    """``only`` names a quest id that no spec under the specs folder has."""


def _read_output(path: Path) -> tuple[bytes, QuestText] | None:
    try:
        data = path.read_bytes()
        return data, QuestText.model_validate_json(data)
    except (OSError, ValueError):
        return None


def _line_of(path: Path, loc: tuple) -> int:
    """1-based line of the YAML path `loc` in the spec file `path` (0 when unknown)."""
    try:
        lines = _key_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return 0
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 0


def plan_batch(specs: list[SpecFile], gen: QuestGenerator, manifest: Manifest, out: Path, force: bool) -> list[PlanItem]:
    """Decide per spec: ``skip`` (recorded, output intact), ``adopt`` (output already carries the
    current key but the manifest missed it: a crash between the two writes), ``generate`` (with
    reasons) or ``error`` (the spec names unknown lore)."""
    plan = []
    for sf in specs:
        spec = sf.spec
        try:
            comps = gen.components(spec)
        except UnknownEntry as exc:
            plan.append(PlanItem(sf, "error", [], error=f"{sf.path}:{_line_of(sf.path, exc.loc)}: {exc.args[0]}"))
            continue
        path = out / "quests" / f"{spec.id}.json"
        record = manifest.items.get(spec.id)
        why = reasons(record.get("components") if record else None, comps)
        on_disk = _read_output(path)
        if force:
            plan.append(PlanItem(sf, "generate", ["forced"] + [w for w in why if w != "new"], comps))
        elif not why and on_disk and sha256_bytes(on_disk[0]) == record.get("sha256"):
            plan.append(PlanItem(sf, "skip", [], comps))
        elif on_disk and on_disk[1].meta.key == comps.key:
            plan.append(PlanItem(sf, "adopt", ["output present, manifest record missing"], comps))
        else:
            if not why:
                why = ["output missing" if on_disk is None and not path.exists() else "output corrupt or edited"]
            plan.append(PlanItem(sf, "generate", why, comps))
    return plan


def _record(item: ItemResult, comps: Components, data: bytes) -> dict:
    return {
        "key": comps.key,
        "components": comps.as_dict(),
        "output": f"quests/{item.quest_id}.json",
        "sha256": sha256_bytes(data),
        "status": item.status,
        "findings": len(item.findings),
        "attempts": len(item.attempts),
        "tokens": {"prompt": item.prompt_tokens, "completion": item.completion_tokens},
        "timings_ms": {"prefill": round(item.prefill_ms, 1), "decode": round(item.decode_ms, 1)},
    }


def select_specs(specs_dir: Path, only: list[str] | None) -> tuple[list[SpecFile], list[str]]:
    """The specs under `specs_dir` (those with an id in `only`, when given) and the spec files that did not load.

    Raises:
        FileNotFoundError: `specs_dir` does not exist.
        UnknownQuest: `only` names an id no spec has (the message lists the known ids and the files that did not load).
    """
    specs, problems = load_specs(specs_dir)
    if only:
        known = sorted(s.spec.id for s in specs)
        unknown = [q for q in only if q not in known]
        if unknown:
            msg = f"--only: no quest spec with id {', '.join(map(repr, unknown))} in {specs_dir} (known: {', '.join(known) or 'none'})"
            if problems:
                msg += "; these spec files did not load:\n" + "\n".join(problems)
            raise UnknownQuest(msg)
        specs = [s for s in specs if s.spec.id in set(only)]
    return specs, problems


def lock_output(out: Path) -> FileLock:
    """Take the output folder's lock (filelock: an OS lock on POSIX and Windows, freed when the process
    dies) and remove temp files a killed run left. The caller releases it.

    Raises:
        OutputLocked: another run holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputLocked(f"{out} is being written by another batch run") from None
    remove_stale_temps(out)
    remove_stale_temps(out / "quests")
    return lock


def run_batch(
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
    parallel: int = 1,
    batched: bool | None = None,
) -> BatchSummary:
    """Generate every spec under `specs_dir` into `out` (``quests/<id>.json``, ``manifest.json``,
    ``report.md``, ``report.json``).

    Args:
        model_settings: the batch model (the sidecar's ``batch_model`` settings).
        entries: the lore catalog (entry id -> entry): ``LoreIndex.entries`` after a
            sync (``app.runtime.sync_lore``, what the CLI does) or
            ``lore.loader.load_catalog`` (the files alone, no embedding).
        only: quest ids to consider (others are left alone).
        on_item: called after each item is finished (written and recorded) or failed.
        parallel: items decoded at once as sequences of one batched context (`narrative.batch.generator`:
            texts differ from ``parallel`` 1, which is the one-at-a-time path; the manifest tells them apart).
        batched: force the batched decoder on (also at ``parallel`` 1) or off; None: on when ``parallel`` > 1.

    Raises:
        FileNotFoundError: `specs_dir` or the lore folder does not exist.
        OutputLocked: another run is writing to `out`.
        UnknownQuest: `only` names a quest id no spec has.
        narrative.llm.ModelError: the model cannot be loaded.
    """
    t0 = time.perf_counter()
    specs, problems = select_specs(specs_dir, only)
    lock = None if dry_run else lock_output(out)  # a dry run only reads `out` (it may not even exist yet)
    try:
        manifest = Manifest.load(out / "manifest.json")
        gen = QuestGenerator(model_settings, options, entries, parallel=parallel, batched=batched)
        plan = plan_batch(specs, gen, manifest, out, force)
        spec_ids = {s.spec.id for s in specs}
        orphans = sorted(p.stem for p in (out / "quests").glob("*.json") if p.stem not in spec_ids) if not only else []
        results: list[ItemResult] = []
        if dry_run:
            for it in plan:
                results.append(ItemResult(it.spec_file.spec.id, "skipped" if it.action == "skip" else it.action, it.reasons, error=it.error))
            return BatchSummary(results, plan, time.perf_counter() - t0, problems, orphans)
        todo = [it for it in plan if it.action == "generate"]
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="quests" + (f" (x{parallel})" if parallel > 1 else ""), unit="quest")
        tokens_done = 0
        decode_s = 0.0
        done_at: dict[int, ItemResult] = {}  # plan index -> result
        write_lock = threading.Lock()  # output files, manifest and report are written by one item at a time

        def finish(i: int, r: ItemResult) -> None:
            nonlocal tokens_done, decode_s
            it = plan[i]
            spec = it.spec_file.spec
            with write_lock:
                if it.action == "generate":
                    assert it.components is not None
                    r.reasons = it.reasons
                    if r.quest is not None and r.status != "failed":
                        data = r.quest.dump()
                        try:
                            atomic_write(out / "quests" / f"{spec.id}.json", data)  # the output first ...
                        except OSError as exc:  # disk full, read-only folder: this item fails, its old file stays
                            r.status, r.error = "failed", f"cannot write quests/{spec.id}.json: {exc.strerror or exc}"
                            log.error("%s: %s", spec.id, r.error)
                        else:
                            manifest.record(spec.id, _record(r, it.components, data))  # ... then its record
                    tokens_done += r.completion_tokens
                    decode_s += r.decode_ms / 1000
                    if bar is not None:
                        bar.set_postfix_str(f"{tokens_done / decode_s if decode_s else 0:.0f} tok/s, {spec.id}")
                        bar.update(1)
                done_at[i] = r
                if it.action != "skip":  # a killed run still leaves a report of what it did
                    so_far = [done_at[k] for k in sorted(done_at)]
                    write_batch_report(out, BatchSummary(so_far, plan, time.perf_counter() - t0, problems, orphans), manifest)
            if on_item is not None:
                on_item(r)

        pending = []
        for i, it in enumerate(plan):
            spec = it.spec_file.spec
            if it.action == "error":
                finish(i, ItemResult(spec.id, "failed", error=it.error))
            elif it.action == "skip":
                finish(i, ItemResult(spec.id, "skipped"))
            elif it.action == "adopt":
                assert it.components is not None
                data, quest = _read_output(out / "quests" / f"{spec.id}.json")  # type: ignore[misc]
                r = ItemResult(spec.id, "adopted", it.reasons, quest=quest)
                manifest.record(spec.id, _record(r, it.components, data))
                finish(i, r)
            else:
                pending.append(i)
        if parallel > 1 and len(pending) > 1:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            # each worker blocks on its item's attempts while the batched engine decodes all of them together
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="quest") as pool:
                futures = {pool.submit(gen.generate, plan[i].spec_file.spec): i for i in pending}
                for f in as_completed(futures):
                    finish(futures[f], f.result())
        else:
            for i in pending:
                finish(i, gen.generate(plan[i].spec_file.spec))
        results = [done_at[k] for k in sorted(done_at)]
        if bar is not None:
            bar.close()
        summary = BatchSummary(results, plan, time.perf_counter() - t0, problems, orphans)
        write_batch_report(out, summary, manifest)
        gen.close()
        return summary
    finally:
        if lock is not None and lock.is_locked:
            lock.release()
