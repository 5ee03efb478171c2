from __future__ import annotations

import dataclasses
import enum
import json
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.contract import (
    DIALECT,
    Constraint,
    ContractError,
    check,
    constraint,
    json_schema,
    parse,
    to_json,
)
from kiln.errors import KilnError


class Shade(enum.StrEnum):
    LIGHT = "light"
    DARK = "dark"


@dataclass(frozen=True, kw_only=True)
class Part:
    """A part in a box."""

    size_bytes: int = field(metadata=constraint(minimum=1))
    label: str | None = field(default=None, metadata=constraint(min_length=1, max_length=8))


@dataclass(frozen=True, kw_only=True)
class Box:
    version: Literal[1, 2]
    name: str = field(metadata=constraint(pattern=r"^[a-z]+$", description="lower case"))
    shade: Shade = Shade.LIGHT
    ratio: float = field(default=0.5, metadata=constraint(minimum=0, maximum=1))
    sealed: bool = False
    parts: tuple[Part, ...] = field(default=(), metadata=constraint(max_items=3))
    spare: Part | None = None
    codes: tuple[str, ...] = field(default=(), metadata=constraint(pattern=r"^[A-F]{2}$",
                                                                   min_items=0))
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}),
                                      metadata=constraint(minimum=0, max_items=4))
    notes: dict[str, str] = field(default_factory=dict)

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.spare is not None and self.spare in self.parts:
            yield "spare", "is one of the parts too"
        if len(self.parts) > 1 and self.parts[0] == self.parts[1]:
            yield "parts[1]", "repeats parts[0]"


@dataclass(frozen=True, kw_only=True)
class Crate:
    boxes: tuple[Box, ...] = field(metadata=constraint(min_items=1))
    label: str = field(default="", metadata=constraint(max_length=4))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if len({box.name for box in self.boxes}) != len(self.boxes):
            yield "boxes", "names repeat"


@dataclass(frozen=True)
class Tree:
    name: str
    children: tuple[Tree, ...] = ()


def problems(cls: type, document: Any, *, checks: bool = True) -> tuple[str, ...]:
    with pytest.raises(ContractError) as caught:
        parse(cls, document, checks=checks)
    return caught.value.problems


def test_a_valid_document_and_its_defaults() -> None:
    box = parse(Box, {"version": 2, "name": "tools", "parts": [{"size_bytes": 3}]})
    assert box == Box(version=2, name="tools", parts=(Part(size_bytes=3),))
    assert box.shade is Shade.LIGHT and box.ratio == 0.5 and box.sealed is False
    assert box.spare is None and box.codes == () and box.notes == {}
    assert isinstance(box.parts, tuple)


def test_every_problem_is_listed_at_once_with_its_path() -> None:
    found = problems(Crate, {"label": "too long", "boxes": [
        {"version": 1, "name": "ok"},
        {"version": 3, "name": "Bad", "shade": "grey", "ratio": 1.5, "sealed": 1,
         "parts": [{"size_bytes": "abc"}, {"size_bytes": 0, "label": ""}, {}],
         "codes": ["AB", "XY"], "counts": {"a b": -1}, "colour": "red"},
    ]})
    assert found == (
        "boxes[1]: unknown key 'colour'",
        "boxes[1].version: expected 1 or 2, got 3",
        "boxes[1].name: expected a string matching ^[a-z]+$, got \"Bad\"",
        "boxes[1].shade: expected one of \"light\", \"dark\", got \"grey\"",
        "boxes[1].ratio: expected a number from 0 to 1, got 1.5",
        "boxes[1].sealed: expected true or false, got 1",
        "boxes[1].parts[0].size_bytes: expected an integer ≥ 1, got \"abc\"",
        "boxes[1].parts[1].size_bytes: expected an integer ≥ 1, got 0",
        "boxes[1].parts[1].label: expected a string of length from 1 to 8, got \"\"",
        "boxes[1].parts[2]: missing key 'size_bytes'",
        "boxes[1].codes[1]: expected a string matching ^[A-F]{2}$, got \"XY\"",
        "boxes[1].counts[\"a b\"]: expected an integer ≥ 0, got -1",
        "label: expected a string of length ≤ 4, got \"too long\"",
    )


