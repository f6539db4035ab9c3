"""Lore at scale: 10,000 generated entries -> full index, one-file re-index, selection latency per turn.

    .venv/bin/python benchmarks/lore_scale.py [--entries 10000] [--turns 1000] [--model-sample 64] [--compare-rev aef41c8]

What runs for real: lore files on disk (one Markdown file per entry), the loader,
chromadb on disk (HNSW, cosine), the keyword index, `Retriever.select` with the
dialogue model's tokenizer (bundled SmolLM2) for token costs.

The embedder for the 10,000-entry index is a stand-in, named as such: a hashed
bag-of-words vector of the model's width (576), so that index, store and
selection costs are measured without ~0.1-0.3 s of SmolLM2 per chunk on 2 CPU
cores. The real model's cost is measured on a sample in the same run and
reported separately (per chunk and per player line), with the extrapolated full
embed time. Targets (issue 3): selection p99 < 20 ms, one-file re-index < 1 s.

For the ratio, the same run also times the naive matcher this replaced: one
compiled regex per key, tried on every entry each turn.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYL = ["ka", "lo", "mir", "then", "dra", "vas", "el", "or", "qui", "ny", "bar", "sel", "tor", "um", "ash", "fen", "gal", "rim", "os", "ve"]
FILLER = "the a of to and in is it you that was for on are with as at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part".split()


class HashEmbedder:
    """Stand-in embedder for the scale run: hashed bag of lower-cased words, 576 dimensions, unit norm."""

    dim = 576

    def __call__(self, texts):
        out = []
        for t in texts:
            v = [0.0] * self.dim
            for w in re.findall(r"\w+", t.lower()):
                v[int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "big") % self.dim] += 1.0
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v])
        return out


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYL) for _ in range(rng.randint(2, 4)))


def generate(root: Path, n: int, npcs: int, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """Write `n` lore entries and `npcs` NPCs under `root`; returns (npc ids, keys per entry)."""
    factions = [f"faction-{i}" for i in range(10)]
    npc_ids = []
    for i in range(npcs):
        nid = f"npc-{i:03d}"
        npc_ids.append(nid)
        d = root / "npcs"
        d.mkdir(parents=True, exist_ok=True)
        front = {"id": nid, "kind": "npc", "name": f"Npc {word(rng).title()}", "tags": [f"tag-{i % 5}"],
                 "npc": {"persona": "A generated NPC.", "voice": "Short.", "faction": factions[i % 10]}}
        (d / f"{nid}.md").write_text("---\n" + yaml.safe_dump(front) + "---\nA generated NPC.\n")
    for i, fid in enumerate(factions):
        d = root / "factions"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{fid}.md").write_text("---\n" + yaml.safe_dump({"id": fid, "kind": "faction", "name": f"Faction {i}", "keys": [f"faction{i}"]}) + "---\nA faction.\n")
    all_keys = []
    for i in range(n):
        keys = [word(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            keys.append(f"{word(rng)} {word(rng)}")
        front: dict = {"id": f"e-{i:05d}", "kind": "lore", "name": f"Entry {i}", "name_is_key": False, "keys": keys}
        r = rng.random()
        if r < 0.01:
            front["keys"] = keys + [f"/{word(rng)}s?/i"]
        elif r < 0.03:
            front["match_whole_words"] = False
        if rng.random() < 0.1:
            front["secondary_keys"] = [word(rng)]
            front["selective_logic"] = rng.choice(["and_any", "not_any"])
        if rng.random() < 0.2:
            front["known_by"] = [rng.choice(factions + [f"tag-{j}" for j in range(5)])]
        if rng.random() < 0.05:
            front["order"] = rng.randint(1, 300)
        text = " ".join(rng.choice(FILLER) for _ in range(rng.randint(12, 30)))
        text += " " + " ".join(rng.choice(keys) if rng.random() < 0.3 else word(rng) for _ in range(3)) + "."
        d = root / f"part-{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"e-{i:05d}.md").write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + text + "\n")
        all_keys.append(keys)
    return npc_ids, all_keys


def player_lines(rng: random.Random, all_keys: list[list[str]], n: int) -> list[str]:
    lines = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 16))]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice(all_keys)))
        lines.append(" ".join(words).capitalize() + "?")
    return lines


class Rows(list):
    """Measures, printed to stderr as they are taken and as a table at the end."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"  {row[0]}: {row[1]}", file=sys.stderr, flush=True)
        super().append(row)

    def __iadd__(self, rows):
        for r in rows:
            self.append(r)
        return self


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def naive_match(entries, line: str) -> int:
    """The replaced approach: every key of every entry as its own regex (patterns cached)."""
    from lore.keywords import entry_options, key_pattern

    n = 0
    for e in entries:
        for k in e.all_keys():
            if key_pattern(k, *entry_options(e)).search(line):
                n += 1
                break
    return n


