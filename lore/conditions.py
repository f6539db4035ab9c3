"""State conditions of lore entries: the ``when:`` field, checked against the game's state map.

A game sends a state map of flags and counters with a dialogue turn, e.g.
``{"quest.heron": "done", "gold": 12, "night": true}``. An entry's ``when`` maps
state keys to conditions; the entry may be used only while **all** of them hold::

    when:
      quest.heron: done                  # a scalar: equals
      weather: [rain, fog]               # a list of scalars: any of (equals one of them)
      gold: {gte: 10, lt: 100}           # a mapping of operators: all of them
      curfew: {exists: false}            # the key is not in the state

Keys are 1-64 characters of ``A-Z a-z 0-9 _ . -`` (`KEY`). State values are
strings, numbers (int or float) and booleans (`StateValue`). Operators:

``eq`` / ``ne``
    equals / does not equal a scalar. Values of different kinds are never
    equal: a string never equals a number (``"5"`` is not ``5``) and a boolean
    is not a number (``true`` is not ``1``); ``1`` equals ``1.0``. ``ne`` is
    exactly ``not eq``, so it holds for a missing key.
``gt`` / ``gte`` / ``lt`` / ``lte``
    compare with a number. The condition's value must be a finite int or float
    (a boolean is a load error); a state value that is not a number (a string,
    a boolean) does not hold, it is never an error.
``in``
    equals one of a non-empty list of scalars (same equality as ``eq``).
``exists``
    ``true``: the key is in the state (whatever its value); ``false``: it is not.

A key missing from the state makes every operator false except ``exists: false``
and ``ne``. A state value of another type (None, a list: the wire should never
carry one, see `validate_state`) is set but equals nothing and compares with
nothing. Condition values are validated when the lore file loads (unknown
operator, wrong value type, bad key, an empty ``when``/list/mapping are errors
naming the field); checking a state never raises.

`When` is the pydantic model of a ``when`` field: `When.holds`, `When.unmet` (what
failed, in words), `When.describe` (for display). It serializes back to the form
a designer writes (a scalar for ``eq`` alone, a list for ``in`` alone), so an entry
round-trips through the index catalog as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

StateValue = str | int | float | bool
"""A value in the game's state map."""
Scalar = str | int | float | bool
"""A value in a condition (``eq``, ``ne``, ``in``): finite numbers only."""

KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A state key: 1-64 characters of A-Z a-z 0-9 _ . - (``quest.heron``, ``gold``, ``npc.odile-brask.trust``)."""
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists")
_NUMERIC = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_YAML_WORDS = {"yes", "no", "on", "off", "true", "false", "y", "n", "null", "none", "~"}


def _kind(v: object) -> str | None:
    """'bool', 'number', 'str', or None for a value outside the language (bool before int: bool is an int in Python)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    return None


def same(a: object, b: object) -> bool:
    """Equality of the condition language: same kind (str, number, bool) and equal. ``1 == 1.0``; ``True`` is not ``1``."""
    k = _kind(a)
    return k is not None and k == _kind(b) and a == b


def is_number(v: object) -> bool:
    """An int or a float, not a bool."""
    return _kind(v) == "number"


