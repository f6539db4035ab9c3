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
    args = ap.parse_args(argv)

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
