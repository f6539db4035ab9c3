"""NPC actions and per-line fields: declared by the game, decoded under a grammar, validated before sending.

A game declares, per NPC or per session, the actions its NPCs may take (a name, a
description, a JSON Schema of the arguments) and the fields it wants with every line
(e.g. ``emotion`` from an enum, for the animation). A turn then ends with a structured
*tail* after the spoken line: at most ``max_actions`` calls and the fields. The tail is
decoded under a GBNF grammar built from the declaration (`tail_grammar`,
`narrative.context.Tail`), so the model can only name declared actions and write
arguments of the declared types; then every call is validated against its schema with
`jsonschema` before anything is sent (`parse_tail`): a call that fails is dropped and
reported, never sent.

Two tail formats, picked from the model's chat template (`narrative.llm.ChatFormat.tool_format`):

- ``qwen-xml``: Qwen3.5's own tool calls. The declaration goes into the system turn exactly
  where and how the model's chat template puts ``tools`` (a ``# Tools`` block with one JSON
  object per function inside ``<tools>``, then the template's calling rules), and a call is
  the template's XML::

      <tool_call>
      <function=give_item>
      <parameter=item>
      healing draught
      </parameter>
      </function>
      </tool_call>

  Source: the Qwen3.5 chat template (llama.cpp ``models/templates/Qwen3.5-4B.jinja``, the
  template shipped with the Qwen3.5 model cards on Hugging Face). The per-line fields are
  one more function, `FIELDS_FUNCTION`, which the grammar makes the first call.
- ``json`` (any other template, e.g. the bundled SmolLM2): after the line, one JSON object
  on a new line: ``{"emotion": "wary", "actions": [{"name": "give_item", "args": {...}}]}``,
  explained in the system turn. Every declared argument is written (optional ones too).

Supported argument schemas (everything the grammar can shape; the rest is refused at
declaration with `UnsupportedSchema`): an object with ``properties``, ``required``,
``additionalProperties: false`` (implied), and per property ``type`` string, integer,
number or boolean, with ``enum``/``const``, ``minimum``/``maximum``/``exclusive*``,
``minLength``/``maxLength`` (at most `MAX_STRING`), ``description``/``title``; at most
`MAX_PROPERTIES` properties per action and `MAX_ENUM` enum values of at most
`MAX_ENUM_VALUE` characters per property (the declaration is prompt text and grammar
alternatives on every turn: a megabyte of enum would stall both). ``pattern`` is refused: a game's regex run on model output is a backtracking risk
(a hostile declaration could stall validation), and an enum says the same safely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

FIELDS_FUNCTION = "line_fields"
"""The function carrying the per-line fields in the ``qwen-xml`` format (a reserved action name)."""

MAX_STRING = 200
"""Longest string argument the grammar allows (llama.cpp grammars refuse repetitions over 2000)."""

MAX_PROPERTIES = 16
"""Arguments per action."""
MAX_ENUM = 64
"""Values in one argument's ``enum`` (per-line fields: 32, bridge.protocol.FieldSpec)."""
MAX_ENUM_VALUE = 64
"""Characters in one string ``enum``/``const`` value, and in a property's ``description``/``title`` x 5."""

_SCALARS = {"string", "integer", "number", "boolean"}
_PROP_KEYS = {"type", "enum", "const", "description", "title", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
              "minLength", "maxLength", "default", "examples"}
_TOP_KEYS = {"type", "properties", "required", "additionalProperties", "description", "title", "$schema"}


class UnsupportedSchema(ValueError):
    """A declared action or field the sidecar cannot enforce; the message names the action and the property."""


