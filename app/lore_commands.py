"""The designers' ``narrative lore`` subcommands; `register` adds them to `app.cli`'s parser.

    narrative lore index DIR [--strict]
    narrative lore query "TEXT" [--npc ID [--state KEY=VALUE ...] [--state-json JSON]] [--words]
    narrative lore why --npc ID "player line" [--history LINE ...] [--state KEY=VALUE ...] [--state-json JSON] [--entry ID] [--json]
    narrative lore check DIR [--json]
    narrative lore import FILE... --into DIR
    narrative lore export DIR --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def token_counter(settings, words: bool):
    """(counter, unit) for lore budgets: the dialogue model's tokenizer (what a turn
    really spends; loads the model), or whitespace words when `words` (fast, approximate)."""
    if words:
        return (lambda t: len(t.split())), "words"
    from narrative.llm import LlamaModel

    return LlamaModel(settings.dialogue_model).count_tokens, "tokens"


def parse_state_value(text: str) -> str | int | float | bool:
    """A ``--state`` VALUE: an int (``12``, ``-3``), a finite float (``0.5``, ``1e3``), ``true``/``false``
    (any case), else the string as written (``done``, ``nan``). A string of digits needs ``--state-json``."""
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def state_from_args(args: argparse.Namespace) -> dict[str, str | int | float | bool]:
    """The game state of ``--state-json`` then each ``--state KEY=VALUE`` (later ones win).

    Raises:
        ValueError: not KEY=VALUE, JSON that is not an object, or a bad key or value
            (`lore.conditions.validate_state`).
    """
    from lore.conditions import validate_state

    state: dict[object, object] = {}
    if args.state_json:
        try:
            data = json.loads(args.state_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--state-json: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--state-json: needs a JSON object of key -> value, got {type(data).__name__}")
        state.update(data)
    for item in args.state or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--state {item!r}: write KEY=VALUE (e.g. quest.heron=done)")
        state[key] = parse_state_value(value)
    return validate_state(state)


def _add_state_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", action="append", metavar="KEY=VALUE",
                   help="a game state value for the turn (repeatable); VALUE is read as an int, a float, true/false, else a string")
    p.add_argument("--state-json", metavar="JSON", help='the game state as a JSON object, e.g. \'{"quest.heron": "done", "gold": 12}\' (--state wins on a shared key)')


def cmd_lore_index(args: argparse.Namespace) -> int:
    from app.runtime import open_index
    from app.settings import settings_from_args

    s = settings_from_args(args)
    index, _ = open_index(s)
    report = index.sync(args.dir, progress=True)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(report.summary())
    return 1 if report.problems and args.strict else 0


def cmd_lore_query(args: argparse.Namespace) -> int:
    from app.runtime import open_index
    from app.settings import settings_from_args
    from lore.retrieve import Retriever, UnknownNpc

    s = settings_from_args(args)
    index, _ = open_index(s)
    if args.npc is None:
        for eid, sim in index.nearest(args.text, s.lore.vector_k):
            print(f"{sim:6.3f}  {eid}")
        return 0
    try:
        state = state_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count, unit = token_counter(s, args.words)
    r = Retriever(index, count, s.lore)
    try:
        sel = r.select(args.npc, args.text, state=state)
    except UnknownNpc as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    for label, picks in (("prefix", sel.prefix), ("turn", sel.turn), ("dropped", sel.dropped)):
        for x in picks:
            print(f"{label:8} {x.entry.id:32} {x.why:24} {x.tokens} {unit}")
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from app.runtime import open_index
    from app.settings import settings_from_args
    from lore.explain import diagnose, explain, format_explanation
    from lore.retrieve import Retriever, UnknownNpc

    try:
        state = state_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = settings_from_args(args)
    index, _ = open_index(s)
    if args.lore:
        report = index.sync(args.lore, progress=True)
        for problem in report.problems:
            print(problem, file=sys.stderr)
    count, _ = token_counter(s, args.words)
    r = Retriever(index, count, s.lore)
    try:
        if args.entry:
            for reason in diagnose(r, args.npc, args.text, args.entry, args.history or (), state=state):
                print(f"{args.entry}: {reason}")
            return 0
        d = explain(r, args.npc, args.text, args.history or (), state=state)
    except UnknownNpc as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        if not index.npcs():
            print(f"no NPC is indexed in {s.state_dir}: pass --lore DIR, or run `narrative lore index DIR` first", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=2) if args.json else format_explanation(d))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from lore.check import check_dir, problems_json

    problems = check_dir(args.dir)
    if args.json:
        print(problems_json(problems))
    else:
        for p in problems:
            print(p)
        errors = sum(p.severity == "error" for p in problems)
        print(f"{errors} errors, {len(problems) - errors} warnings", file=sys.stderr)
    return 1 if any(p.severity == "error" for p in problems) else 0


def cmd_import(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lore.importers.sillytavern import ImportError_, import_file

    failed = 0
    for f in args.files:
        try:
            res = import_file(f, args.into)
        except (ImportError_, ValidationError, OSError) as exc:
            print(f"error: {exc}" if str(exc).startswith(str(f)) else f"error: {f}: {exc}", file=sys.stderr)
            failed += 1
            continue
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        who = f", NPC {res.npc}" if res.npc else ""
        print(f"{f}: {res.kind}, {res.entries} entries{who} -> {res.folder}/ ({len(res.files)} files)")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from lore.importers.sillytavern import export_world_info, read_book_settings
    from lore.loader import load_dir

    files, problems = load_dir(args.dir)
    for p in problems:
        print(p, file=sys.stderr)
    if args.card:
        from lore.importers.sillytavern import export_card

        png = bool(args.out and args.out.suffix.lower() == ".png")
        card = export_card([e for f in files for e in f.entries], args.card, spec=args.spec, png=png)
        if png:
            args.out.write_bytes(card)
        elif args.out:
            args.out.write_text(json.dumps(card, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            print(json.dumps(card, indent=4, ensure_ascii=False))
        return 1 if problems else 0
    out = export_world_info([e for f in files for e in f.entries], read_book_settings(args.dir))
    text = json.dumps(out, indent=4, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"{len(out['entries'])} entries -> {args.out}")
    else:
        print(text)
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``narrative lore`` and its subcommands on the CLI's subparsers."""
    lore = sub.add_parser("lore", help="lore folder tools").add_subparsers(dest="lore_cmd", required=True, metavar="LORE_COMMAND")
    p = lore.add_parser("index", parents=[common], help="index a lore folder (only changed files are re-embedded)")
    p.add_argument("dir", type=Path)
    p.add_argument("--strict", action="store_true", help="exit 1 if any file has a problem")
    p.set_defaults(func=cmd_lore_index)
    p = lore.add_parser("query", parents=[common], help="show which entries a player line retrieves")
    p.add_argument("text")
    p.add_argument("--npc", help="NPC id (applies scope, prefix and budget); without it, raw vector neighbours")
    p.add_argument("--words", action="store_true", help="count words instead of loading the dialogue model's tokenizer (faster, approximate budget)")
    _add_state_options(p)
    p.set_defaults(func=cmd_lore_query)

    p = lore.add_parser("why", parents=[common], help="explain one turn's lore: included (why), dropped (budget/scope/probability/...), tokens")
    p.add_argument("text", help="the player's line")
    p.add_argument("--npc", required=True, help="NPC id")
    p.add_argument("--history", nargs="*", help="earlier lines, oldest first (scanned for keys)")
    _add_state_options(p)
    p.add_argument("--entry", help="explain one entry: why it is (not) in this turn")
    p.add_argument("--lore", type=Path, help="sync this lore folder first")
    p.add_argument("--words", action="store_true", help="count words instead of loading the dialogue model's tokenizer")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_why)

    p = lore.add_parser("check", help="validate a lore folder: path:line: message per problem; exit 1 on errors")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true", help="JSON array of {path, line, severity, message}")
    p.set_defaults(func=cmd_check)

    p = lore.add_parser("import", help="convert SillyTavern World Info / character cards (JSON, PNG, CHARX) into lore files")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--into", type=Path, required=True, help="lore folder to write into (one sub-folder per source)")
    p.set_defaults(func=cmd_import)

    p = lore.add_parser("export", help="export a lore folder as SillyTavern World Info JSON, or one NPC as a character card")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, help="output file (default: stdout); with --card, a .png file gets the card inside a 1x1 image")
    p.add_argument("--card", metavar="NPC_ID", help="export this NPC as a character card, with the lore only it knows as its book")
    p.add_argument("--spec", choices=["v2", "v3"], default="v2", help="card spec with --card (default v2)")
    p.set_defaults(func=cmd_export)
