"""The batch job (`run_batch`) and the one-item job the bridge uses (`QuestGenerator.generate`).

`run_batch` plans first (which items are up to date, which must be generated
and why), then generates with a progress bar, writing each output atomically
and recording it in the manifest right after. A rerun after a crash skips every
item recorded (or whose output already carries the current key).
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from lore.schema import LoreEntry
from narrative.batch.checks import Finding, check_quest, errors, lore_vocabulary
from narrative.batch.manifest import (
    Components,
    Manifest,
    atomic_write,
    canonical_digest,
    model_fingerprint,
    reasons,
    remove_stale_temps,
    sha256_bytes,
)
from narrative.batch.output import OutputInvalid, QuestMeta, QuestText, generation_schema, validate_generation
from narrative.batch.prompt import PROMPT_VERSION, QuestPrompt, UnknownEntry, build_prompt
from narrative.batch.report import write_batch_report
from narrative.batch.spec import QuestSpec, SpecError, SpecFile, _key_lines, load_specs
from narrative.models import JSON_GENERATOR
from narrative.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


class BatchOptions(BaseModel):
    """Generation options of a batch; all of them are part of every item's key.

    Defaults suit SmolLM2-135M: a moderate temperature (greedy decoding loops on
    small models), a mild repeat penalty, and a token bound above the sum of the
    default character limits (~2,000 chars / ~3.5 chars per token).
    """

    seed: int | None = Field(None, description="Sampling seed; None uses batch_model.seed. Attempt n uses seed + n - 1.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0)
    max_tokens: int = Field(700, ge=16, le=8192, description="Sampled tokens per attempt; a text cut here fails validation.")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts after an invalid output (or error findings, see retry_on_findings).")
    retry_on_findings: bool = Field(True, description="Also retry when post-checks find errors (must_mention, placeholder...); the attempt with the fewest errors is kept.")
    max_chars: int | None = Field(None, ge=8, description="Caps every field's character limit (tests use a small cap for short generations).")
    lore_budget: int = Field(1200, ge=0, description="Approximate tokens of lore in a prompt (named entries always go in).")
    strict: bool = Field(False, description="Treat an item with error findings left as failed (not written).")

    def shaping(self) -> dict:
        """The options that shape the text (all but `strict`, which only decides what is written)."""
        return self.model_dump(exclude={"strict", "seed"})


@dataclass
class Attempt:
    n: int
    seed: int
    quest: QuestText | None
    findings: list[Finding]
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    prefill_ms: float
    decode_ms: float


@dataclass
class ItemResult:
    """The outcome of one item. ``status``: ok | flagged (written, error findings left) | failed | skipped | adopted."""

    quest_id: str
    status: str
    reasons: list[str] = field(default_factory=list)
    quest: QuestText | None = None
    findings: list[Finding] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)

    @property
    def prefill_ms(self) -> float:
        return sum(a.prefill_ms for a in self.attempts)

    @property
    def decode_ms(self) -> float:
        return sum(a.decode_ms for a in self.attempts)


class QuestGenerator:
    """Lore catalog + the batch model (loaded on first use) -> validated quests.

    Args:
        settings: ``batch_model`` picks the model; ``lore``/``state_dir`` the index.
        options: generation options.
        entries: the lore catalog (entry id -> entry), e.g. ``LoreIndex.entries`` after a sync.
    """

    def __init__(self, settings: Settings, options: BatchOptions, entries: Mapping[str, LoreEntry]) -> None:
        from narrative.models import resolve_model_path

        self.settings = settings
        self.options = options
        self.entries = entries
        self.model_settings: ModelSettings = settings.batch_model
        self.model_path = resolve_model_path(self.model_settings.path)
        self._fingerprint: str | None = None
        self._model = None
        self._vocab: set[str] | None = None

    def seed_of(self, opts: BatchOptions | None = None) -> int:
        opts = opts or self.options
        return opts.seed if opts.seed is not None else self.model_settings.seed

    @property
    def model(self):
        """The batch `LlamaModel`, loaded on first use (its own llama.cpp instance; the dialogue model stays free)."""
        if self._model is None:
            from narrative.models import LlamaModel

            t = time.perf_counter()
            self._model = LlamaModel(self.model_settings)
            log.info("batch model %s loaded in %.2f s", self._model.name, time.perf_counter() - t)
        return self._model

    def close(self) -> None:
        if self._model is not None and hasattr(self._model, "close"):
            self._model.close()
        self._model = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model_path)
        return self._fingerprint

    def settings_digest(self, opts: BatchOptions | None = None) -> str:
        """Digest of what shapes the text besides spec, lore, model file and seed.

        Model settings that change logits (batch split, KV types, flash attention,
        context size); not ``n_threads`` (ggml's CPU matmuls split rows per thread,
        so the thread count does not change results), ``n_seq_max`` (each sequence
        has its own KV cells; generation resets the context) nor the path (the
        file's fingerprint stands for it).
        """
        ms = self.model_settings.model_dump(exclude={"path", "n_threads", "seed", "n_gpu_layers", "n_seq_max"})
        return canonical_digest({"model": ms, "options": (opts or self.options).shaping()})

    def vocabulary(self) -> set[str]:
        if self._vocab is None:
            self._vocab = lore_vocabulary(self.entries.values())
        return self._vocab

    def prompt(self, spec: QuestSpec, opts: BatchOptions | None = None) -> QuestPrompt:
        return build_prompt(spec, self.entries, (opts or self.options).lore_budget)

    def components(self, spec: QuestSpec, prompt: QuestPrompt | None = None, opts: BatchOptions | None = None) -> Components:
        """The manifest components of `spec`. Raises `UnknownEntry`."""
        prompt = prompt or self.prompt(spec, opts)
        lore = {eid: canonical_digest(self.entries[eid].model_dump(mode="json")) for eid in prompt.lore_ids}
        return Components(
            spec=spec.digest(),
            lore=lore,
            model=self.fingerprint(),
            settings=self.settings_digest(opts),
            prompt_version=PROMPT_VERSION,
            generator=JSON_GENERATOR,
            seed=self.seed_of(opts),
        )

    def generate(self, spec: QuestSpec, opts: BatchOptions | None = None) -> ItemResult:
        """Generate one quest: bounded attempts until the output validates (and, with
        ``retry_on_findings``, has no error findings). Never raises for a bad output:
        the result's status is ``failed`` with the reasons.

        Raises:
            UnknownEntry: the spec names an entry the lore does not have.
            narrative.models.ModelError: the model cannot be loaded.
        """
        from narrative.models import generate_json

        opts = opts or self.options
        prompt = self.prompt(spec, opts)
        comps = self.components(spec, prompt, opts)
        key = comps.key
        model = self.model
        tokens = model.tokenize(model.format.system(prompt.system) + model.format.user(prompt.user) + model.format.assistant_open)
        tokens = model.bos() + tokens
        schema = generation_schema(spec, opts.max_chars)
        budget = min(opts.max_tokens, model.n_ctx - len(tokens) - 64)
        result = ItemResult(spec.id, "failed")
        if budget < 16:
            result.error = f"prompt of {len(tokens)} tokens leaves no room in n_ctx {model.n_ctx}"
            return result
        vocab = self.vocabulary() | lore_vocabulary([], spec)
        best: Attempt | None = None
        for n in range(1, opts.retries + 2):
            seed = self.seed_of(opts) + n - 1
            g = generate_json(
                model, tokens, schema, max_tokens=budget, temperature=opts.temperature, seed=seed,
                top_p=opts.top_p, top_k=opts.top_k, repeat_penalty=opts.repeat_penalty,
            )
            meta = QuestMeta(key=key, model=model.name, seed=seed, prompt_version=PROMPT_VERSION, attempt=n)
            try:
                if g.finish_reason != "stop":
                    raise OutputInvalid(f"cut at max_tokens={budget} after {g.completion_tokens} tokens")
                quest = validate_generation(g.text, spec, meta, opts.max_chars)
                findings = check_quest(quest, spec, vocab, opts.max_chars)
                err = None
            except OutputInvalid as exc:
                quest, findings, err = None, [], exc.reason
                log.info("%s attempt %d invalid: %s", spec.id, n, err)
            att = Attempt(n, seed, quest, findings, err, g.prompt_tokens, g.completion_tokens, g.prefill_ms, g.decode_ms)
            result.attempts.append(att)
            if quest is not None and (best is None or errors(findings) < errors(best.findings)):
                best = att
            if quest is not None and (errors(findings) == 0 or not opts.retry_on_findings):
                break
        if best is None:
            result.error = "; ".join(f"attempt {a.n}: {a.error}" for a in result.attempts)
            return result
        result.quest, result.findings = best.quest, best.findings
        result.status = "flagged" if errors(best.findings) else "ok"
        if result.status == "flagged" and opts.strict:
            result.status, result.error = "failed", f"{errors(best.findings)} error findings left (strict)"
        return result


# ---- the batch ----------------------------------------------------------------


@dataclass
class PlanItem:
    spec_file: SpecFile
    action: str  # generate | skip | adopt | error
    reasons: list[str]
    components: Components | None = None
    error: str | None = None


@dataclass
class BatchSummary:
    """Counts and totals of one run. Token counts: prompt (all decoded) and sampled completion tokens."""

    items: list[ItemResult]
    plan: list[PlanItem]
    wall_s: float
    spec_problems: list[str]
    orphans: list[str]

    def count(self, *statuses: str) -> int:
        return sum(1 for r in self.items if r.status in statuses)

    @property
    def generated(self) -> int:
        return self.count("ok", "flagged")

    @property
    def failed(self) -> int:
        return self.count("failed") + len(self.spec_problems)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.items)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.items)

    @property
    def prefill_s(self) -> float:
        return sum(r.prefill_ms for r in self.items) / 1000

    @property
    def decode_s(self) -> float:
        return sum(r.decode_ms for r in self.items) / 1000

    def line(self) -> str:
        tps = self.completion_tokens / self.decode_s if self.decode_s else 0.0
        gen_s = self.prefill_s + self.decode_s
        return (
            f"{self.generated} generated ({self.count('flagged')} with error findings), {self.count('skipped')} skipped, "
            f"{self.count('adopted')} adopted, {self.failed} failed; {self.prompt_tokens} prompt + {self.completion_tokens} "
            f"completion tokens, {tps:.1f} tok/s decode, prefill {100 * self.prefill_s / gen_s if gen_s else 0:.0f}% of model time; "
            f"wall {self.wall_s:.1f} s"
        )


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


def run_batch(
    specs_dir: Path,
    out: Path,
    settings: Settings,
    options: BatchOptions,
    *,
    force: bool = False,
    dry_run: bool = False,
    only: list[str] | None = None,
    progress: bool = True,
    entries: Mapping[str, LoreEntry] | None = None,
    on_item: Callable[[ItemResult], None] | None = None,
) -> BatchSummary:
    """Generate every spec under `specs_dir` into `out` (``quests/<id>.json``, ``manifest.json``,
    ``report.md``, ``report.json``).

    Args:
        entries: the lore catalog; None opens the index (``narrative.runtime.open_index``)
            and syncs ``settings.lore.dir`` first.
        only: quest ids to consider (others are left alone).
        on_item: called after each item is finished (written and recorded) or failed.

    Raises:
        FileNotFoundError: `specs_dir` or the lore folder does not exist.
        OutputLocked: another run is writing to `out`.
        UnknownQuest: `only` names a quest id no spec has.
        narrative.models.ModelError: the model cannot be loaded.
    """
    t0 = time.perf_counter()
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
    if entries is None:
        entries = sync_lore(settings)
    lock = None
    if not dry_run:  # a dry run only reads `out` (it may not even exist yet)
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a+")
    try:
        if lock is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLocked(f"{out} is being written by another batch run") from None
            remove_stale_temps(out)
            remove_stale_temps(out / "quests")
        manifest = Manifest.load(out / "manifest.json")
        gen = QuestGenerator(settings, options, entries)
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

            bar = tqdm(total=len(todo), desc="quests", unit="quest")
        tokens_done = 0
        decode_s = 0.0
        for it in plan:
            spec = it.spec_file.spec
            if it.action == "error":
                r = ItemResult(spec.id, "failed", error=it.error)
            elif it.action == "skip":
                r = ItemResult(spec.id, "skipped")
            elif it.action == "adopt":
                assert it.components is not None
                data, quest = _read_output(out / "quests" / f"{spec.id}.json")  # type: ignore[misc]
                r = ItemResult(spec.id, "adopted", it.reasons, quest=quest)
                manifest.record(spec.id, _record(r, it.components, data))
            else:
                assert it.components is not None
                r = gen.generate(spec)
                r.reasons = it.reasons
                if r.quest is not None and r.status != "failed":
                    data = r.quest.dump()
                    atomic_write(out / "quests" / f"{spec.id}.json", data)  # the output first ...
                    manifest.record(spec.id, _record(r, it.components, data))  # ... then its record
                tokens_done += r.completion_tokens
                decode_s += r.decode_ms / 1000
                if bar is not None:
                    bar.set_postfix_str(f"{tokens_done / decode_s if decode_s else 0:.0f} tok/s, {spec.id}")
                    bar.update(1)
            results.append(r)
            if it.action != "skip":  # a killed run still leaves a report of what it did
                write_batch_report(out, BatchSummary(results, plan, time.perf_counter() - t0, problems, orphans), manifest)
            if on_item is not None:
                on_item(r)
        if bar is not None:
            bar.close()
        summary = BatchSummary(results, plan, time.perf_counter() - t0, problems, orphans)
        write_batch_report(out, summary, manifest)
        gen.close()
        return summary
    finally:
        if lock is not None:
            lock.close()


def read_lore_files(root: Path) -> dict[str, LoreEntry]:
    """The lore catalog straight from the files (``lore.loader.load_dir``), without the vector index.

    The batch only needs the catalog; this skips embedding (minutes for a fresh
    index on 2 busy cores). Files with problems are logged and left out.

    Raises:
        FileNotFoundError: `root` is not a folder.
    """
    from lore.loader import load_dir

    files, problems = load_dir(root)
    for p in problems:
        log.warning("%s", p)
    return {e.id: e for f in files for e in f.entries}


def sync_lore(settings: Settings) -> dict[str, LoreEntry]:
    """Open the lore index (``narrative.runtime.open_index``), sync ``settings.lore.dir``, return the catalog.

    Lore files with problems are logged; their last indexed version stays in use.
    """
    from narrative.runtime import open_index

    index, _ = open_index(settings)
    report = index.sync(settings.lore.dir)
    for p in report.problems:
        log.warning("%s", p)
    return dict(index.entries)


# ---- one item for the bridge -----------------------------------------------------


class QuestService:
    """One-item generation for the bridge's ``generate`` request.

    The lore index is opened and synced, and the batch model loaded, on the first
    request (not at server start), so a sidecar that never generates pays nothing.
    Not thread-safe: the server calls it from its single executor thread.

    Args:
        settings: sidecar settings (``batch_model``, ``lore``, ``state_dir``).
        specs_dir: where quest ids are looked up (``<specs_dir>/**/<id>.yaml``).
        options: generation options.
        entries: a lore catalog to use instead of syncing the index (tests).
    """

    def __init__(self, settings: Settings, specs_dir: Path, options: BatchOptions | None = None, entries: Mapping[str, LoreEntry] | None = None) -> None:
        self.settings = settings
        self.specs_dir = specs_dir
        self.options = options or BatchOptions()
        self._entries = dict(entries) if entries is not None else None
        self._gen: QuestGenerator | None = None

    def generator(self) -> QuestGenerator:
        if self._gen is None:
            if self._entries is None:
                self._entries = sync_lore(self.settings)
            self._gen = QuestGenerator(self.settings, self.options, self._entries)
        return self._gen

    def find(self, quest_id: str) -> QuestSpec:
        """The spec with id `quest_id` under `specs_dir`. Raises KeyError (message lists known ids) or `SpecError`."""
        specs, problems = load_specs(self.specs_dir)
        for sf in specs:
            if sf.spec.id == quest_id:
                return sf.spec
        for p in problems:
            if f"/{quest_id}." in p:
                raise SpecError([p])
        raise KeyError(f"unknown quest {quest_id!r} in {self.specs_dir} (known: {', '.join(s.spec.id for s in specs) or 'none'})")

    def generate(self, spec: QuestSpec | dict | str, *, seed: int | None = None, max_tokens: int | None = None) -> ItemResult:
        """Generate one quest from a spec, a spec dict (validated like a file) or a quest id.

        Raises:
            KeyError: unknown quest id.
            SpecError: the spec does not validate (messages name the field).
            UnknownEntry: the spec names lore the index does not have.
            narrative.models.ModelError: the batch model cannot be loaded.
        """
        if isinstance(spec, str):
            spec = self.find(spec)
        elif isinstance(spec, dict):
            from narrative.batch.spec import parse_spec
            import yaml

            spec = parse_spec(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), Path("<generate request>"))
        gen = self.generator()
        changes = {k: v for k, v in (("seed", seed), ("max_tokens", max_tokens)) if v is not None}
        return gen.generate(spec, gen.options.model_copy(update=changes) if changes else None)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()


__all__ = [
    "BatchOptions",
    "BatchSummary",
    "ItemResult",
    "OutputLocked",
    "PlanItem",
    "QuestGenerator",
    "QuestService",
    "plan_batch",
    "run_batch",
    "sync_lore",
    "UnknownQuest",
]