@dataclass(frozen=True)
class ActionSpec:
    """One game action. ``parameters``: JSON Schema of the arguments object (see module docstring)."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class FieldSpec:
    """A per-line field: one of ``enum`` with every line."""

    name: str
    enum: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class ActionSet:
    """What one NPC may do at the end of a line: ``actions`` (at most ``max_actions`` per line) and ``fields``."""

    actions: tuple[ActionSpec, ...] = ()
    fields: tuple[FieldSpec, ...] = ()
    max_actions: int = 1

    @property
    def empty(self) -> bool:
        return not self.fields and not (self.actions and self.max_actions)

    def action(self, name: str) -> ActionSpec | None:
        return next((a for a in self.actions if a.name == name), None)

    def key(self) -> str:
        """A stable text identity (two equal declarations give the same key)."""
        return json.dumps([[a.name, a.description, a.parameters] for a in self.actions]
                          + [[f.name, list(f.enum), f.description] for f in self.fields] + [self.max_actions], sort_keys=True)


@dataclass
class TailResult:
    """What a turn's tail held: ``fields`` (name -> value), ``actions`` (valid calls, in order:
    ``(name, args)``) and ``rejected`` (``(name, reason)``: calls that failed validation, never sent)."""

    fields: dict[str, str] = field(default_factory=dict)
    actions: list[tuple[str, dict]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


# ---- declaration checks ---------------------------------------------------------


def check_action_set(aset: ActionSet) -> None:
    """Refuse what the grammar cannot shape. Raises `UnsupportedSchema` naming action and property."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    names = set()
    for a in aset.actions:
        where = f"action {a.name!r}"
        if a.name == FIELDS_FUNCTION:
            raise UnsupportedSchema(f"{where}: the name {FIELDS_FUNCTION!r} is reserved for the per-line fields")
        if a.name in names:
            raise UnsupportedSchema(f"{where}: declared twice")
        names.add(a.name)
        p = a.parameters
        if not isinstance(p, dict) or p.get("type", "object") != "object":
            raise UnsupportedSchema(f"{where}: parameters must be a JSON Schema with type 'object'")
        extra = set(p) - _TOP_KEYS
        if extra:
            raise UnsupportedSchema(f"{where}: parameters keyword(s) not supported: {', '.join(sorted(extra))}")
        if p.get("additionalProperties", False) is not False:
            raise UnsupportedSchema(f"{where}: additionalProperties must be false or absent (arguments are exactly the declared properties)")
        props = p.get("properties", {})
        if not isinstance(props, dict):
            raise UnsupportedSchema(f"{where}: 'properties' must be a map")
        req = p.get("required", [])
        if not isinstance(req, list) or any(r not in props for r in req):
            raise UnsupportedSchema(f"{where}: 'required' must list declared properties")
        if len(props) > MAX_PROPERTIES:
            raise UnsupportedSchema(f"{where}: at most {MAX_PROPERTIES} properties (got {len(props)})")
        for k, s in props.items():
            _check_property(f"{where}, parameter {k!r}", k, s)
        try:
            Draft202012Validator.check_schema(p)
        except SchemaError as exc:
            raise UnsupportedSchema(f"{where}: not a valid JSON Schema: {exc.message}") from None
    for f in aset.fields:
        if not f.enum:
            raise UnsupportedSchema(f"field {f.name!r}: needs at least one value in 'enum'")
        for v in f.enum:
            if "\n" in v or "<" in v or '"' in v or "\\" in v:
                raise UnsupportedSchema(f"field {f.name!r}: value {v!r} may not hold a newline, '<', '\"' or '\\'")


def _check_property(where: str, key: str, s: object) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
        raise UnsupportedSchema(f"{where}: property names are 1-64 of A-Z a-z 0-9 _ (not starting with a digit)")
    if not isinstance(s, dict):
        raise UnsupportedSchema(f"{where}: must be a schema object")
    extra = set(s) - _PROP_KEYS
    if extra:
        raise UnsupportedSchema(f"{where}: keyword(s) not supported: {', '.join(sorted(extra))}")
    t = s.get("type")
    if t is None and ("enum" in s or "const" in s):
        values = s.get("enum", [s.get("const")])
        t = "string" if all(isinstance(v, str) for v in values) else None
    if t not in _SCALARS:
        raise UnsupportedSchema(f"{where}: type must be one of {', '.join(sorted(_SCALARS))} (got {t!r})")
    for text_key in ("description", "title"):
        if len(str(s.get(text_key, ""))) > 5 * MAX_ENUM_VALUE:
            raise UnsupportedSchema(f"{where}: '{text_key}' is at most {5 * MAX_ENUM_VALUE} characters")
    values = s.get("enum", [s["const"]] if "const" in s else None)
    if values is not None:
        if not isinstance(values, list) or not values:
            raise UnsupportedSchema(f"{where}: 'enum' must be a non-empty list")
        if len(values) > MAX_ENUM:
            raise UnsupportedSchema(f"{where}: 'enum' has at most {MAX_ENUM} values (got {len(values)})")
        for v in values:
            if isinstance(v, str) and len(v) > MAX_ENUM_VALUE:
                raise UnsupportedSchema(f"{where}: enum value {v[:20]!r}... is over {MAX_ENUM_VALUE} characters")
            if not _is_type(v, t):
                raise UnsupportedSchema(f"{where}: enum value {v!r} is not a {t}")
            if isinstance(v, str) and ("\n" in v or "<" in v or '"' in v or "\\" in v):
                raise UnsupportedSchema(f"{where}: enum value {v!r} may not hold a newline, '<', '\"' or '\\'")
    if t == "string" and s.get("maxLength", 0) > MAX_STRING:
        raise UnsupportedSchema(f"{where}: maxLength is at most {MAX_STRING}")


