"""Accept or refuse an instance against a bundled schema without importing jsonschema.

A cold ``reactor.py`` spent 42-50 ms importing jsonschema (and its referencing,
rpds and attrs) to say yes to a valid message. This checker reads the same
schema files and understands only the draft-07 keywords they use; it answers
yes/no in microseconds after about 1 ms of setup. jsonschema stays the one
source of *reasons*: it is imported only to explain a refusal. A schema using
any other keyword is refused when its checker is built, so the two can never
silently disagree; tests/test_schemacheck.py checks with hypothesis that both
accept the same instances for every bundled schema.

Semantics follow JSON Schema draft-07 as python-jsonschema implements it: a
keyword applies only to instances of its type, ``pattern`` is ``re.search``,
lengths count code points, ``bool`` is not an integer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

#: Keywords that never affect validity.
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
KEYWORDS = frozenset(
    {"type", "required", "properties", "additionalProperties", "enum", "pattern", "minLength", "maxLength", "items"}
)
_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class UnsupportedSchema(ValueError):
    """The schema uses a keyword or form this checker does not implement."""


def compile_schema(schema: Any, where: str = "#") -> Check:
    """A function telling whether an instance is valid against ``schema``."""
    if schema is True or schema == {}:
        return lambda _v: True
    if schema is False:
        return lambda _v: False
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: a schema must be an object or a boolean")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"{where}: unsupported keyword(s) {', '.join(sorted(unknown))}")
    checks = [check for check in _keyword_checks(schema, where) if check is not None]
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _keyword_checks(schema: dict[str, Any], where: str) -> list[Check | None]:
    return [
        _type(schema.get("type"), where),
        _enum(schema.get("enum"), where),
        _string(schema, where),
        _object(schema, where),
        _items(schema.get("items"), where),
    ]


def _type(names: Any, where: str) -> Check | None:
    if names is None:
        return None
    names = [names] if isinstance(names, str) else names
    unknown = [name for name in names if name not in _TYPES]
    if unknown:
        raise UnsupportedSchema(f"{where}: unsupported type(s) {unknown}")
    tests = [_TYPES[name] for name in names]
    return lambda value: any(test(value) for test in tests)


def _enum(values: Any, where: str) -> Check | None:
    if values is None:
        return None
    if not all(isinstance(v, str) for v in values):
        raise UnsupportedSchema(f"{where}: only enums of strings are supported")
    allowed = frozenset(values)
    return lambda value: isinstance(value, str) and value in allowed


def _string(schema: dict[str, Any], where: str) -> Check | None:
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    search = re.compile(schema["pattern"]).search if "pattern" in schema else None
    if low == 0 and high is None and search is None:
        return None

    def check(value: Any) -> bool:
        if not isinstance(value, str):
            return True
        if len(value) < low or (high is not None and len(value) > high):
            return False
        return search is None or search(value) is not None

    return check


def _object(schema: dict[str, Any], where: str) -> Check | None:
    required = tuple(schema.get("required", ()))
    properties = {
        name: compile_schema(sub, f"{where}/properties/{name}") for name, sub in schema.get("properties", {}).items()
    }
    extra = schema.get("additionalProperties", True)
    extra_check = None if extra is True else compile_schema(extra, f"{where}/additionalProperties")
    if not required and not properties and extra_check is None:
        return None

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        if any(name not in value for name in required):
            return False
        for key, item in value.items():
            sub = properties.get(key)
            if sub is not None:
                if not sub(item):
                    return False
            elif extra_check is not None and not extra_check(item):
                return False
        return True

    return check


def _items(items: Any, where: str) -> Check | None:
    if items is None:
        return None
    if isinstance(items, list):
        raise UnsupportedSchema(f"{where}: tuple-form items are not supported")
    each = compile_schema(items, f"{where}/items")
    return lambda value: not isinstance(value, list) or all(each(item) for item in value)