def test_the_message_lists_every_problem_one_per_line() -> None:
    with pytest.raises(KilnError) as caught:
        parse(Part, {"size_bytes": 0, "label": 5}, subject="part")
    assert str(caught.value) == ("invalid part (2 problems):\n"
                                 "  size_bytes: expected an integer ≥ 1, got 0\n"
                                 "  label: expected a string of length from 1 to 8, got 5")


@pytest.mark.parametrize(("value", "ok"), [
    (1, True), (1.0, True), (True, False), (False, False), (1.5, False), ("1", False),
    (None, False), (float("nan"), False), (float("inf"), False), ([1], False),
])
def test_a_bool_is_never_an_integer(value: Any, ok: bool) -> None:
    if ok:
        part = parse(Part, {"size_bytes": value})
        assert part.size_bytes == 1 and type(part.size_bytes) is int
    else:
        assert problems(Part, {"size_bytes": value})[0].startswith(
            "size_bytes: expected an integer ≥ 1, got ")


def test_numbers_booleans_and_literals() -> None:
    box = parse(Box, {"version": 1.0, "name": "a", "ratio": 1, "sealed": True})
    assert box.version == 1 and type(box.version) is int
    assert box.ratio == 1.0 and type(box.ratio) is float
    assert box.sealed is True
    assert problems(Box, {"version": True, "name": "a", "ratio": 10**400}) == (
        "version: expected 1 or 2, got true",
        "ratio: expected a number from 0 to 1, got " + str(10**400)[:57] + "...")


def test_unknown_and_missing_keys() -> None:
    assert problems(Box, {"nme": "a", "extra": {}}) == (
        "unknown key 'nme'", "unknown key 'extra'", "missing key 'version'",
        "missing key 'name'")
    assert problems(Box, {"version": 1, "name": "a", "spare": {"size": 1}}) == (
        "spare: unknown key 'size'", "spare: missing key 'size_bytes'")


def test_keys_starting_with_an_underscore_are_notes() -> None:
    document = {"_comment": "line 3, rev B", "version": 1, "name": "a",
                "spare": {"size_bytes": 1, "_why": ["spare disk"]}}
    assert parse(Box, document) == parse(Box, {"version": 1, "name": "a",
                                               "spare": {"size_bytes": 1}})
    jsonschema.validate(document, json_schema(Box))
    assert problems(Box, {"version": 1, "name": "a", "comment_": 1}) == (
        "unknown key 'comment_'",)


def test_enum_problems_name_the_allowed_values() -> None:
    assert problems(Box, {"version": 1, "name": "a", "shade": "LIGHT"}) == (
        'shade: expected one of "light", "dark", got "LIGHT"',)
    assert problems(Box, {"version": 1, "name": "a", "shade": ["light"]}) == (
        'shade: expected one of "light", "dark", got an array of 1 item',)


def test_the_wrong_shape_of_value() -> None:
    assert problems(Box, []) == ("expected an object, got an array of 0 items",)
    assert problems(Box, {"version": 1, "name": "a", "parts": {}, "counts": [],
                          "spare": "x"}) == (
        "parts: expected an array, got an object",
        'spare: expected an object, got "x"',
        "counts: expected an object, got an array of 0 items")
    assert problems(Box, {"version": 1, "name": "a", "parts": [{"size_bytes": 1}] * 4}) == (
        "parts: expected at most 3 items, got 4",)
    assert problems(Crate, {"boxes": []}) == ("boxes: expected at least 1 item, got 0",)


def test_optional_fields_take_null() -> None:
    assert parse(Box, {"version": 1, "name": "a", "spare": None}).spare is None
    assert parse(Part, {"size_bytes": 1, "label": None}).label is None
    assert problems(Box, {"version": 1, "name": None}) == (
        "name: expected a string matching ^[a-z]+$, got null",)


def test_mappings_are_read_only() -> None:
    box = parse(Box, {"version": 1, "name": "a", "counts": {"x": 1}, "notes": {"k": "v"}})
    assert isinstance(box.counts, MappingProxyType) and dict(box.counts) == {"x": 1}
    assert box.notes == {"k": "v"} and type(box.notes) is dict
    with pytest.raises(TypeError):
        box.counts["y"] = 2  # type: ignore[index]


