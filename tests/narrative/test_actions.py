"""NPC action declarations and tail parsing (`narrative.actions`), without a model."""

from __future__ import annotations

import pytest


def test_declaration_checks_refuse_what_cannot_be_enforced():
    """Unit checks of `narrative.actions.check_action_set` (no model): each refusal names the action and property."""
    from narrative.actions import ActionSet, ActionSpec, FieldSpec, UnsupportedSchema, check_action_set

    def refused(params=None, fields=(), name="act") -> str:
        with pytest.raises(UnsupportedSchema) as exc:
            check_action_set(ActionSet(actions=(ActionSpec(name, "", params or {"type": "object", "properties": {}}),), fields=fields))
        return str(exc.value)

    assert "pattern" in refused({"type": "object", "properties": {"p": {"type": "string", "pattern": "(a+)+$"}}})  # backtracking risk
    assert "'p'" in refused({"type": "object", "properties": {"p": {"type": "array"}}})
    assert "maxLength" in refused({"type": "object", "properties": {"p": {"type": "string", "maxLength": 5000}}})
    assert "additionalProperties" in refused({"type": "object", "properties": {}, "additionalProperties": True})
    assert "required" in refused({"type": "object", "properties": {}, "required": ["ghost"]})
    assert "enum value" in refused({"type": "object", "properties": {"p": {"type": "string", "enum": ['say "hi"']}}})
    assert "enum value" in refused({"type": "object", "properties": {"p": {"type": "integer", "enum": ["1"]}}})
    assert "field 'emotion'" in refused(fields=(FieldSpec("emotion", ("ok", "<x>")),))
    # sizes: the declaration is prompt text and grammar alternatives on every turn
    assert "at most 16 properties" in refused({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(17)}})
    assert "at most 64 values" in refused({"type": "object", "properties": {"p": {"type": "string", "enum": [f"v{i}" for i in range(65)]}}})
    assert "over 64 characters" in refused({"type": "object", "properties": {"p": {"type": "string", "enum": ["x" * 65]}}})
    assert "'description' is at most" in refused({"type": "object", "properties": {"p": {"type": "string", "description": "d" * 400}}})
    check_action_set(ActionSet(actions=(ActionSpec("pick", "", {"type": "object", "properties": {
        f"p{i}": {"type": "string", "enum": [f"v{j}" for j in range(64)]} for i in range(16)}}),)))  # the limits themselves pass
    check_action_set(ActionSet(actions=(ActionSpec("give", "", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}),)))


def test_tail_parsing_rejects_what_the_schema_forbids_and_caps_max_actions():
    """`narrative.actions.parse_tail` on hand-written tails (the grammar would not produce most of these)."""
    from narrative.actions import ActionSet, ActionSpec, FieldSpec, parse_tail

    aset = ActionSet(actions=(ActionSpec("give", "", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3}},
                                                     "required": ["n"]}),), fields=(FieldSpec("mood", ("calm", "cross")),), max_actions=1)
    call = '<tool_call>\n<function={}>\n<parameter=n>\n{}\n</parameter>\n</function>\n</tool_call>'
    fields = '<tool_call>\n<function=line_fields>\n<parameter=mood>\ncalm\n</parameter>\n</function>\n</tool_call>'
    r = parse_tail("\n\n" + fields + "\n" + call.format("give", 2) + "\n" + call.format("give", 3), aset, "qwen-xml")
    assert r.fields == {"mood": "calm"} and r.actions == [("give", {"n": 2})] and r.rejected == [("give", "over max_actions (1)")]
    r = parse_tail("\n\n" + call.format("give", 9) + "\n" + call.format("steal", 1), aset, "qwen-xml")
    assert r.actions == [] and r.rejected[0][0] == "give" and "maximum" in r.rejected[0][1] and "not a declared" in r.rejected[1][1]
    r = parse_tail('\n{"mood": "cross", "actions": [{"name": "give", "args": {"n": 1, "extra": true}}]}', aset, "json")
    assert r.fields == {"mood": "cross"} and r.actions == [] and "extra" in r.rejected[0][1]
    r = parse_tail('\n{"mood": "cro', aset, "json", complete=False)
    assert r.actions == [] and "cut" in r.rejected[0][1]
