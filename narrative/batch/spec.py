"""Quest specs: what a designer writes, validated, with ``file:line`` errors.

A spec is one YAML file per quest (``samples/quests/*.yaml``). Required:
``id``, ``giver`` (an NPC entry id) and ``objective``. Everything else is
optional; the draft format of ``samples/quests/`` is accepted as is and
extended for what imported quests need (``steps``, ``goal``, ``deadline``,
``follows``/``leads_to``, extra dialogue stages ``advice``/``failure``).

Entry ids (``giver``, ``location``, ``factions``, ``npcs``, ``lore``,
``steps[].location``) must exist in the lore index; `referenced_ids` lists them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lore.loader import load_yaml
from lore.schema import ID_PATTERN

CORE_STAGES: tuple[str, ...] = ("offer", "accept", "decline", "in_progress", "complete")
"""Dialogue stages every quest has unless ``stages`` narrows them."""

EXTRA_STAGES: tuple[str, ...] = ("advice", "failure")
"""Optional stages imported quests need (CDDA's ``advice`` and ``failure`` lines)."""

Stage = Literal["offer", "accept", "decline", "in_progress", "complete", "advice", "failure"]

STAGE_HELP: dict[str, str] = {
    "offer": "the giver asks the player to do the quest and says what they will get",
    "accept": "the giver reacts when the player agrees",
    "decline": "the giver reacts when the player refuses",
    "in_progress": "the giver speaks when the player comes back before the job is done",
    "complete": "the giver thanks the player and hands over the reward",
    "advice": "the giver gives a practical tip for doing the job",
    "failure": "the giver reacts when the player has failed the job",
}

KEEPABLE = ("title", "summary") + CORE_STAGES + EXTRA_STAGES
"""Fields a ``keep_lines`` entry may fix verbatim."""


class SpecError(Exception):
    """A spec file that cannot be used. ``str()`` is ``path:line: message`` (one per problem, joined by newlines)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Step(BaseModel):
    """One step of a multi-step quest; each step gets one journal entry."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN, description="Step id, unique within the quest (e.g. a Flare status id).")
    objective: str = Field(min_length=1, description="What the player does in this step, as the designer puts it.")
    location: str | None = Field(None, description="Entry id of the place of this step.")


class Goal(BaseModel):
    """A machine-readable goal, as game data states it (e.g. CDDA's ``MGOAL_FIND_ITEM`` + item + count)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fetch", "deliver", "go_to", "kill", "escort", "recruit", "rescue", "talk", "find", "other"]
    target: str | None = Field(None, description="What the goal is about, in words (an item, a monster, a place).")
    count: int | None = Field(None, ge=1)


class QuestSpec(BaseModel):
    """One quest spec. Unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN, description="Quest id; also the output file name.")
    giver: str = Field(min_length=1, description="Entry id of the NPC who gives the quest.")
    objective: str = Field(min_length=1, description="What the player must do, in the designer's words.")
    title: str | None = Field(None, description="Working title; the generated title may differ unless keep_lines.title is set.")
    location: str | None = Field(None, description="Entry id of the place where the quest is given or happens.")
    factions: list[str] = Field(default_factory=list, description="Entry ids of factions involved.")
    npcs: list[str] = Field(default_factory=list, description="Entry ids of other NPCs involved.")
    lore: list[str] = Field(default_factory=list, description="Entry ids of further lore (items, events, creatures) to include.")
    reward: str | None = None
    tone: str | None = None
    language: str = Field("en", pattern=r"^[a-z]{2}$", description="ISO 639-1 code of the language the text must be in; the 'language' post-check fails other text (narrative.batch.checks.LANGUAGE_SCRIPTS).")
    constraints: list[str] = Field(default_factory=list, description="Rules the text must follow (in the prompt; mechanically checkable ones are must_mention, forbid, keep_lines).")
    must_mention: list[str] = Field(default_factory=list, description="Words or phrases that must appear somewhere in the text (case-insensitive).")
    forbid: list[str] = Field(default_factory=list, description="Words or phrases that must not appear anywhere in the text (case-insensitive, whole words).")
    keep_lines: dict[str, str] = Field(default_factory=dict, description="Field -> hand-written line used verbatim (enforced by the grammar).")
    stages: list[Stage] = Field(default_factory=lambda: list(CORE_STAGES), description="Dialogue stages to write, in order.")
    steps: list[Step] = Field(default_factory=list, description="Quest steps; one journal entry each. Without steps: entries 'started' and 'finished'.")
    goal: Goal | None = None
    deadline: str | None = Field(None, description="Time limit in words, e.g. '2 days'.")
    follows: str | None = Field(None, description="Id of the quest this one follows in a chain.")
    leads_to: str | None = Field(None, description="Id of the quest that follows this one.")
    notes: str | None = Field(None, description="Free text for the writer model (background the spec fields do not cover).")
    limits: dict[str, int] = Field(default_factory=dict, description="Field or stage -> max characters, overriding the defaults.")
    source: dict[str, str] = Field(default_factory=dict, description="Provenance of an imported spec (game, file, original id). Not shown to the model.")

    @field_validator("factions", "npcs", "lore", "must_mention", "forbid", "constraints", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("constraints", "must_mention", "forbid", mode="before")
    @classmethod
    def _unsplit_colon(cls, v: object) -> object:
        # YAML reads an unquoted list item like ``- No blades: Ashwardens ...`` as a one-key
        # mapping; a designer meant the sentence, so it is joined back into "key: value".
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            if isinstance(item, dict) and len(item) == 1:
                [(key, value)] = item.items()
                item = f"{key}: {value}"
            out.append(item)
        return out

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("stages repeat")
        if not v:
            raise ValueError("at least one stage is needed")
        return v

    @model_validator(mode="after")
    def _check(self) -> "QuestSpec":
        for key in self.keep_lines:
            if key not in KEEPABLE:
                raise ValueError(f"keep_lines.{key}: not a field that can be kept (one of {', '.join(KEEPABLE)})")
            if key in CORE_STAGES + EXTRA_STAGES and key not in self.stages:
                raise ValueError(f"keep_lines.{key}: stage {key!r} is not in stages {self.stages}")
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError("steps: ids repeat")
        for key in self.limits:
            if key not in KEEPABLE + ("journal",):
                raise ValueError(f"limits.{key}: unknown field (one of {', '.join(KEEPABLE + ('journal',))})")
        return self

    def referenced_ids(self) -> list[str]:
        """Entry ids the spec names, giver first, de-duplicated, in spec order."""
        seen: dict[str, None] = {}
        for eid in [self.giver, self.location, *self.factions, *self.npcs, *self.lore, *(s.location for s in self.steps)]:
            if eid:
                seen.setdefault(eid, None)
        return list(seen)

    def journal_steps(self) -> list[str]:
        """Journal entry ids: the step ids, or ``started``/``finished`` for a quest without steps."""
        return [s.id for s in self.steps] or ["started", "finished"]

    def digest(self) -> str:
        """sha256 of the spec's content (canonical JSON, ``source`` excluded: provenance does not shape text)."""
        data = self.model_dump(mode="json", exclude={"source"})
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class SpecFile:
    path: Path
    spec: QuestSpec


def _key_lines(text: str) -> dict[tuple, int]:
    """Map YAML paths (tuples of keys / indexes) to 1-based line numbers, best effort."""
    out: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node, path: tuple) -> None:
        out[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
                out[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return out


def parse_spec(text: str, path: Path) -> QuestSpec:
    """Validate one spec from YAML `text` (`path` is used in messages only).

    Raises:
        SpecError: YAML syntax errors or schema errors, as ``path:line: message``.
    """
    try:
        data = load_yaml(text)  # yaml.safe_load that refuses alias bombs
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise SpecError([f"{path}:{line}: YAML error: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: a quest spec must be a YAML mapping, got {type(data).__name__}"])
    data.setdefault("id", path.stem)
    try:
        return QuestSpec.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = 0
            for n in range(len(loc), -1, -1):
                if loc[:n] in lines:
                    line = lines[loc[:n]]
                    break
            field = ".".join(str(p) for p in loc) or "(spec)"
            problems.append(f"{path}:{line}: {field}: {err['msg']}")
        raise SpecError(problems) from None


def load_spec(path: Path) -> QuestSpec:
    """Read and validate one spec file. Raises `SpecError` (also for an unreadable file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}:0: cannot read: {exc}"]) from None
    return parse_spec(text, path)


SPEC_SUFFIXES = (".yaml", ".yml")


def load_specs(root: Path) -> tuple[list[SpecFile], list[str]]:
    """All specs under `root` (a folder, recursively, or one file), sorted by id.

    Returns:
        (specs, problems): problems are ``path:line: message`` strings; a bad file
        never stops the others. Duplicate ids are a problem (the second file is dropped).

    Raises:
        FileNotFoundError: `root` does not exist.
    """
    if not root.exists():
        raise FileNotFoundError(f"quest spec folder not found: {root}")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SPEC_SUFFIXES and p.is_file())
    specs: dict[str, SpecFile] = {}
    problems: list[str] = []
    for p in paths:
        try:
            spec = load_spec(p)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if spec.id in specs:
            problems.append(f"{p}:1: id {spec.id!r} already used by {specs[spec.id].path}")
            continue
        specs[spec.id] = SpecFile(p, spec)
    return [specs[k] for k in sorted(specs)], problems