def test_a_final_dollar_ends_the_string_as_in_json_schema() -> None:
    assert problems(Box, {"version": 1, "name": "abc\n"}) == (
        'name: expected a string matching ^[a-z]+$, got "abc\\n"',)


def test_cross_checks_run_after_parsing_and_report_with_paths() -> None:
    part = {"size_bytes": 1}
    document = {"label": "x", "boxes": [
        {"version": 1, "name": "a", "parts": [part, part], "spare": part},
        {"version": 1, "name": "a"},
    ]}
    assert problems(Crate, document) == (
        "boxes[0].spare: is one of the parts too",
        "boxes[0].parts[1]: repeats parts[0]",
        "boxes: names repeat",  # a box's own problems do not hide the crate's
    )
    assert parse(Crate, document, checks=False).boxes[1].name == "a"
    # an object with a problem in a field is not built, so its rules are not checked
    document["boxes"][0]["ratio"] = 2  # type: ignore[index]
    assert problems(Crate, document) == ("boxes[0].ratio: expected a number from 0 to 1, got 2",)


def test_round_trip() -> None:
    box = Box(version=2, name="z", shade=Shade.DARK, ratio=0.25, sealed=True,
              parts=(Part(size_bytes=5, label="x"),), spare=Part(size_bytes=9), codes=("AB",),
              counts=MappingProxyType({"n": 3}), notes={"a": "b"})
    document = to_json(box)
    assert json.loads(json.dumps(document)) == document
    assert document["shade"] == "dark" and document["parts"] == [{"size_bytes": 5,
                                                                   "label": "x"}]
    assert parse(Box, document) == box
    check(box)
    with pytest.raises(ContractError, match="name: expected"):
        check(dataclasses.replace(box, name="Z"))


def test_unsupported_types_are_refused() -> None:
    @dataclass(frozen=True)
    class Listy:
        items: list[int]

    @dataclass(frozen=True)
    class Either:
        value: int | str

    with pytest.raises(TypeError, match="unsupported type"):
        parse(Listy, {"items": []})
    with pytest.raises(TypeError, match=r"only X \| None"):
        json_schema(Either)


def test_the_schema() -> None:
    schema = json_schema(Crate, schema_id="https://example.invalid/crate.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT and schema["$id"].endswith("crate.json")
    assert schema["required"] == ["boxes"] and schema["additionalProperties"] is False
    assert schema["properties"]["boxes"] == {"type": "array", "items": {"$ref": "#/$defs/Box"},
                                             "minItems": 1}
    box = schema["$defs"]["Box"]
    assert box["required"] == ["version", "name"]
    assert box["properties"]["name"] == {"description": "lower case", "type": "string",
                                         "pattern": "^[a-z]+$"}
    assert box["properties"]["shade"] == {"type": "string", "enum": ["light", "dark"],
                                          "default": "light"}
    assert box["properties"]["spare"] == {"anyOf": [{"$ref": "#/$defs/Part"},
                                                    {"type": "null"}], "default": None}
    assert box["properties"]["counts"] == {"type": "object", "additionalProperties": {
        "type": "integer", "minimum": 0}, "maxProperties": 4, "default": {}}
    assert schema["$defs"]["Part"]["description"] == "A part in a box."
    assert "description" not in box  # no docstring: not the one dataclass makes up


def test_a_recursive_model() -> None:
    schema = json_schema(Tree)
    assert schema["properties"]["children"]["items"] == {"$ref": "#"}
    assert "$defs" not in schema
    document = {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}
    jsonschema.Draft202012Validator(schema).validate(document)
    assert parse(Tree, document) == Tree("a", (Tree("b", (Tree("c"),)),))
    assert problems(Tree, {"name": "a", "children": [{"children": [{"name": 1}]}]}) == (
        "children[0]: missing key 'name'", "children[0].children[0].name: expected a string, "
        "got 1")


# Documents for a contract type: mostly well-formed, with junk at every level, so that
# hypothesis explores both sides of every rule.

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=3),
                 st.floats(allow_nan=False, allow_infinity=False), st.just([]), st.just({}))


def _rule(f: dataclasses.Field[Any]) -> Constraint:
    return next((v for v in f.metadata.values() if isinstance(v, Constraint)), Constraint())


