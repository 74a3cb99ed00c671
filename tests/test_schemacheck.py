"""The cheap schema check agrees with jsonschema on every bundled schema, near-misses included.

Instances are generated from each schema (valid values, then the ways a value
can nearly fit: a wrong type, an extra or missing field, a trailing newline, one
character off, a length just past a bound); jsonschema is the oracle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from pipelinejobs.messages import SCHEMA_FILES, fits, schema, schema_errors
from pipelinejobs.schemacheck import UnsupportedSchema, compile_schema
from tests.conftest import ROOT

END = "$(?![\\s\\S])"
KINDS = sorted(SCHEMA_FILES)
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

#: One value of each JSON type, the ways a field most often has the wrong type.
OTHER_TYPES = st.sampled_from([None, True, False, 0, 1, -1, 1.0, 1.5, "", "x", [], [1], {}, {"a": 1}])


def _valid_string(sub: dict[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in sub:
        return st.sampled_from(sub["enum"])
    low, high = sub.get("minLength", 0), sub.get("maxLength", 40)
    pattern = sub.get("pattern")
    if pattern is None:
        return st.text(min_size=low, max_size=min(high, 40))
    if pattern.startswith("^") and pattern.endswith(END):
        return st.from_regex(pattern[1 : -len(END)], fullmatch=True)
    return st.from_regex(pattern)


@st.composite
def _near_string(draw: st.DrawFn, sub: dict[str, Any]) -> str:
    """A string that nearly fits ``sub``: one character off, a newline, a whitespace."""
    good = draw(_valid_string(sub))
    position = draw(st.integers(0, len(good)))
    return draw(
        st.sampled_from(
            [
                good + "\n",
                "\n" + good,
                good + " ",
                good[:-1],
                good + "0",
                good.upper(),
                good[:position] + "\ud800" + good[position:],
                good[:position] + draw(st.characters()) + good[position + 1 :],
            ]
        )
    )


@st.composite
def _at_a_bound(draw: st.DrawFn, sub: dict[str, Any]) -> str:
    """A string one character either side of ``minLength`` or ``maxLength``, of characters that fit."""
    good = draw(_valid_string(sub))
    bounds = [sub[name] for name in ("minLength", "maxLength") if name in sub]
    size = max(draw(st.sampled_from(bounds)) + draw(st.sampled_from([-1, 0, 1])), 0)
    alphabet = st.sampled_from(good) if good else PRINTABLE
    return "".join(draw(st.lists(alphabet, min_size=size, max_size=size)))


def _types(sub: Any) -> list[str]:
    kind = sub.get("type", []) if isinstance(sub, dict) else []
    return [kind] if isinstance(kind, str) else kind


def _valid(sub: Any) -> st.SearchStrategy[Any]:
    """A value ``sub`` is meant to accept (jsonschema still decides)."""
    strategies: list[st.SearchStrategy[Any]] = []
    for name in _types(sub):
        if name == "string":
            strategies.append(_valid_string(sub))
        elif name == "object":
            strategies.append(_object(sub))
        elif name == "array":
            strategies.append(st.lists(_valid(sub.get("items", {})), max_size=3))
        elif name == "boolean":
            strategies.append(st.booleans())
        elif name == "null":
            strategies.append(st.none())
    return st.one_of(*strategies) if strategies else JSON_VALUES


def _near(sub: Any) -> st.SearchStrategy[Any]:
    """A value that nearly fits ``sub``: another type, or a string or object one step off."""
    strategies: list[st.SearchStrategy[Any]] = [OTHER_TYPES, OTHER_TYPES, JSON_VALUES]
    if "string" in _types(sub):
        strategies += [_near_string(sub)] * 3
        if "minLength" in sub or "maxLength" in sub:
            strategies += [_at_a_bound(sub)] * 2
    if "object" in _types(sub):
        strategies += [_one_off(sub)] * 3
    if "array" in _types(sub):
        strategies.append(st.lists(_near(sub.get("items", {})), min_size=1, max_size=2))
    return st.one_of(*strategies)


@st.composite
def _object(draw: st.DrawFn, sub: dict[str, Any]) -> dict[str, Any]:
    """An object with every required property and some optional ones, each valid."""
    required = set(sub.get("required", ()))
    return {
        name: draw(_valid(prop))
        for name, prop in sub.get("properties", {}).items()
        if name in required or draw(st.booleans())
    }


@st.composite
def _one_off(draw: st.DrawFn, sub: dict[str, Any]) -> dict[str, Any]:
    """A valid object with one thing wrong: a near-miss value, a missing field or an extra one."""
    out = draw(_object(sub))
    change = draw(st.sampled_from(["value", "value", "value", "missing", "extra"]))
    properties = sub.get("properties", {})
    if change == "value" and properties:
        name = draw(st.sampled_from(sorted(properties)))
        out[name] = draw(_near(properties[name]))
    elif change == "missing" and out:
        del out[draw(st.sampled_from(sorted(out)))]
    else:
        name = draw(st.sampled_from([*properties, "extra"]))
        out[name + draw(st.sampled_from(["\n", "_", "X", ""]))] = draw(JSON_VALUES)
    return out


def _messages(kind: str) -> st.SearchStrategy[Any]:
    return st.one_of(_object(schema(kind)), _one_off(schema(kind)), _one_off(schema(kind)), JSON_VALUES)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cheap_check_agrees_with_jsonschema(kind: str, data: st.DataObject) -> None:
    instance = data.draw(_messages(kind))
    oracle = Draft7Validator(schema(kind)).is_valid(instance)
    assert fits(kind, instance) is oracle, json.dumps(instance, ensure_ascii=True)


def _fields() -> list[tuple[str, tuple[str, ...]]]:
    """Every property of every schema, nested ones included, as (kind, path)."""
    found: list[tuple[str, tuple[str, ...]]] = []

    def walk(kind: str, sub: dict[str, Any], path: tuple[str, ...]) -> None:
        for name, prop in sub.get("properties", {}).items():
            found.append((kind, (*path, name)))
            walk(kind, prop, (*path, name))

    for kind in KINDS:
        walk(kind, schema(kind), ())
    return found


@st.composite
def _with_near_field(draw: st.DrawFn, kind: str, path: tuple[str, ...]) -> dict[str, Any]:
    """A valid instance but for the field at ``path``, which nearly fits."""
    outer = draw(_object(schema(kind)))
    sub, holder = schema(kind), outer
    for name in path[:-1]:
        sub = sub["properties"][name]
        holder[name] = holder.get(name) if isinstance(holder.get(name), dict) else draw(_object(sub))
        holder = holder[name]
    holder[path[-1]] = draw(_near(sub["properties"][path[-1]]))
    return outer


@pytest.mark.parametrize(("kind", "path"), _fields(), ids=[f"{k}:{'.'.join(p)}" for k, p in _fields()])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_field_nearly_fitting_is_judged_alike(kind: str, path: tuple[str, ...], data: st.DataObject) -> None:
    instance = data.draw(_with_near_field(kind, path))
    oracle = Draft7Validator(schema(kind)).is_valid(instance)
    assert fits(kind, instance) is oracle, json.dumps(instance, ensure_ascii=True)


@pytest.mark.parametrize("kind", KINDS)
def test_the_generator_reaches_both_answers(kind: str) -> None:
    """Agreement means something only if both valid and invalid instances are generated."""
    options = settings(
        database=None, max_examples=2000, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    oracle = Draft7Validator(schema(kind))
    valid = find(_messages(kind), oracle.is_valid, settings=options)
    invalid = find(_messages(kind), lambda x: not oracle.is_valid(x), settings=options)
    assert fits(kind, valid) and not fits(kind, invalid)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uuid", "1073f4ff-c2b9-5190-bd9a-e6a406d9796a\n"),
        ("token", "0dc73dc3ff39b49a\n"),
        ("event_id", "delivery-1\n"),
        ("event_id", "has space"),
        ("event_id", ""),
        ("event_id", "x" * 129),
        ("event_id", "caf\u00e9"),
    ],
)
def test_a_trailing_newline_or_a_bad_delivery_id_is_refused_by_both(field: str, value: str) -> None:
    event = {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "run", "token": "0dc73dc3ff39b49a", field: value}
    assert not fits("event", event)
    assert not Draft7Validator(schema("event")).is_valid(event)
    assert any(reason.startswith(field) for reason in schema_errors("event", event))


def test_delivery_id_bounds() -> None:
    base = {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "run"}
    for good in ("a", "x" * 128, "tapis:8b57afe8-16ba-4eee-989c-bb71a8759cf7", "!~"):
        assert fits("event", {**base, "event_id": good}), good
    assert not fits("event", {**base, "event_id": 7})


def test_child_of_with_a_trailing_newline_is_refused() -> None:
    create = {"pipeline_uuid": "10650844-1baa-55c5-a481-5e945b19c065", "archive_path": "/a", "data": {}}
    assert fits("create", {**create, "child_of": ["10483e8d-6602-532a-8941-176ce20dd05a"]})
    assert not fits("create", {**create, "child_of": ["10483e8d-6602-532a-8941-176ce20dd05a\n"]})
    assert not fits("create", {**create, "pipeline_uuid": create["pipeline_uuid"] + "\n"})


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "integer"},
        {"minimum": 3},
        {"items": [{"type": "string"}]},
        {"enum": [1, 2]},
        {"properties": {"a": {"format": "email"}}},
        {"$ref": "#/definitions/x"},
    ],
)
def test_a_keyword_the_checker_does_not_know_is_refused_when_built(bad: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema(bad)


def test_valid_messages_are_classified_without_importing_jsonschema() -> None:
    code = """
import sys
from pipelinejobs.intake import Intake
from pipelinejobs.messages import classify
msgs = [
    ({"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "update", "token": "0dc73dc3ff39b49a", "data": {}}, {}),
    ({"pipeline_uuid": "10650844-1baa-55c5-a481-5e945b19c065", "archive_path": "/a", "data": {}}, {}),
    ({"k": 1}, {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "run", "token": "0dc73dc3ff39b49a"}),
]
for body, params in msgs:
    classify(Intake(body=body, content_type="application/json", params=params))
print("jsonschema" in sys.modules)
try:
    classify(Intake(body={"colour": "blue"}, content_type="application/json"))
except Exception as exc:
    print("jsonschema" in sys.modules, "unexpected field 'colour'" in str(exc))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout + out.stderr