def compare_rev(rev: str, index, current, npc_ids: list[str], lines: list[str]) -> list[tuple[str, str]]:
    """Time `Retriever.select` of lore/retrieve.py at git revision `rev` against the current one,
    interleaved turn by turn on the same index and lines (token costs shared, so both are warm)."""
    import importlib.util
    import subprocess

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:lore/retrieve.py"], check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "retrieve_at_rev.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("retrieve_at_rev", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    old = mod.Retriever(index, current.count_tokens, token_budget=current.token_budget, prefix_budget=current.prefix_budget, vector_k=current.vector_k)
    old._token_cache = current._token_cache
    lat: dict[str, list[float]] = {"old": [], "new": []}
    size = {"old": 0, "new": 0}
    for i, line in enumerate(lines):
        npc = npc_ids[i % len(npc_ids)]
        hist = [lines[i - 1], lines[i - 2]] if i >= 2 else []
        for name, r in (("old", old), ("new", current)):
            t0 = time.perf_counter()
            sel = r.select(npc, line, hist, mode="keywords")
            lat[name].append((time.perf_counter() - t0) * 1000)
            size[name] += len(sel.turn)
    o50, o99, n50, n99 = pct(lat["old"], .5), pct(lat["old"], .99), pct(lat["new"], .5), pct(lat["new"], .99)
    return [
        (f"select at {rev} vs now, keywords, side by side: p50", f"{o50:.1f} vs {n50:.1f} ms ({o50 / n50:.0f}x)"),
        (f"select at {rev} vs now, keywords, side by side: p99", f"{o99:.1f} vs {n99:.1f} ms ({o99 / n99:.0f}x)"),
        (f"entries in the turn at {rev} vs now (mean)", f"{size['old'] / len(lines):.2f} vs {size['new'] / len(lines):.2f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    from lore.index import LoreIndex
    from lore.loader import load_dir
    from lore.retrieve import Retriever
    from narrative.llm import LlamaEmbedder, LlamaModel
    from narrative.settings import EmbeddingSettings, ModelSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--npcs", type=int, default=20)
    ap.add_argument("--turns", type=int, default=1000)
    ap.add_argument("--model-sample", type=int, default=64, help="entries embedded with the real model, to time it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--compare-rev", metavar="REV", help="also time lore/retrieve.py as of git revision REV, side by side with the current one (keywords mode)")
    ap.add_argument("--compare-turns", type=int, default=200, help="turns of the side-by-side comparison")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    rows = Rows()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "lore"
        t0 = time.perf_counter()
        npc_ids, all_keys = generate(root, args.entries, args.npcs, rng)
        print(f"generated {args.entries} entries in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        t0 = time.perf_counter()
        files, problems = load_dir(root)
        t_load = time.perf_counter() - t0
        assert not problems, problems[:3]

        index = LoreIndex(tmp / "state", HashEmbedder())
        t0 = time.perf_counter()
        report = index.sync(root, progress=True)
        t_full = time.perf_counter() - t0
        assert not report.problems
        t0 = time.perf_counter()
        again = index.sync(root)
        t_noop = time.perf_counter() - t0
        t0 = time.perf_counter()
        LoreIndex(tmp / "state", HashEmbedder())
        t_open = time.perf_counter() - t0
        rows += [
            ("entries / chunks", f"{len(index.entries)} / {len(index)}"),
            ("load + validate all files (YAML + schema)", f"{t_load:.2f} s"),
            ("full index (load, chunk, stand-in embed, chromadb upsert, catalog)", f"{t_full:.2f} s"),
            ("re-sync, nothing changed", f"{t_noop:.2f} s ({again.skipped} chunks skipped)"),
            ("open an existing index (catalog + keyword index)", f"{t_open:.2f} s"),
        ]

        k = args.entries * 42 // 100
        target = root / f"part-{k // 100:03d}" / f"e-{k:05d}.md"
        text = target.read_text()
        times = []
        for i in range(5):
            target.write_text(text.replace("---\n", f"---\n# edit {i}\n", 1).rstrip() + f" Edited {i}.\n")
            t0 = time.perf_counter()
            rep = index.sync_file(root, target)
            times.append(time.perf_counter() - t0)
            assert rep.added == 1 and rep.deleted == 1 and not rep.problems, rep
        target.write_text(text.rstrip() + " Edited once more.\n")
        t0 = time.perf_counter()
        rep = index.sync(root)
        t_full_one = time.perf_counter() - t0
        assert rep.files_changed == 1
        rows += [
            ("one-file re-index, sync_file (hot reload path), median of 5", f"{statistics.median(times) * 1000:.0f} ms (max {max(times) * 1000:.0f} ms)"),
            ("one-file re-index via full-folder sync (CLI `lore index`)", f"{t_full_one:.2f} s"),
        ]

        model = LlamaModel(ModelSettings(n_ctx=2048, n_threads=args.threads))
        r = Retriever(index, model.count_tokens, token_budget=400, prefix_budget=700, vector_k=8)
        lines = player_lines(rng, all_keys, args.turns)
        t0 = time.perf_counter()
        r.warm()  # as build_runtime does at startup: every entry's token cost
        t_warm = time.perf_counter() - t0
        for npc in npc_ids:  # warm the per-NPC prefix cache (built once per index version)
            r.prefix(npc)
        rows.append(("token costs of all entries at startup (Retriever.warm, SmolLM2 tokenizer)", f"{t_warm:.2f} s"))
        results = {}
        for mode in ("keywords", "hybrid"):
            lat = []
            for i, line in enumerate(lines):
                npc = npc_ids[i % len(npc_ids)]
                hist = [lines[i - 1], lines[i - 2]] if i >= 2 else []
                t0 = time.perf_counter()
                sel = r.select(npc, line, hist, mode=mode)
                lat.append((time.perf_counter() - t0) * 1000)
            results[mode] = lat
        triggered = statistics.mean(len([p for p in r.select(npc_ids[0], line_).turn if p.key]) for line_ in lines[:100])
        rows += [
            ("select, keywords only: p50 / p99 per turn", f"{pct(results['keywords'], .5):.2f} / {pct(results['keywords'], .99):.2f} ms"),
            ("select, hybrid (stand-in line embed + chromadb query): p50 / p99", f"{pct(results['hybrid'], .5):.2f} / {pct(results['hybrid'], .99):.2f} ms"),
            ("key-triggered entries per turn (mean)", f"{triggered:.1f}"),
        ]
        sample = lines[:50]
        t0 = time.perf_counter()
        for line in sample:
            naive_match(index.entries.values(), line)
        t_naive = (time.perf_counter() - t0) * 1000 / len(sample)
        t0 = time.perf_counter()
        for line in sample:
            index.keywords.match(line)
        t_kw = (time.perf_counter() - t0) * 1000 / len(sample)
        rows.append(("key matching per line: regex per key (replaced) vs keyword index", f"{t_naive:.1f} ms vs {t_kw:.3f} ms ({t_naive / max(t_kw, 1e-9):.0f}x)"))
        if args.compare_rev:
            rows += compare_rev(args.compare_rev, index, r, npc_ids, lines[: args.compare_turns])

        emb = LlamaEmbedder(EmbeddingSettings(n_threads=args.threads))
        docs = [f.entries[0] for f in files if f.entries[0].kind.value == "lore"][: args.model_sample]
        from lore.render import entry_document

        t0 = time.perf_counter()
        emb([entry_document(e) for e in docs])
        per_chunk = (time.perf_counter() - t0) / max(1, len(docs))
        line_t = []
        for line in lines[:10]:
            t0 = time.perf_counter()
            emb([line])
            line_t.append((time.perf_counter() - t0) * 1000)
        rows += [
            (f"SmolLM2 embedding, per chunk (sample of {len(docs)}, batched)", f"{per_chunk * 1000:.0f} ms -> full {args.entries} entries ~{per_chunk * args.entries / 60:.0f} min"),
            ("SmolLM2 embedding of one player line: p50 / p99", f"{pct(line_t, .5):.0f} / {pct(line_t, .99):.0f} ms"),
        ]

    w = max(len(k) for k, _ in rows)
    print(f"lore scale: {args.entries} entries, {args.npcs} NPCs, {args.turns} turns, {args.threads} threads\n")
    print(f"| {'measure':{w}} | value |")
    print(f"|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:{w}} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