def _is_type(v: object, t: str) -> bool:
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, str)


def _prop_type(s: dict) -> str:
    return s.get("type") or "string"


# ---- prompt -----------------------------------------------------------------------

QWEN_CALL_RULES = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n<parameter=example_parameter_2>\n"
    "This is the value for the second parameter\nthat can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n"
    "<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> block must be "
    "nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning "
    "for your function call in natural language BEFORE the function call, but NOT after\n- If there is no function call available, "
    "answer the question like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>"
)
"""The calling rules Qwen3.5's chat template writes after the ``<tools>`` list (verbatim)."""


def _tools(aset: ActionSet) -> list[dict]:
    tools = []
    if aset.fields:
        props = {f.name: {"type": "string", "enum": list(f.enum), **({"description": f.description} if f.description else {})} for f in aset.fields}
        tools.append({"type": "function", "function": {
            "name": FIELDS_FUNCTION,
            "description": "Call it after every line you speak, first, to say how the line is delivered.",
            "parameters": {"type": "object", "properties": props, "required": [f.name for f in aset.fields]}}})
    if aset.max_actions:
        for a in aset.actions:
            tools.append({"type": "function", "function": {"name": a.name, "description": a.description, "parameters": a.parameters}})
    return tools


def system_text(aset: ActionSet | None, fmt: str, content: str) -> str:
    """The system turn's text for NPC instructions `content` with the declaration `aset`.

    ``qwen-xml``: the ``# Tools`` block first, then ``\\n\\n`` and `content`, as Qwen3.5's
    template renders ``tools`` with a system message. ``json``: `content`, then how to write the tail.
    """
    if aset is None or aset.empty:
        return content
    if fmt == "qwen-xml":
        head = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
        head += "".join("\n" + json.dumps(t, ensure_ascii=False) for t in _tools(aset))
        return head + "\n</tools>" + QWEN_CALL_RULES + "\n\n" + content.strip()
    lines = ["", "", "After your spoken line, write one more line: a JSON object, and nothing after it."]
    shape = ", ".join(f'"{f.name}": <{" | ".join(f.enum)}>' for f in aset.fields)
    if aset.max_actions and aset.actions:
        shape = (shape + ", " if shape else "") + '"actions": [ ... ]'
    lines.append("Its shape: {" + shape + "}")
    for f in aset.fields:
        lines.append(f"- {f.name}: {f.description or 'how you say this line'}; one of: {', '.join(f.enum)}.")
    if aset.max_actions and aset.actions:
        lines.append(f'- actions: at most {aset.max_actions}, each {{"name": ..., "args": {{...}}}}, only when the '
                     "conversation calls for it; [] otherwise. The only actions there are:")
        for a in aset.actions:
            args = ", ".join(f"{k} ({_describe(s)})" for k, s in a.parameters.get("properties", {}).items()) or "no arguments"
            lines.append(f"  - {a.name}: {a.description or a.name}. Arguments: {args}.")
    return content + "\n".join(lines)


def _describe(s: dict) -> str:
    t = _prop_type(s)
    if "enum" in s or "const" in s:
        return t + ", one of " + ", ".join(str(v) for v in s.get("enum", [s.get("const")]))
    lo, hi = s.get("minimum"), s.get("maximum")
    return t + (f" {lo}..{hi}" if lo is not None or hi is not None else "")


# ---- grammar ----------------------------------------------------------------------