def show(v: object) -> str:
    """A value as a designer would write it in YAML: ``done``, ``12``, ``true``, ``"12"`` (a string that reads as something else is quoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        if re.fullmatch(r"[A-Za-z_][\w.\-]*(?: [\w.\-]+)*", v) and v.lower() not in _YAML_WORDS:
            return v
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return repr(v)


def _got(v: object) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, (list, tuple)):
        return "a list"
    return f"{show(v)} ({type(v).__name__})"


def _scalar(v: object, what: str = "") -> Scalar:
    """`v` if it is a condition scalar, else a PydanticCustomError saying what (`what`: which part, '' for the field itself) needs."""
    k = _kind(v)
    if k is None:
        raise PydanticCustomError("when_value", "{what}needs a string, a number or true/false, got {got}", {"what": what, "got": _got(v)})
    if k == "number" and not math.isfinite(v):  # type: ignore[arg-type]
        raise PydanticCustomError("when_value", "{what}needs a finite number, got {got}", {"what": what, "got": show(v)})
    return v  # type: ignore[return-value]


def _scalars(v: object, what: str = "") -> tuple[Scalar, ...]:
    if not isinstance(v, (list, tuple)):
        raise PydanticCustomError("when_value", "{what}needs a list of values, got {got}", {"what": what, "got": _got(v)})
    if not v:
        raise PydanticCustomError("when_value", "{what}needs at least one value (an empty list never holds)", {"what": what})
    return tuple(_scalar(x, f"{what}item {i + 1}: ") for i, x in enumerate(v))


def _check_key(v: object) -> str:
    if not isinstance(v, str) or not KEY.fullmatch(v):
        hint = "; YAML reads an unquoted yes/no/on/off/true/false or a number as another type: quote it" if not isinstance(v, str) else ""
        raise PydanticCustomError("when_key", "state key {key}: use 1-64 characters of A-Z a-z 0-9 _ . -{hint}", {"key": repr(v), "hint": hint})
    return v


StateKey = Annotated[str, PlainValidator(_check_key)]


class Condition(BaseModel):
    """The condition on one state key: the operators that must all hold.

    Written as a scalar (``done``: ``eq``), a list of scalars (``[a, b]``: ``in``) or a
    mapping of operators (``{gte: 10, lt: 100}``); see the module docstring for each
    operator. Unset operators are None.

    Raises:
        pydantic.ValidationError: an unknown operator, a value of the wrong type
            (``gt: ten``, ``eq: [a]``, ``exists: 1``), an empty mapping or list.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    eq: Scalar | None = None
    ne: Scalar | None = None
    gt: float | int | None = None
    gte: float | int | None = None
    lt: float | int | None = None
    lte: float | int | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    exists: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        """A scalar means ``eq``, a list ``in``; a mapping must name only known operators."""
        if isinstance(v, Condition):
            return v
        if isinstance(v, Mapping):
            unknown = [k for k in v if k not in OPERATORS]
            if unknown:
                raise PydanticCustomError("when_operator", "unknown operator {op} (operators: {ops})", {"op": repr(unknown[0]), "ops": ", ".join(OPERATORS)})
            if not v:
                raise PydanticCustomError("when_value", "an empty mapping: give at least one operator ({ops})", {"ops": ", ".join(OPERATORS)})
            return v
        if isinstance(v, (list, tuple)):
            return {"in": _scalars(v, "a list (any of): ")}
        if _kind(v) is None:
            raise PydanticCustomError("when_value", "needs a value: a string, a number or true/false (equals), a list (any of) or a mapping of operators, got {got}", {"got": _got(v)})
        return {"eq": _scalar(v)}

    @field_validator("eq", "ne", mode="plain")
    @classmethod
    def _equality(cls, v: object) -> Scalar:
        return _scalar(v)

    @field_validator("gt", "gte", "lt", "lte", mode="plain")
    @classmethod
    def _number(cls, v: object) -> float | int:
        if not is_number(v) or not math.isfinite(v):  # type: ignore[arg-type]
            raise PydanticCustomError("when_value", "needs a finite number (not true/false, not a string), got {got}", {"got": _got(v)})
        return v  # type: ignore[return-value]

    @field_validator("in_", mode="plain")
    @classmethod
    def _any_of(cls, v: object) -> tuple[Scalar, ...]:
        return _scalars(v)

    @field_validator("exists", mode="plain")
    @classmethod
    def _exists(cls, v: object) -> bool:
        if not isinstance(v, bool):
            raise PydanticCustomError("when_value", "needs true or false, got {got}", {"got": _got(v)})
        return v

    @model_serializer(mode="plain")
    def _written(self) -> Any:
        """The form a designer writes: a scalar for ``eq`` alone, a list for ``in`` alone, else the set operators."""
        ops = self.ops()
        if list(ops) == ["eq"]:
            return ops["eq"]
        if list(ops) == ["in"]:
            return list(ops["in"])
        return {op: list(v) if op == "in" else v for op, v in ops.items()}

    def ops(self) -> dict[str, Any]:
        """The set operators, in `OPERATORS` order: {"gte": 10, "in": (...)}."""
        return {op: getattr(self, "in_" if op == "in" else op) for op in OPERATORS if getattr(self, "in_" if op == "in" else op) is not None}

    def failures(self, key: str, state: Mapping[str, object]) -> list[str]:
        """What does not hold for `key` in `state`, in words; empty when the condition holds."""
        present = key in state
        have = state.get(key)
        out: list[str] = []
        missing = False
        for op, want in self.ops().items():
            if op == "exists":
                if want and not present:
                    missing = True
                elif not want and present:
                    out.append(f"needs {key} unset, state has {key} = {show(have)}")
                continue
            if not present:
                if op != "ne":
                    missing = True
                continue
            if _holds(op, want, have):
                continue
            text = _phrase(key, op, want)
            if op in _NUMERIC and not is_number(have):
                out.append(f"needs {text}, state has {key} = {show(have)} (not a number)")
            else:
                out.append(f"needs {text}, state has {key} = {show(have)}")
        return ([f"{key} is not set"] if missing else []) + out

    def holds(self, key: str, state: Mapping[str, object]) -> bool:
        """Whether every operator holds for `key` in `state`."""
        present = key in state
        have = state.get(key)
        for op, want in self.ops().items():
            if op == "exists":
                if want != present:
                    return False
            elif not present:
                if op != "ne":
                    return False
            elif not _holds(op, want, have):
                return False
        return True

    def describe(self, key: str) -> str:
        """``quest.heron = done``, ``gold >= 10 and gold < 100``, ``curfew is not set``."""
        return " and ".join(_phrase(key, op, want) for op, want in self.ops().items())


