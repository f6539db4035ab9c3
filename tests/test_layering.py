"""The import graph points one way: lore <- narrative <- bridge <- app, with no cycle anywhere.

A static check over every ``import`` in the four packages (module level and inside
functions alike, since a lazy import is still a dependency). Importing ``a.b.c``
also runs the ``__init__`` of ``a.b``, so that counts as an edge too (except from
modules inside ``a.b``, for which it has already run).

Rules (see README, "Layout"):

- ``lore`` imports no other package of ours;
- ``narrative`` imports ``lore`` (and itself), never ``bridge`` or ``app``;
- ``bridge`` imports ``narrative.service`` and nothing else of ``narrative``, no ``lore``;
- ``app`` may import everything; nothing imports ``app``;
- no cycle among modules (strongly connected components of one module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lore", "narrative", "bridge", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> modules of ours it imports (with the parent packages whose __init__ runs)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                targets = [name] + [f"{name}.{a.name}" for a in node.names]  # `from pkg import submodule`
            for t in targets:
                parts = t.split(".")
                if parts[0] not in PACKAGES:
                    continue
                for n in range(2, len(parts) + 1):  # a.b.c -> a.b (its __init__) and a.b.c
                    dep = ".".join(parts[:n])
                    if n < len(parts) and mod.startswith(dep + "."):
                        continue  # a module inside a.b: a.b's __init__ is already running or done
                    if dep in files and dep != mod:
                        graph[mod].add(dep)
    return graph


def allowed(src: str, dst: str) -> bool:
    a, b = src.split(".")[0], dst.split(".")[0]
    if a == b:
        return True
    if a == "app":
        return True
    if a == "narrative":
        return b == "lore"
    if a == "bridge":
        return dst == "narrative.service"
    return False  # lore imports nothing of ours; nothing imports app


def test_arrows_point_one_way():
    bad = sorted(f"{src} -> {dst}" for src, deps in import_graph().items() for dst in deps if not allowed(src, dst))
    assert not bad, "imports against the layering (lore <- narrative <- bridge <- app):\n" + "\n".join(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_violation_and_a_cycle():
    """The checks can fail: a back arrow and a two-module cycle are found in a made-up graph."""
    assert not allowed("lore.index", "narrative.settings")
    assert not allowed("bridge.server", "narrative.dialogue")
    assert not allowed("narrative.cli", "bridge.server")
    assert allowed("bridge.server", "narrative.service") and allowed("app.cli", "bridge.server")
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_is_in_the_graph(pkg):
    assert any(m == pkg or m.startswith(pkg + ".") for m in import_graph())