def _lit(text: str) -> str:
    """A GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _value_rule(s: dict, fmt: str) -> str:
    """GBNF for one argument value: raw text in ``qwen-xml`` (as the template renders it), JSON in ``json``."""
    t = _prop_type(s)
    values = s.get("enum", [s["const"]] if "const" in s else None)
    if values is not None:
        rendered = [json.dumps(v, ensure_ascii=False) if (fmt == "json" or not isinstance(v, str)) else v for v in values]
        rendered = ["true" if v is True else "false" if v is False else r for v, r in zip(values, rendered)]
        return "(" + " | ".join(_lit(r) for r in rendered) + ")"
    if t == "boolean":
        return '("true" | "false")'
    if t == "integer":
        return '("-"? [0-9]{1,9})'
    if t == "number":
        return '("-"? [0-9]{1,9} ("." [0-9]{1,6})?)'
    hi = min(int(s.get("maxLength", MAX_STRING)), MAX_STRING)
    lo = max(1, min(int(s.get("minLength", 1)), hi))
    if fmt == "json":
        return f'("\\"" [^"\\\\\\x00-\\x1f<]{{{lo},{hi}}} "\\"")'
    return f"([^<\\n]{{{lo},{hi}}})"


def tail_grammar(aset: ActionSet, fmt: str) -> str:
    """The GBNF of a turn's tail for `aset` in format `fmt` (``qwen-xml`` or ``json``), rule ``root``."""
    rules: list[str] = []
    calls = []
    for i, a in enumerate(aset.actions if aset.max_actions else ()):
        rules.append(f"call{i} ::= " + _call(a.name, a.parameters, fmt))
        calls.append(f"call{i}")
    call = "(" + " | ".join(calls) + ")" if calls else None
    n = aset.max_actions
    if fmt == "qwen-xml":
        fields = None
        if aset.fields:
            rules.append("fields ::= " + _call(FIELDS_FUNCTION, _tools(aset)[0]["function"]["parameters"], fmt))
            fields = "fields"
        if fields and call:
            root = f'"\\n\\n" {fields} ("\\n" {call}){{0,{n}}}'
        elif fields:
            root = f'"\\n\\n" {fields}'
        else:
            assert call
            root = f'("\\n\\n" {call} ("\\n" {call}){{0,{n - 1}}})?'
        return "\n".join([f"root ::= {root}"] + rules) + "\n"
    parts = [f'"\\"{f.name}\\": " ' + "(" + " | ".join(_lit(json.dumps(v)) for v in f.enum) + ")" for f in aset.fields]
    if call:
        parts.append(f'"\\"actions\\": [" ({call} (", " {call}){{0,{n - 1}}})? "]"')
    root = '"\\n{" ' + ' ", " '.join(parts) + ' "}"'
    return "\n".join([f"root ::= {root}"] + rules) + "\n"


def line_grammar(aset: ActionSet) -> str:
    """The ``json`` format's grammar of a whole reply: a spoken line (at least one character, no
    newline, ``{`` or ``<``), then the tail of `tail_grammar`, which starts with the newline."""
    tail = tail_grammar(aset, "json").replace("root ::= ", "tail ::= ", 1)
    return 'root ::= [^\\n{<] [^\\n{<]* tail\n' + tail


def _call(name: str, params: dict, fmt: str) -> str:
    props = params.get("properties", {})
    if fmt == "qwen-xml":
        out = [_lit(f"<tool_call>\n<function={name}>\n")]
        required = set(params.get("required", []))
        for k, s in props.items():
            p = " ".join([_lit("<parameter=" + k + ">\n"), _value_rule(s, fmt), _lit("\n</parameter>\n")])
            out.append(p if k in required else f"({p})?")
        out.append(_lit("</function>\n</tool_call>"))
        return " ".join(out)
    head = '{"name": ' + json.dumps(name) + ', "args": {'
    if not props:
        return _lit(head + "}}")
    args = ' ", " '.join(_lit(json.dumps(k) + ": ") + " " + _value_rule(s, fmt) for k, s in props.items())
    return _lit(head) + " " + args + ' "}}"'