def mostly(valid: st.SearchStrategy[Any],
           invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # hypothesis favours the ends of a range: the rare choice sits in the middle
    return st.integers(0, 39).flatmap(lambda dice: invalid if dice == 17 else valid)


def _numbers(tp: Any, rule: Constraint) -> st.SearchStrategy[Any]:
    low = None if rule.minimum is None else int(rule.minimum)
    high = None if rule.maximum is None else int(rule.maximum)
    edges = [edge for edge in (low and low - 1, high and high + 1) if edge is not None]
    integers = st.integers(low, high if high is not None else None if low is None else low * 4)
    valid = st.one_of(integers, integers.map(float))
    if tp is float:
        valid = st.one_of(valid, st.floats(low, high, allow_nan=False, allow_infinity=False))
    return mostly(valid, st.sampled_from(edges) if edges else st.floats(0.5, 0.5))


def _strings(rule: Constraint) -> st.SearchStrategy[str]:
    valid: st.SearchStrategy[str] = st.text(min_size=rule.min_length or 0,
                                            max_size=rule.max_length or 6)
    if rule.pattern is not None:
        valid = st.from_regex(rule.pattern, fullmatch=True).filter(
            lambda text: _within(len(text), rule.min_length, rule.max_length))
    # Python's jsonschema reads "$" as Python does (it also matches before a final newline);
    # the contract reads it as ECMA-262 does: leave that one difference out.
    return mostly(valid, st.text(max_size=(rule.max_length or 6) + 2)).filter(
        lambda text: not text.endswith("\n"))


def _within(size: int, low: int | None, high: int | None) -> bool:
    return (low is None or size >= low) and (high is None or size <= high)


def documents(tp: Any, rule: Constraint | None = None) -> st.SearchStrategy[Any]:
    """JSON documents for `tp`: mostly well-formed, with junk at every level."""
    valid = _valid_ish(tp, rule or Constraint())
    return mostly(valid, JUNK) if tp is not type(None) else st.none()


def _valid_ish(tp: Any, rule: Constraint) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    items_rule = dataclasses.replace(rule, min_items=None, max_items=None)
    if dataclasses.is_dataclass(tp):
        return st.deferred(lambda: _objects(typing.cast(type, tp)))
    if args and type(None) in args:
        return st.one_of(st.none(), *(documents(arg, rule) for arg in args))
    if origin is tuple:
        low, high = rule.min_items or 0, min(rule.max_items or 3, 3)
        items = documents(args[0], items_rule)
        return mostly(st.lists(items, min_size=low, max_size=high),
                      st.lists(items, min_size=max(low - 1, 0), max_size=high + 1))
    if origin in (dict, Mapping):
        return st.dictionaries(st.text(max_size=3), documents(args[1], items_rule), max_size=5)
    if origin is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        choices = args if origin is Literal else tuple(member.value for member in tp)
        return mostly(st.sampled_from(choices), st.sampled_from([True, 1.5, 3, "x"]))
    return st.booleans() if tp is bool else _strings(rule) if tp is str else _numbers(tp, rule)


def _objects(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        required_field = (f.default is dataclasses.MISSING
                          and f.default_factory is dataclasses.MISSING)
        (required if required_field else optional)[f.name] = documents(hints[f.name], _rule(f))
    names = sorted(required)

    def damage(document: dict[str, Any], dice: int) -> dict[str, Any]:
        if 20 <= dice < 20 + len(names):  # sometimes a required key is missing
            document.pop(names[dice - 20])
        elif dice == 19:  # or there is one too many
            document["unexpected"] = 1
        return document

    return st.builds(damage, st.fixed_dictionaries(required, optional=optional),
                     st.integers(0, 40 * len(names) + 40))


def accepted(cls: type, document: Any) -> bool:
    try:
        parse(cls, document, checks=False)
    except ContractError:
        return False
    return True


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents(Crate))
def test_the_schema_and_the_parser_agree(document: Any) -> None:
    validator = jsonschema.Draft202012Validator(json_schema(Crate))
    assert validator.is_valid(document) == accepted(Crate, document)
    if accepted(Crate, document):
        crate = parse(Crate, document, checks=False)
        assert parse(Crate, to_json(crate), checks=False) == crate
        assert validator.is_valid(to_json(crate))
