"""Contracts: a JSON document defined once, as frozen dataclasses.

From one frozen dataclass come the parser of untrusted documents (`parse`: every problem,
each with its JSON path, in one `ContractError`), the serialiser (`to_json`) and the published
JSON Schema (`json_schema`, draft 2020-12). Field types:

    str, int, float, bool      bool is never an int; an int is a number; 1.0 is the integer 1
                               (as in JSON Schema); NaN and infinities are never numbers
    enum.StrEnum, Literal[…]   closed sets: a problem names the allowed values
    X | None                   null is allowed; any field with a default may be left out
    tuple[X, ...]              a JSON array (frozen models hold tuples, never lists)
    Mapping[str, X]            a JSON object with free keys, held read-only as a
                               MappingProxyType (so such a model is not hashable);
                               dict[str, X] is accepted too and stays a dict
    a frozen dataclass         a JSON object: unknown and missing keys are problems, but
                               keys starting with `_` are the author's notes and ignored

Constraints sit in field metadata, `field(metadata=constraint(minimum=1))`. `min_items` and
`max_items` bound a tuple or mapping, the others the value or each item. Patterns are
searched, as JSON Schema does, so anchor them with ^…$; Python compiles them with re.ASCII and
reads a final `$` as the end of the string, as ECMA-262 does.

Rules that no single field can express go in a method `cross_checks(self)` yielding
(relative path, message) pairs; it runs once its object parsed without a problem (its own
problems do not stop the objects around it from being checked in turn). `parse(...,
checks=False)` skips them: what remains is exactly what the JSON Schema says.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from kiln.errors import KilnError

DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMMENT_PREFIX = "_"  # `"_note": "…"` anywhere in a document: ignored, never an error
_KEY = "kiln.contract"
_UNIONS = (typing.Union, types.UnionType)
_MAPPINGS = (dict, Mapping)
_SCALARS = {bool: ("boolean", "true or false"), int: ("integer", "an integer"),
            float: ("number", "a number"), str: ("string", "a string")}

T = TypeVar("T")


class ContractError(KilnError):
    """A document breaks its contract; `problems` lists every problem, each with its path."""

    def __init__(self, problems: Sequence[str], *, subject: str = "document"):
        self.problems = tuple(problems)
        count = len(self.problems)
        super().__init__(f"invalid {subject} ({count} problem{'' if count == 1 else 's'}):\n  "
                         + "\n  ".join(self.problems))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constraint:
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None
    description: str = ""


_NO_RULE = Constraint()


def constraint(*, minimum: float | None = None, maximum: float | None = None,
               min_length: int | None = None, max_length: int | None = None,
               pattern: str | None = None, min_items: int | None = None,
               max_items: int | None = None, description: str = "") -> dict[str, Any]:
    """Field metadata for `dataclasses.field(metadata=...)`: `parse` checks it and
    `json_schema` publishes it."""
    if pattern is not None:
        _regex(pattern)  # a bad pattern fails where the model is defined
    return {_KEY: Constraint(minimum=minimum, maximum=maximum, min_length=min_length,
                             max_length=max_length, pattern=pattern, min_items=min_items,
                             max_items=max_items, description=description)}


def parse(cls: type[T], document: Any, *, checks: bool = True, subject: str = "document") -> T:
    """An untrusted JSON value (as `json.loads` returns it) as a `cls`; raise `ContractError`
    listing every problem."""
    parser = _Parser(checks=checks)
    value = parser.value(cls, document, "", _NO_RULE)
    if parser.problems:
        raise ContractError(parser.problems, subject=subject)
    return typing.cast(T, value)


def check(obj: Any) -> None:
    """Raise `ContractError` if a model built in Python breaks its own contract."""
    parse(type(obj), to_json(obj))


def to_json(obj: Any) -> Any:
    """A model as plain JSON values (every field written, defaults and nulls included)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_json(item) for item in obj]
    if isinstance(obj, Mapping):
        return {key: to_json(item) for key, item in obj.items()}
    return obj