def _holds(op: str, want: Any, have: object) -> bool:
    """One operator (other than ``exists``) against a present state value."""
    if op == "eq":
        return same(have, want)
    if op == "ne":
        return not same(have, want)
    if op == "in":
        return any(same(have, w) for w in want)
    if not is_number(have):
        return False
    if op == "gt":
        return have > want  # type: ignore[operator]
    if op == "gte":
        return have >= want  # type: ignore[operator]
    if op == "lt":
        return have < want  # type: ignore[operator]
    return have <= want  # type: ignore[operator]


def _phrase(key: str, op: str, want: Any) -> str:
    if op == "eq":
        return f"{key} = {show(want)}"
    if op == "ne":
        return f"{key} != {show(want)}"
    if op == "in":
        return f"{key} in {show(want)}"
    if op == "exists":
        return f"{key} is set" if want else f"{key} is not set"
    return f"{key} {_NUMERIC[op]} {show(want)}"


class When(RootModel[dict[StateKey, Condition]]):
    """An entry's ``when``: state key -> `Condition`; the entry may be used only while all hold.

    Raises:
        pydantic.ValidationError: not a mapping, empty, a bad key or a bad condition
            (the error's location names the key, and the operator where there is one).
    """

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        if isinstance(v, When):
            return v
        if not isinstance(v, Mapping):
            raise PydanticCustomError("when_type", "needs a mapping of state key -> condition, e.g. {example}, got {got}", {"example": "{quest.heron: done}", "got": _got(v)})
        if not v:
            raise PydanticCustomError("when_value", "an empty when: give at least one state key and its condition (or remove the field)")
        return v

    def holds(self, state: Mapping[str, object]) -> bool:
        """Whether every condition holds in `state` (key -> value; never raises, see the module docstring)."""
        return all(c.holds(k, state) for k, c in self.root.items())

    def unmet(self, state: Mapping[str, object]) -> list[str]:
        """What does not hold in `state`, one phrase each, in the order written; empty when `holds`.

        E.g. ``["needs quest.heron = done, state has quest.heron = started", "gold is not set"]``.
        """
        return [f for k, c in self.root.items() for f in c.failures(k, state)]

    def describe(self) -> str:
        """The whole condition for display: ``quest.heron = done and gold >= 10``."""
        return " and ".join(c.describe(k) for k, c in self.root.items())


def validate_state(state: Mapping[object, object]) -> dict[str, StateValue]:
    """A state map as the condition language reads it, for the boundary where it arrives (CLI, wire).

    Raises:
        ValueError: a key that is not a `KEY` string, or a value that is not a
            string, a finite number or a boolean (the message names the key).
    """
    out: dict[str, StateValue] = {}
    for k, v in state.items():
        if not isinstance(k, str) or not KEY.fullmatch(k):
            raise ValueError(f"state key {k!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
        kind = _kind(v)
        if kind is None or (kind == "number" and not math.isfinite(v)):  # type: ignore[arg-type]
            raise ValueError(f"state {k}: a value is a string, a finite number or true/false, got {_got(v)}")
        out[k] = v  # type: ignore[assignment]
    return out
