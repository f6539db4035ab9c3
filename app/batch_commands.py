"""``narrative batch`` and its siblings (`narrative.batch`), registered into the CLI by `register`.

    narrative batch SPECS --out DIR            generate what changed (progress bar, summary, report.md)
    narrative batch SPECS --out DIR --dry-run  list what would be generated and why
    narrative batch SPECS --out DIR --parallel 8   decode 8 quests at once on the in-process model (continuous batching)
    narrative batch SPECS --out DIR --endpoint URL --endpoint URL   fan out over OpenAI-compatible servers
    narrative batch-import cdda|flare SRC --out DIR   convert a game's quests into specs + lore + reference text
    narrative batch-review OUT_DIR --import-dir DIR [--max-chars N]   our text beside the designers', stage by stage (Markdown)

Exit codes: 0 all items done, 1 some item failed (or a spec is invalid), 2 bad usage/settings.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (`--parallel 0` is a usage error, not a traceback)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def use_endpoints(model_settings, urls: list[str], concurrency: int | None) -> None:
    """Point a role at the OpenAI-compatible endpoints `urls` (``--endpoint``, repeatable).

    Naming a URL on the command line is the opt-in for sending prompts there (``allow_offsite``);
    other endpoint fields (model, api_key_env, timeouts, extra_body...) come from the role's first
    configured endpoint, if any.
    """
    from narrative.settings import EndpointSettings

    base = model_settings.endpoints[0].model_dump(exclude={"url", "allow_offsite"}) if model_settings.endpoints else {}
    if concurrency:
        base["concurrency"] = concurrency
    model_settings.backend = "openai"
    model_settings.endpoints = [EndpointSettings(url=u, allow_offsite=True, **base) for u in urls]


def cmd_batch(args: argparse.Namespace, settings) -> int:
    from app.runtime import sync_lore
    from lore.loader import load_catalog
    from narrative.backends import AllEndpointsDown, egress_notice
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import OutputLocked, UnknownQuest, run_batch

    if args.endpoints:
        use_endpoints(settings.batch_model, args.endpoints, args.concurrency)
    elif args.concurrency:
        for e in settings.batch_model.endpoints:
            e.concurrency = args.concurrency
    for line in egress_notice({"batch": settings.batch_model}):
        print(line, file=sys.stderr)
    if args.model:
        settings.batch_model.path = args.model
    if args.threads:
        settings.batch_model.n_threads = args.threads
    changes = {k: getattr(args, k) for k in ("seed", "max_tokens", "retries", "max_chars", "lore_budget") if getattr(args, k) is not None}
    options = BatchOptions(strict=args.strict, retry_on_findings=not args.no_retry_on_findings, quality_gate=not args.no_quality_gate, **changes)
    try:
        entries = load_catalog(settings.lore.dir) if args.lore_files else sync_lore(settings)
        extra = {}
        run = run_batch
        if settings.batch_model.backend == "openai":
            from narrative.batch.fanout import run_fanout as run
            if args.parallel > 1:
                print("error: --parallel is for the in-process model; with endpoints use --concurrency", file=sys.stderr)
                return 2
        else:
            extra["parallel"] = args.parallel
        summary = run(
            args.specs, args.out, settings.batch_model, options, entries, force=args.force, dry_run=args.dry_run, only=args.only,
            progress=not args.no_progress, **extra,
        )
    except (OutputLocked, UnknownQuest, AllEndpointsDown) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in summary.spec_problems:
        print(f"spec: {p}", file=sys.stderr)
    if args.dry_run:
        for it in summary.plan:
            what = {"skip": "up to date", "generate": "generate", "adopt": "adopt", "error": "error"}[it.action]
            print(f"{what:10} {it.spec_file.spec.id:36} {'; '.join(it.reasons) or it.error or ''}")
        n = sum(1 for it in summary.plan if it.action == "generate")
        print(f"{n} to generate, {sum(1 for it in summary.plan if it.action == 'skip')} up to date")
        return 1 if summary.failed else 0
    for r in summary.items:
        if r.status == "failed":
            print(f"FAILED {r.quest_id}: {r.error}", file=sys.stderr)
    print(summary.line())
    by_endpoint = Counter(r.endpoint for r in summary.items if r.endpoint and r.status in ("ok", "flagged"))
    if by_endpoint:
        print("per endpoint: " + ", ".join(f"{url} {n}" for url, n in sorted(by_endpoint.items())))
    print(f"report: {args.out / 'report.md'}")
    return 1 if summary.failed else 0


def cmd_import(args: argparse.Namespace, settings) -> int:
    import importlib

    mod = importlib.import_module(f"narrative.batch.importers.{args.game}")
    result = mod.convert(args.src, args.out, limit=args.limit)
    print(result.line())
    return 0


def cmd_review(args: argparse.Namespace, settings) -> int:
    from narrative.batch.importers.review import write_review

    path = write_review(args.out, args.import_dir, args.report, args.max_chars)
    print(f"review: {path}")
    return 0


def register(sub, common: argparse.ArgumentParser, wrap) -> None:
    """Add ``batch``, ``batch-import`` and ``batch-review`` to the ``narrative`` sub-parsers.

    `wrap(func)` turns ``func(args, settings)`` into the CLI's ``func(args)`` (it loads the settings).
    """
    p = sub.add_parser("batch", parents=[common], help="generate quest text from specs (incremental, resumable)")
    p.add_argument("specs", type=Path, help="folder of quest specs (YAML), e.g. samples/quests")
    p.add_argument("--out", type=Path, required=True, help="output folder (quests/<id>.json, manifest.json, report.md)")
    p.add_argument("--lore", type=Path, help="lore folder (default: the settings' [lore] dir, samples/lore unless configured)")
    p.add_argument("--lore-files", action="store_true", help="read the lore files directly instead of syncing the lore index (no embedding)")
    p.add_argument("--force", action="store_true", help="regenerate every item")
    p.add_argument("--dry-run", action="store_true", help="list what would be generated and why; generate nothing")
    p.add_argument("--only", nargs="+", metavar="ID", help="only these quest ids")
    p.add_argument("--model", help="batch model GGUF path (default settings batch_model.path, bundled:smollm2)")
    p.add_argument("--threads", type=positive_int, help="CPU threads of the batch model")
    p.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                   help="quests decoded at once as N sequences of one batched context (GPU: ~N x the quests/min while decode is "
                        "memory-bound). Texts differ from --parallel 1 (another sampler order; the manifest tells them apart, "
                        "so switching regenerates); default 1: one at a time")
    p.add_argument("--endpoint", action="append", dest="endpoints", metavar="URL",
                   help="OpenAI-compatible server to generate on (repeatable: items fan out over all of them), e.g. http://gpu1:8080/v1")
    p.add_argument("--concurrency", type=positive_int, metavar="N", help="requests in flight per endpoint (default: the settings', 1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-tokens", type=int, help="sampled tokens per attempt (default 700)")
    p.add_argument("--retries", type=int, help="extra attempts per item (default 2)")
    p.add_argument("--max-chars", type=int, help="cap every field's character limit")
    p.add_argument("--lore-budget", type=int, help="approximate tokens of lore per prompt (default 1200; named entries always go in)")
    p.add_argument("--no-retry-on-findings", action="store_true", help="retry only invalid outputs, not post-check errors")
    p.add_argument("--strict", action="store_true", help="items with error findings fail (not written)")
    p.add_argument("--no-quality-gate", action="store_true", help="write items that still fail a quality check (language, instruction echo, markup, repetition) as flagged instead of failing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=wrap(cmd_batch))

    p = sub.add_parser("batch-import", parents=[common], help="convert CDDA missions or Flare quests into quest specs")
    p.add_argument("game", choices=["cdda", "flare"])
    p.add_argument("src", type=Path, help="corpus folder, e.g. ../shared/corpora/cdda_npcs_missions")
    p.add_argument("--out", type=Path, required=True, help="writes specs/, lore/ and reference.json here")
    p.add_argument("--limit", type=int, help="convert at most this many quests")
    p.set_defaults(func=wrap(cmd_import))

    p = sub.add_parser("batch-review", parents=[common], help="review page: generated text beside the designers' text")
    p.add_argument("out", type=Path, help="the batch output folder")
    p.add_argument("--import-dir", type=Path, required=True, help="the batch-import folder (reference.json, specs/)")
    p.add_argument("--report", type=Path, help="Markdown file to write (default OUT/review.md)")
    p.add_argument("--max-chars", type=int, help="the --max-chars the batch ran with (post-checks tell 'cut' from 'unfinished' by it)")
    p.set_defaults(func=wrap(cmd_review))