def tail_budget(aset: ActionSet, fmt: str) -> int:
    """Most tokens a complete tail can take (an upper estimate: a token holds at least one character
    of a string argument, a number or a marker piece); the tail's ``max_tokens``."""
    def call_tokens(params: dict) -> int:
        n = 24
        for s in params.get("properties", {}).values():
            t = _prop_type(s)
            if "enum" in s or "const" in s:
                n += 10 + max(len(str(v)) for v in s.get("enum", [s.get("const")]))
            elif t == "string":
                n += 10 + min(int(s.get("maxLength", MAX_STRING)), MAX_STRING)
            else:
                n += 20
        return n

    n = 8
    if aset.fields:
        n += 24 + sum(10 + max(len(v) for v in f.enum) for f in aset.fields)
    if aset.actions and aset.max_actions:
        n += aset.max_actions * max(call_tokens(a.parameters) for a in aset.actions)
    return n


# ---- parsing and validation ----------------------------------------------------------

_CALL_RE = re.compile(r"<tool_call>\n<function=([^>\n]*)>\n(.*?)</function>\n</tool_call>", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>\n(.*?)\n</parameter>\n", re.S)


def _convert(raw: str, s: dict) -> object:
    """A ``qwen-xml`` parameter's text -> its JSON value (strings stay text, as the template renders them)."""
    t = _prop_type(s)
    if t == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # left for validation to reject with the schema's words


def parse_tail(text: str, aset: ActionSet, fmt: str, *, complete: bool = True) -> TailResult:
    """The fields and valid actions of a tail; every call is checked against its declared schema
    (``jsonschema``, draft 2020-12) and the ``max_actions`` limit. Never raises: whatever does not
    validate lands in ``rejected`` with the reason. `complete`: False when the tail was cut
    (its token budget ran out): an unfinished call is reported as such."""
    out = TailResult()
    calls: list[tuple[str, object]] = []
    if fmt == "qwen-xml":
        end = 0
        for m in _CALL_RE.finditer(text):
            end = m.end()
            name, body = m.group(1), m.group(2)
            params = {k: v for k, v in _PARAM_RE.findall(body)}
            spec = aset.action(name)
            if name == FIELDS_FUNCTION:
                calls.append((name, params))
            elif spec is None:
                calls.append((name, params))
            else:
                props = spec.parameters.get("properties", {})
                calls.append((name, {k: _convert(v, props.get(k, {})) for k, v in params.items()}))
        if text[end:].strip():
            out.rejected.append(("?", "unfinished call (the tail was cut at its token budget)" if not complete else "text that is not a call"))
    else:
        try:
            obj = json.loads(text) if text.strip() else {}
        except ValueError:
            obj = None
            out.rejected.append(("?", "unfinished (the tail was cut at its token budget)" if not complete else "not JSON"))
        if isinstance(obj, dict):
            field_values = {f.name: obj.get(f.name) for f in aset.fields if f.name in obj}
            if field_values:
                calls.append((FIELDS_FUNCTION, field_values))
            for c in obj.get("actions", []) if isinstance(obj.get("actions", []), list) else []:
                if isinstance(c, dict) and isinstance(c.get("name"), str):
                    calls.append((c["name"], c.get("args", {})))
                else:
                    out.rejected.append(("?", "an action that is not {name, args}"))
    sent = 0
    for name, args in calls:
        if name == FIELDS_FUNCTION:
            for f in aset.fields:
                v = args.get(f.name) if isinstance(args, dict) else None
                if isinstance(v, str) and v in f.enum:
                    out.fields[f.name] = v
            continue
        reason = _invalid(name, args, aset)
        if reason is None and sent >= aset.max_actions:
            reason = f"over max_actions ({aset.max_actions})"
        if reason is not None:
            out.rejected.append((name, reason))
            continue
        out.actions.append((name, dict(args)))
        sent += 1
    return out


def _invalid(name: str, args: object, aset: ActionSet) -> str | None:
    from jsonschema import Draft202012Validator

    spec = aset.action(name) if aset.max_actions else None
    if spec is None:
        return f"{name!r} is not a declared action"
    if not isinstance(args, dict):
        return "arguments are not an object"
    schema = dict(spec.parameters)
    schema.setdefault("additionalProperties", False)
    errors = sorted(Draft202012Validator(schema).iter_errors(args), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path)
        return f"arguments{' ' + where if where else ''}: {e.message}"
    return None
