"""The output of one quest: its pydantic schema, the JSON schema the grammar is built from, validation.

The model writes (under a grammar, see `generation_schema`)::

    {"title": "...", "summary": "...",
     "dialogue": {"offer": "...", "accept": "...", ...},   # the spec's stages, in order
     "journal": {"<step id>": "...", ...}}                 # the spec's journal steps, in order

and `validate_generation` turns that into a `QuestText`, the file written to
``quests/<id>.json`` (journal as a list, plus ``id`` and ``meta``).
Character limits (``DEFAULT_LIMITS``) are hard limits in the grammar
(``maxLength``), so a text can never run past them; `narrative.batch.checks`
flags text that stopped at a limit mid-sentence.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from narrative.batch.spec import QuestSpec

DEFAULT_LIMITS: dict[str, int] = {"title": 60, "summary": 320, "dialogue": 320, "journal": 200}
"""Max characters per field: title, summary, each dialogue line, each journal entry.

Chosen for a dialogue box of ~3 lines x 100 characters and a journal pane; a
spec's ``limits`` overrides them per field or stage."""

MIN_CHARS = {"title": 3, "summary": 20, "dialogue": 8, "journal": 10}
"""Min characters (grammar ``minLength``): rules out empty and one-word fields."""

_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # tab, LF, CR allowed


class OutputInvalid(ValueError):
    """A generated text that does not validate; ``reason`` says why (shown in the report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str = Field(description="Step id from the spec (or 'started' / 'finished').")
    text: str = Field(min_length=1, description="Journal text, second person or neutral, past/present tense.")


class QuestMeta(BaseModel):
    """What produced the text (deterministic: no timings, no dates)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="The manifest key (sha256 of everything that shaped this item).")
    model: str = Field(description="Model file name.")
    seed: int = Field(description="Sampling seed of the attempt that produced this text.")
    prompt_version: str
    attempt: int = Field(ge=1, description="1 for the first try; higher after retries.")


class QuestText(BaseModel):
    """One generated quest, as written to ``quests/<id>.json``.

    Raises:
        pydantic.ValidationError: a field is empty or holds control characters or
            lone UTF-16 surrogates (the grammar allows ``\\uXXXX`` escapes).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    dialogue: dict[str, str] = Field(description="Stage -> the giver's line, in the spec's stage order.")
    journal: list[JournalEntry]
    meta: QuestMeta

    @field_validator("title", "summary")
    @classmethod
    def _clean(cls, v: str) -> str:
        return _check_text(v)

    @field_validator("dialogue")
    @classmethod
    def _clean_lines(cls, v: dict[str, str]) -> dict[str, str]:
        for line in v.values():
            _check_text(line)
        return v

    @field_validator("journal")
    @classmethod
    def _clean_journal(cls, v: list[JournalEntry]) -> list[JournalEntry]:
        for e in v:
            _check_text(e.text)
        return v

    def texts(self) -> dict[str, str]:
        """Every text field by a path-like name: title, summary, dialogue.<stage>, journal.<step>."""
        out = {"title": self.title, "summary": self.summary}
        out.update({f"dialogue.{k}": v for k, v in self.dialogue.items()})
        out.update({f"journal.{e.step}": e.text for e in self.journal})
        return out

    def dump(self) -> bytes:
        """The file bytes: UTF-8 JSON, 2-space indent, keys in schema order, trailing newline (deterministic)."""
        return (json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _check_text(v: str) -> str:
    if not v.strip():
        raise ValueError("empty text")
    bad = _BAD_CHARS.search(v)
    if bad:
        raise ValueError(f"control character or lone surrogate U+{ord(bad.group()):04X}")
    return v


def limit_for(spec: QuestSpec, field: str, kind: str, cap: int | None = None) -> int:
    """Max characters of `field` (``title``, ``summary``, a stage, or ``journal``); `kind` picks the default."""
    n = spec.limits.get(field, DEFAULT_LIMITS[kind])
    return min(n, cap) if cap else n


def _string(spec: QuestSpec, field: str, kind: str, cap: int | None) -> dict:
    if field in spec.keep_lines:
        return {"type": "string", "const": spec.keep_lines[field]}
    hi = limit_for(spec, field, kind, cap)
    return {"type": "string", "minLength": min(MIN_CHARS[kind], hi), "maxLength": hi}


def generation_schema(spec: QuestSpec, cap: int | None = None) -> dict:
    """The JSON schema the model's output must match, for this spec.

    Properties are required and ordered (the grammar emits them in this order);
    ``keep_lines`` become ``const`` strings, so a hand-written line comes out
    verbatim; every other string has ``minLength``/``maxLength`` from
    `DEFAULT_LIMITS` / ``spec.limits``, lowered to `cap` when given (tests use a
    small cap to keep generations short).
    """

    def obj(props: dict) -> dict:
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    return obj(
        {
            "title": _string(spec, "title", "title", cap),
            "summary": _string(spec, "summary", "summary", cap),
            "dialogue": obj({s: _string(spec, s, "dialogue", cap) for s in spec.stages}),
            "journal": obj({step: _string(spec, "journal", "journal", cap) for step in spec.journal_steps()}),
        }
    )


def validate_generation(text: str, spec: QuestSpec, meta: QuestMeta, cap: int | None = None) -> QuestText:
    """Parse and validate the model's JSON `text` for `spec`.

    Checks what the grammar should already guarantee (so a grammar bug or an
    output cut at ``max_tokens`` is caught): JSON syntax, exactly the spec's
    stages and steps, lengths within limits, kept lines verbatim.

    Raises:
        OutputInvalid: with the first reason found.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputInvalid(f"not JSON ({exc.msg} at char {exc.pos}; {len(text)} chars, cut at max_tokens?)") from None
    if not isinstance(data, dict) or set(data) != {"title", "summary", "dialogue", "journal"}:
        raise OutputInvalid(f"top-level keys {sorted(data) if isinstance(data, dict) else type(data).__name__} != title, summary, dialogue, journal")
    dialogue, journal = data["dialogue"], data["journal"]
    if not isinstance(dialogue, dict) or list(dialogue) != list(spec.stages):
        raise OutputInvalid(f"dialogue stages {list(dialogue) if isinstance(dialogue, dict) else dialogue!r} != {spec.stages}")
    if not isinstance(journal, dict) or list(journal) != spec.journal_steps():
        raise OutputInvalid(f"journal steps {list(journal) if isinstance(journal, dict) else journal!r} != {spec.journal_steps()}")
    fields = [("title", "title", data["title"]), ("summary", "summary", data["summary"])]
    fields += [(s, "dialogue", dialogue[s]) for s in spec.stages]
    fields += [("journal", "journal", journal[k]) for k in journal]
    for name, kind, value in fields:
        if not isinstance(value, str):
            raise OutputInvalid(f"{name}: not a string")
        if name in spec.keep_lines:
            if value != spec.keep_lines[name]:
                raise OutputInvalid(f"{name}: kept line changed")
        elif len(value) > limit_for(spec, name, kind, cap):
            raise OutputInvalid(f"{name}: {len(value)} chars > limit {limit_for(spec, name, kind, cap)}")
    try:
        return QuestText(
            id=spec.id,
            title=data["title"],
            summary=data["summary"],
            dialogue=dialogue,
            journal=[JournalEntry(step=k, text=v) for k, v in journal.items()],
            meta=meta,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise OutputInvalid(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
