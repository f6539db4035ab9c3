""""Why was this injected?": one turn's lore selection, entry by entry, with reasons and token costs.

Used by ``narrative lore why --npc ID "player line"`` and the bridge's
``lore.explain`` message. It runs the same `Retriever.select` a dialogue turn
runs, so what it says is what the turn did (probability rolls are deterministic
per NPC, line and entry).

Included entries say why (``card``, ``scene``, ``constant``, ``prefix``, the key
that matched and where, the similarity); dropped ones say which rule stopped
them (``budget``, ``scope``, ``state``, ``probability``, ``recursion``,
``secondary``, ``disabled``). An entry with a ``when`` (`lore.conditions`) also
shows its condition, whether it holds in the turn's game state and, when not,
the part that failed. `diagnose` answers for one named entry that was not
selected at all ("not triggered" versus "over budget").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lore.conditions import show
from lore.keywords import key_in, secondary_ok
from lore.retrieve import Pick, Retriever, knows, roll


def pick_dict(p: Pick, placement: str, source: str = "", state: Mapping[str, object] | None = None) -> dict:
    """One pick as a plain dict (the shape of the bridge's ``LoreWhy``).

    A gated entry adds ``when`` (its condition, `lore.conditions.When.describe`), ``holds``
    (in `state`; None is the empty state) and, when it does not hold, ``unmet`` (list of phrases).
    """
    d = {
        "entry": p.entry.id,
        "name": p.entry.name,
        "kind": p.entry.kind.value,
        "placement": placement,
        "why": p.why,
        "reason": p.reason,
        "tokens": p.tokens,
        "order": p.entry.order,
        "step": p.step,
        "found_in": p.found_in,
        "source": source,
    }
    if p.key is not None:
        d["key"] = p.key
    if p.similarity is not None:
        d["similarity"] = round(p.similarity, 4)
    if p.lexical is not None:
        d["lexical"] = round(p.lexical, 3)
    if p.full_tokens is not None:
        d["full_tokens"] = p.full_tokens
    gate = p.entry.gate()
    if gate is not None:
        state = state if state is not None else {}
        d["when"] = gate.describe()
        d["holds"] = gate.holds(state)
        if not d["holds"]:
            d["unmet"] = gate.unmet(state)
    return d


def explain(r: Retriever, npc_id: str, line: str, history: Sequence[str] = (), state: Mapping[str, object] | None = None) -> dict:
    """Explain one turn's selection.

    Args:
        state: the turn's game state (`Retriever.select`); None is the empty state.

    Returns:
        ``{"npc", "line", "state", "budget", "used", "prefix_budget", "prefix_used",
        "similarity": {"vector_weight", "lexical_weight", "vector_k"},
        "included": [...], "dropped": [...]}``; token figures are tokens of the
        dialogue model; each item is `pick_dict` (placement ``prefix``/``turn``).

    Raises:
        lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
    """
    sel = r.select(npc_id, line, history, state=state)
    src = r.index.sources
    prefix_used = sum(p.tokens for p in sel.prefix[1:])
    return {
        "npc": npc_id,
        "line": line,
        "state": dict(state or {}),
        "budget": sel.budget,
        "used": sel.used,
        "prefix_budget": r.prefix_budget,
        "prefix_used": prefix_used,
        "similarity": {"vector_weight": r.vector_weight, "lexical_weight": r.lexical_weight, "vector_k": r.vector_k},
        "included": [pick_dict(p, "prefix", src.get(p.entry.id, ""), state) for p in sel.prefix]
        + [pick_dict(p, "turn", src.get(p.entry.id, ""), state) for p in sel.turn],
        "dropped": [pick_dict(p, "prefix" if p.why in ("constant", "prefix", "scene") else "turn", src.get(p.entry.id, ""), state) for p in sel.dropped],
    }


def diagnose(
    r: Retriever, npc_id: str, line: str, entry_id: str, history: Sequence[str] = (), state: Mapping[str, object] | None = None
) -> list[str]:
    """Plain-language reasons why `entry_id` is or is not in this turn's lore, most decisive first.

    `state` is the turn's game state (`Retriever.select`); None is the empty state.

    Raises:
        lore.retrieve.UnknownNpc: `npc_id` is not an NPC.
    """
    npc = r.npc(npc_id)
    e = r.index.entries.get(entry_id)
    if e is None:
        return [f"{entry_id!r} is not in the index (not indexed, or its file has a problem: run `narrative lore check`)"]
    sel = r.select(npc_id, line, history, state=state)
    out: list[str] = []
    for placement, picks in (("prefix", sel.prefix), ("turn", sel.turn)):
        for p in picks:
            if p.entry.id == entry_id:
                trimmed = f" (trimmed to fit; the whole entry needs {p.full_tokens})" if p.full_tokens else ""
                out.append(f"included in the {placement} ({p.why}{', ' + p.found_in if p.found_in else ''}), {p.tokens} tokens{trimmed}")
    for p in sel.dropped:
        if p.entry.id == entry_id:
            out.append(f"triggered ({p.why}) but dropped: {p.reason}" + (f" ({sel.used}/{sel.budget} tokens used, it needs {p.tokens})" if p.reason == "budget" else ""))
    if e.disabled:
        out.append("the entry is disabled")
    if not knows(npc, e):
        out.append(f"scope: known_by {e.known_by} does not include {npc_id}, its faction or its tags")
    gate = e.gate()
    if gate is not None:
        unmet = gate.unmet(state if state is not None else {})
        out.append(f"when {gate.describe()}: " + ("holds" if not unmet else "does not hold: " + "; ".join(unmet)))
    elif e.when is not None:
        out.append("when: ignored (an NPC card is never gated)")
    keys = e.all_keys()
    depth = r.scan_depth_of(e)
    scanned = [line, *list(history)[-depth:][::-1]] if depth else [line]
    hit = next((k for k in keys for t in scanned if key_in(e, k, t)), None)
    via = next((p for p in sel.turn + sel.dropped if p.entry.id == entry_id and p.found_in.startswith("recursion:")), None)
    if hit is None and via is not None:
        src = via.found_in.split(":", 1)[1]
        out.append(f"none of {keys} occurs in the line or the {depth} earlier line(s); key {via.key!r} is in the text of {src!r} (recursion step {via.step})")
    elif hit is None:
        out.append(f"not triggered by keys: none of {keys} occurs in the line or the {depth} earlier line(s) scanned")
    else:
        text = "\n".join(scanned)
        if not secondary_ok(e, text):
            out.append(f"primary key {hit!r} matched, but secondary keys {e.secondary_keys} fail {e.selective_logic.value}")
        if not roll(npc_id, line, e):
            out.append(f"probability roll failed ({e.probability}%)")
    sim = r.index.similarity(line, entry_id)
    if sim is not None:
        near = r.index.nearest(line, r.vector_k)
        rank = next((i + 1 for i, (eid, _) in enumerate(near) if eid == entry_id), None)
        where = f"rank {rank} of the {r.vector_k} nearest" if rank else f"outside the {r.vector_k} nearest (the last has {near[-1][1]:.3f})" if near else "no vector hits"
        out.append(f"vector similarity {sim:.3f}: {where}" + (f"; below min_similarity {r.min_similarity}" if sim < r.min_similarity else ""))
    if gate is not None and (r.prefix_placed(e) or any(x.id == entry_id for _, _, x in r.standing(npc_id))):
        out.append("placement: it would be prefix lore, but an entry with a when is never in the prefix: it is in every turn while its condition holds")
    elif r.prefix_placed(e):
        out.append("placement: prefix (constant or position: prefix), so it is never chosen per turn")
    return out


def format_explanation(d: dict) -> str:
    """`explain`'s dict as a terminal table."""
    lines = [
        f"NPC {d['npc']}: {d['line']!r}",
        *([f"state: {', '.join(f'{k}={show(v)}' for k, v in d['state'].items())}"] if d.get("state") else []),
        f"prefix lore {d['prefix_used']}/{d['prefix_budget']} tokens (plus the card); turn lore {d['used']}/{d['budget']} tokens",
        _similarity_line(d.get("similarity")),
        "",
        f"{'':8} {'entry':34} {'tokens':>6}  why",
    ]
    for x in d["included"]:
        lines.append(f"{x['placement']:8} {x['entry']:34} {x['tokens']:6}  {_why(x)}")
    if d["dropped"]:
        lines.append("")
        lines.append(f"{'dropped':8} {'entry':34} {'tokens':>6}  reason / why")
        for x in d["dropped"]:
            lines.append(f"{x['reason']:8} {x['entry']:34} {x['tokens']:6}  {_why(x)}")
    return "\n".join(lines)


def _similarity_line(w: dict | None) -> str:
    """How similarity hits were ranked this turn (after every key hit): which rankings count, and how much."""
    if not w:
        return ""
    if w["vector_k"] <= 0 or (w["vector_weight"] <= 0 and w["lexical_weight"] <= 0):
        return "similarity hits: off (keys only)"
    on = [f"{name} x{w[f'{name}_weight']:g}" for name in ("vector", "lexical") if w[f"{name}_weight"] > 0]
    return f"similarity hits (after key hits, top {w['vector_k']}): " + " + ".join(on)


def _why(x: dict) -> str:
    parts = [x["why"]]
    if x.get("full_tokens"):
        parts.append(f"trimmed to fit, whole entry {x['full_tokens']} tokens")
    if x.get("found_in") and x["found_in"] != "line":
        parts.append(f"in {x['found_in']}")
    if "similarity" in x and not x["why"].startswith("vector"):
        parts.append(f"similarity {x['similarity']:.3f}")
    if "lexical" in x and not x["why"].startswith("text"):
        parts.append(f"bm25 {x['lexical']:.2f}")
    if x["placement"] == "turn" and x["why"].startswith("key"):
        parts.append(f"order {x['order']}")
    if "when" in x:
        parts.append(f"when {x['when']}: " + ("holds" if x["holds"] else "does not hold: " + "; ".join(x.get("unmet", []))))
    return ", ".join(parts)