def json_schema(cls: type, *, schema_id: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a contract; nested models are `$defs`."""
    schemas = _Schemas()
    schemas.names[cls] = ""  # the root is the document itself: "#"
    document: dict[str, Any] = {"$schema": DIALECT}
    if schema_id:
        document["$id"] = schema_id
    document.update(schemas.object(cls))
    if schemas.defs:
        document["$defs"] = dict(sorted(schemas.defs.items()))
    return document


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any, Constraint], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name], f.metadata.get(_KEY, _NO_RULE))
                 for f in dataclasses.fields(cls) if f.init)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"  # Python's $ also matches before a final newline
    return re.compile(pattern, re.ASCII)


def _optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if len(args) != 2 or type(None) not in args:
        raise TypeError(f"unsupported union {tp!r} in a contract: only X | None")
    return args[0] if args[1] is type(None) else args[1]


def _item_type(tp: Any) -> Any:
    args, mapping = typing.get_args(tp), typing.get_origin(tp) in _MAPPINGS
    if (args[0] is not str) if mapping else (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"unsupported {tp!r} in a contract: only tuple[X, ...], "
                        "Mapping[str, X] and dict[str, X]")
    return args[-1] if mapping else args[0]


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.StrEnum)


def _join(path: str, key: str) -> str:
    if not path or not key:
        return path or key
    return path + key if key.startswith("[") else f"{path}.{key}"


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    return f" ≥ {low}" if low is not None else f" ≤ {high}" if high is not None else ""


def _describe(tp: Any, rule: Constraint) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(json.dumps(arg) for arg in typing.get_args(tp))
    if _is_enum(tp):
        return "one of " + ", ".join(json.dumps(member.value) for member in tp)
    if tp not in _SCALARS:
        return "an array" if origin is tuple else "an object"
    if tp is not str:
        return _SCALARS[tp][1] + _bounds(rule.minimum, rule.maximum)
    size = _bounds(rule.min_length, rule.max_length)
    text = ("a non-empty string" if size == " ≥ 1" else
            f"a string of length{size}" if size else "a string")
    return text + (f" matching {rule.pattern}" if rule.pattern else "")


def _within(size: float, low: float | None, high: float | None) -> bool:
    return (low is None or size >= low) and (high is None or size <= high)


_INVALID: Any = object()  # stands for a value that had problems (already recorded)


class _Parser:
    def __init__(self, *, checks: bool):
        self.checks = checks
        self.problems: list[str] = []
        self.broken = 0  # problems that leave a value unbuilt (not those of cross checks)

    def problem(self, path: str, message: str) -> Any:
        self.problems.append(f"{_at(path)}{message}")
        self.broken += 1
        return _INVALID

    def fail(self, path: str, tp: Any, rule: Constraint, value: Any) -> Any:
        return self.problem(path, f"expected {_describe(tp, rule)}, got {_show(value)}")

    def value(self, tp: Any, value: Any, path: str, rule: Constraint) -> Any:
        origin = typing.get_origin(tp)
        if origin in _UNIONS:
            return None if value is None else self.value(_optional(tp), value, path, rule)
        if dataclasses.is_dataclass(tp):
            return self.object(typing.cast(type, tp), value, path)
        if origin is tuple or origin in _MAPPINGS:
            return self.container(tp, value, path, rule)
        if origin is Literal:
            choices = [choice for choice in typing.get_args(tp) if value == choice
                       and isinstance(value, bool) == isinstance(choice, bool)]
            return choices[0] if choices else self.fail(path, tp, rule, value)
        if _is_enum(tp):
            known = isinstance(value, str) and value in {member.value for member in tp}
            return tp(value) if known else self.fail(path, tp, rule, value)
        return self.scalar(tp, value, path, rule)

    def scalar(self, tp: Any, value: Any, path: str, rule: Constraint) -> Any:
        if tp not in _SCALARS:
            raise TypeError(f"unsupported type {tp!r} in a contract")
        if isinstance(value, str):
            ok = tp is str and _within(len(value), rule.min_length, rule.max_length) and (
                rule.pattern is None or _regex(rule.pattern).search(value) is not None)
        elif isinstance(value, int | float) and not isinstance(value, bool) and tp in (int, float):
            number = (int(value) if tp is int and isinstance(value, float) and value.is_integer()
                      else float(value) if tp is float and abs(value) < 2**1023 else value)
            if (isinstance(number, tp) and (tp is int or math.isfinite(number))
                    and _within(number, rule.minimum, rule.maximum)):
                return number  # 1.0 is the integer 1, as in JSON Schema
            ok = False
        else:
            ok = tp is bool and isinstance(value, bool)
        return value if ok else self.fail(path, tp, rule, value)

    def container(self, tp: Any, value: Any, path: str, rule: Constraint) -> Any:
        mapping = typing.get_origin(tp) in _MAPPINGS
        if not isinstance(value, dict if mapping else list | tuple):
            return self.fail(path, tp, rule, value)
        if not _within(len(value), rule.min_items, rule.max_items):
            bounds = _bounds(rule.min_items, rule.max_items)
            noun = ("key" if mapping else "item") + ("" if bounds.endswith(" 1") else "s")
            bounds = bounds.replace("≥", "at least").replace("≤", "at most")
            self.problem(path, f"expected{bounds} {noun}, got {len(value)}")
        mark, item_type = self.broken, _item_type(tp)
        item_rule = dataclasses.replace(rule, min_items=None, max_items=None)
        if isinstance(value, dict):
            items = {key: self.value(item_type, item, _join(path, f"[{json.dumps(key)}]"),
                                     item_rule) for key, item in value.items()}
            proxy = typing.get_origin(tp) is Mapping
            parsed: Any = types.MappingProxyType(items) if proxy else items
        else:
            parsed = tuple(self.value(item_type, item, f"{path}[{index}]", item_rule)
                           for index, item in enumerate(value))
        return _INVALID if self.broken > mark else parsed

    def object(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            return self.fail(path, cls, _NO_RULE, value)
        mark, fields = self.broken, _fields(cls)
        names = {f.name for f, _, _ in fields}
        for key in value:
            if key not in names and not str(key).startswith(COMMENT_PREFIX):
                self.problem(path, f"unknown key {key!r}")
        arguments: dict[str, Any] = {}
        for f, tp, rule in fields:
            if f.name in value:
                arguments[f.name] = self.value(tp, value[f.name], _join(path, f.name), rule)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.problem(path, f"missing key {f.name!r}")
        if self.broken > mark:
            return _INVALID
        obj = cls(**arguments)
        cross_checks: Callable[[], Iterable[tuple[str, str]]] | None = getattr(
            obj, "cross_checks", None)
        if self.checks and cross_checks is not None:
            self.problems += [f"{_at(_join(path, where))}{message}"
                              for where, message in cross_checks()]
        return obj


class _Schemas:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self.names: dict[type, str] = {}

    def object(self, cls: type) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f, tp, rule in _fields(cls):
            schema = self.schema(tp, rule)
            if rule.description:
                schema = {"description": rule.description, **schema}
            if f.default is not dataclasses.MISSING:
                schema["default"] = to_json(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                schema["default"] = to_json(f.default_factory())
            else:
                required.append(f.name)
            properties[f.name] = schema
        doc = cls.__doc__ or ""
        described = {} if doc.startswith(f"{cls.__name__}(") else {
            "description": inspect.cleandoc(doc)}  # dataclass makes up a signature
        return {"title": cls.__name__, **described, "type": "object", "properties": properties,
                "patternProperties": {f"^{COMMENT_PREFIX}": {}},
                "required": required, "additionalProperties": False}

    def schema(self, tp: Any, rule: Constraint) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        if origin in _UNIONS:
            return {"anyOf": [self.schema(_optional(tp), rule), {"type": "null"}]}
        if dataclasses.is_dataclass(tp):
            cls = typing.cast(type, tp)
            if cls not in self.names:
                taken = cls.__name__ in self.names.values()  # two models share a name
                self.names[cls] = f"{cls.__module__}.{cls.__qualname__}" if taken else cls.__name__
                self.defs[self.names[cls]] = self.object(cls)
            return {"$ref": f"#/$defs/{self.names[cls]}" if self.names[cls] else "#"}
        if origin is tuple or origin in _MAPPINGS:
            items = self.schema(_item_type(tp), dataclasses.replace(rule, min_items=None,
                                                                    max_items=None))
            words = ("array", "items", "minItems", "maxItems") if origin is tuple else (
                "object", "additionalProperties", "minProperties", "maxProperties")
            return _present({"type": words[0], words[1]: items, words[2]: rule.min_items,
                             words[3]: rule.max_items})
        return _leaf_schema(tp, rule)


def _leaf_schema(tp: Any, rule: Constraint) -> dict[str, Any]:
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        return {"const": choices[0]} if len(choices) == 1 else {"enum": choices}
    if _is_enum(tp):
        return {"type": "string", "enum": [member.value for member in tp]}
    if tp not in _SCALARS:
        raise TypeError(f"unsupported type {tp!r} in a contract")
    bounds = ({"minLength": rule.min_length, "maxLength": rule.max_length,
               "pattern": rule.pattern} if tp is str else
              {} if tp is bool else {"minimum": rule.minimum, "maximum": rule.maximum})
    return _present({"type": _SCALARS[tp][0], **bounds})


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if value is not None}
