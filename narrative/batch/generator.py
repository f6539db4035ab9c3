"""One quest from its spec: the prompt, bounded attempts of grammar-constrained JSON, validation and post-checks.

`QuestGenerator.generate` is what both the folder run (`narrative.batch.runner`)
and the bridge's ``generate`` request (`narrative.service`) call for one item.

With ``parallel`` > 1 (``narrative batch --parallel N``) the attempts of up to N
items decode at once as N sequences of one llama.cpp context
(`narrative.scheduler` continuous batching, each sequence under its own JSON
grammar, `narrative.context.Tail`); callers run `generate` from N threads. That
decoder samples differently from the one-at-a-time path (a llama.cpp sampler per
sequence that checks the drawn token against the grammar first, instead of
``Llama.generate``'s chain), so its texts differ from ``--parallel 1`` for the same
seed; the manifest names it (`BATCHED_GENERATOR`), so switching between 1 and N > 1
regenerates. ``--parallel 1`` is today's path, byte for byte.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from lore.schema import LoreEntry
from narrative.batch.checks import Finding, check_quest, errors, failing_reasons, lore_vocabulary
from narrative.batch.manifest import Components, canonical_digest, model_fingerprint
from narrative.batch.output import OutputInvalid, QuestMeta, QuestText, generation_schema, validate_generation
from narrative.batch.prompt import PROMPT_VERSION, QuestPrompt, build_prompt
from narrative.batch.spec import QuestSpec
from narrative.llm import JSON_GENERATOR, JsonGeneration, SamplingParams
from narrative.settings import ModelSettings

log = logging.getLogger(__name__)

BATCHED_GENERATOR = "batched-grammar-1"
"""The manifest's ``generator`` of items decoded with ``parallel`` > 1 (see the module docstring)."""


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
    quality_gate: bool = Field(True, description="Fail (do not write) an item whose best attempt still fails a quality check: language, instruction_echo, markup, repetition (narrative.batch.checks.QUALITY_CHECKS). Off: such items are written as flagged.")

    def params(self, seed: int) -> SamplingParams:
        """The sampling of one attempt, drawn with `seed`."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, repeat_penalty=self.repeat_penalty, seed=seed)

    def shaping(self) -> dict:
        """The options that shape the text (all but `strict` and `quality_gate`, which only decide what is written)."""
        return self.model_dump(exclude={"strict", "quality_gate", "seed"})


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
    endpoint: str | None = None  # the HTTP endpoint that made it (narrative.batch.fanout); None in process

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
        model_settings: the batch model (the sidecar's ``batch_model`` settings).
        options: generation options.
        entries: the lore catalog (entry id -> entry), e.g. ``LoreIndex.entries`` after a sync.
    """

    def __init__(self, model_settings: ModelSettings, options: BatchOptions, entries: Mapping[str, LoreEntry], parallel: int = 1,
                 batched: bool | None = None) -> None:
        from narrative.llm import resolve_model_path

        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.options = options
        self.entries = entries
        self.model_settings = model_settings
        self.parallel = parallel
        self.batched = parallel > 1 if batched is None else batched  # the batched decoder (benchmarks compare it at 1)
        self.model_path = resolve_model_path(self.model_settings.path)
        self._fingerprint: str | None = None
        self._model = None
        self._scheduler = None
        self._keys = iter(range(1 << 62))
        self._keys_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._vocab: set[str] | None = None

    def seed_of(self, opts: BatchOptions | None = None) -> int:
        opts = opts or self.options
        return opts.seed if opts.seed is not None else self.model_settings.seed

    @property
    def model(self):
        """The batch `LlamaModel`, loaded on first use (its own llama.cpp instance; the dialogue model stays free)."""
        if self._model is None:
            with self._load_lock:  # --parallel N: N worker threads ask at once; one load
                if self._model is None:
                    self._load()
        return self._model

    def _load(self) -> None:
        if self._model is None:
            from narrative.llm import LlamaModel

            t = time.perf_counter()
            ms = self.model_settings
            if self.parallel > 1:  # N sequences, each with the context one item has at --parallel 1
                ms = ms.model_copy(update={"n_seq_max": self.parallel, "n_ctx": ms.n_ctx * self.parallel})
            self._model = LlamaModel(ms)
            log.info("batch model %s loaded in %.2f s", self._model.name, time.perf_counter() - t)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
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
        ms = self.model_settings.model_dump(exclude={"path", "n_threads", "seed", "n_gpu_layers", "n_seq_max", "backend", "endpoints", "remote_n_ctx"})
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
            generator=BATCHED_GENERATOR if self.batched else JSON_GENERATOR,
            seed=self.seed_of(opts),
        )

    def generate(self, spec: QuestSpec, opts: BatchOptions | None = None) -> ItemResult:
        """Generate one quest: bounded attempts until the output validates (and, with
        ``retry_on_findings``, has no error findings). Never raises for a bad output:
        the result's status is ``failed`` with the reasons, also when the best
        attempt still fails a quality check (`narrative.batch.checks.QUALITY_CHECKS`:
        language, instruction echo, markup, repetition); other error findings
        leave it ``flagged`` (written, listed in the report) unless ``strict``.

        Raises:
            UnknownEntry: the spec names an entry the lore does not have.
            narrative.llm.ModelError: the model cannot be loaded.
        """
        from narrative.llm import generate_json

        opts = opts or self.options
        prompt = self.prompt(spec, opts)
        comps = self.components(spec, prompt, opts)
        key = comps.key
        model = self.model
        # spec and lore text (cards may come from the internet) as plain text; only the template's markers are control tokens
        tokens = model.chat_tokens(model.format.system_pieces(prompt.system) + model.format.user_pieces(prompt.user, then_assistant=True))
        tokens = model.bos() + tokens
        schema = generation_schema(spec, opts.max_chars)
        budget = min(opts.max_tokens, model.n_ctx - len(tokens) - 64)
        result = ItemResult(spec.id, "failed")
        if budget < 16:
            result.error = f"prompt of {len(tokens)} tokens leaves no room in n_ctx {model.n_ctx}"
            return result
        if self.batched:
            return self.best_of(spec, opts, key, model.name, budget, lambda seed: self._batched(tokens, schema, opts.params(seed), budget), result)
        return self.best_of(spec, opts, key, model.name, budget, lambda seed: generate_json(model, tokens, schema, opts.params(seed), max_tokens=budget), result)

    def _batched(self, tokens: list[int], schema: dict, params: SamplingParams, budget: int) -> JsonGeneration:
        """One attempt as one sequence of the batched engine (blocks until it is done; others decode meanwhile).

        Raises:
            narrative.llm.GrammarRefused: llama.cpp refuses the schema's grammar.
        """
        from narrative.context import ContextEngine, Tail
        from narrative.llm import json_schema_gbnf
        from narrative.scheduler import Scheduler
        from narrative.settings import ContextSettings

        model = self.model
        with self._keys_lock:
            if self._scheduler is None:
                # no RAM snapshots: an item's sequence is forgotten when its attempt ends; the queue holds every waiting item
                cs = ContextSettings(ram_mib=0, persist=False, max_queue=1 << 16)
                self._scheduler = Scheduler(ContextEngine(model, cs), model.lock, cs)
                self._scheduler.start()
            key = f"item-{next(self._keys)}"
        tail = Tail(json_schema_gbnf(schema), budget, whole=True, stop_at_json=True)
        gen = self._scheduler.submit(key, tokens, params, max_tokens=1, tail=tail).result()
        with model.lock:
            self._scheduler.engine.forget(key)
        return JsonGeneration(
            text=gen.tail_text,
            finish_reason="stop" if gen.finish_reason == "stop" else "length",
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.tail_count,
            prefill_ms=gen.ttft_ms,
            decode_ms=gen.total_ms - gen.ttft_ms,
        )

    def best_of(
        self,
        spec: QuestSpec,
        opts: BatchOptions,
        key: str,
        model_name: str,
        budget: int,
        attempt: Callable[[int], JsonGeneration],
        result: ItemResult | None = None,
    ) -> ItemResult:
        """The bounded attempts of one item, whatever generates them: ``attempt(seed)`` returns one
        JSON text (`narrative.llm.generate_json` in process, an HTTP endpoint in `narrative.backends`);
        each is validated and post-checked, and the best one kept. A grammar llama.cpp refuses fails
        the item (`narrative.llm.GrammarRefused`); other exceptions of `attempt` propagate."""
        from narrative.llm import GrammarRefused

        result = result or ItemResult(spec.id, "failed")
        prompt = self.prompt(spec, opts)
        vocab = self.vocabulary() | lore_vocabulary([], spec)
        best: Attempt | None = None
        for n in range(1, opts.retries + 2):
            seed = self.seed_of(opts) + n - 1
            try:
                g = attempt(seed)
            except GrammarRefused as exc:  # this item cannot be generated; the batch goes on
                result.error = str(exc)
                return result
            meta = QuestMeta(key=key, model=model_name, seed=seed, prompt_version=PROMPT_VERSION, attempt=n)
            try:
                if g.finish_reason != "stop":
                    raise OutputInvalid(f"cut at max_tokens={budget} after {g.completion_tokens} tokens")
                quest = validate_generation(g.text, spec, meta, opts.max_chars)
                findings = check_quest(quest, spec, vocab, opts.max_chars, prompt=prompt.system + "\n" + prompt.user)
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
        quality = failing_reasons(best.findings) if opts.quality_gate else []
        if quality:  # text a designer would not keep (wrong language, echoed instructions, markup, loops): never written
            result.status, result.error = "failed", f"failed post-checks after {len(result.attempts)} attempts: {', '.join(quality)}"
        elif result.status == "flagged" and opts.strict:
            result.status, result.error = "failed", f"{errors(best.findings)} error findings left (strict)"
        return result
