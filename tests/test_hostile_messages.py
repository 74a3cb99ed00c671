"""Hostile input at classification: what no store can keep is a clear bad_message, anywhere in a message.

Lone surrogates, integers beyond int64, numbers that overflow to infinity and data
nested past the documented limit are refused naming the field, never the value;
a Tapis notification's ``event.data`` string gets the same rules; and reactor.py
answers each with exit 1, no traceback and both stores unchanged.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.intake import Intake, Origin, parse_message
from pipelinejobs.limits import MAX_DEPTH
from pipelinejobs.messages import EventMessage, classify
from tests.conftest import EXAMPLE_PIPELINE_ID, EXAMPLE_PIPELINE_UUID, REACTOR, Reactor, ReactorResult
from tests.test_tapis import JOB_UUID, TOKEN, tapis_notification

PIPELINE = "10650844-1baa-55c5-a481-5e945b19c065"
SURROGATE = "\ud800"


def _refusal(body: Any, **params: str) -> PipelineJobsError:
    with pytest.raises(PipelineJobsError) as err:
        classify(Intake(body=body, content_type="application/json", params=params))
    error = err.value
    assert error.kind is ErrorKind.BAD_MESSAGE
    error.message.encode("utf-8")  # the answer itself must be sendable
    json.dumps(error.to_dict(), ensure_ascii=False).encode("utf-8")
    return error


def _event(data: Any) -> dict[str, Any]:
    return {"uuid": JOB_UUID, "name": "update", "token": TOKEN, "data": data}


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# -- lone surrogates --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "params", "field"),
    [
        (_event({"note": "ok" + SURROGATE}), {}, "data.note"),
        (_event({"list": [1, ["x", SURROGATE]]}), {}, "data.list[1][1]"),
        (_event({"k" + SURROGATE: 1}), {}, "data"),
        (_event({"deep": {SURROGATE: 1}}), {}, "data.deep"),
        (
            {"pipeline_uuid": PIPELINE, "archive_path": "/a", "data": {}, "session": "s" + SURROGATE},
            {},
            "session",
        ),
        ({"a": 1}, {"uuid": JOB_UUID, "name": "run", "session": SURROGATE}, "URL parameter 'session'"),
        ({"a": 1}, {"uuid": JOB_UUID, "name": "run", "event_id": "x" + SURROGATE}, "URL parameter 'event_id'"),
        ("plain text " + SURROGATE, {}, "(message)"),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_bad_message_naming_the_field(
    body: Any, params: dict[str, str], field: str
) -> None:
    error = _refusal(body, **params)
    assert error.message.startswith(field + ":"), error.message
    assert "surrogate" in error.message and error.details["field"] == field
    assert SURROGATE not in error.message


def test_a_surrogate_in_abacos_context_is_refused_too() -> None:
    intake = Intake(body=_event({}), content_type="application/json", origin=Origin(username="u" + SURROGATE))
    with pytest.raises(PipelineJobsError) as err:
        classify(intake)
    assert "username" in err.value.message and "surrogate" in err.value.message


def test_surrogate_pairs_and_other_unicode_are_fine() -> None:
    message = classify(Intake(body=_event({"emoji": "\U0001f600", "café": "ünï"}), content_type="application/json"))
    assert isinstance(message, EventMessage) and message.data == {"emoji": "\U0001f600", "café": "ünï"}


# -- integers and numbers -----------------------------------------------------------------------
@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0, True, 1.5, 1e308])
def test_numbers_the_stores_keep_are_accepted(value: Any) -> None:
    assert classify(Intake(body=_event({"n": [value]}), content_type="application/json")).data == {"n": [value]}


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_outside_int64_are_refused(value: int) -> None:
    error = _refusal(_event({"n": {"m": [value]}}))
    assert error.message.startswith("data.n.m[0]:") and "64-bit" in error.message
    assert str(value) not in error.message


def test_a_number_that_overflows_to_infinity_is_refused() -> None:
    text = json.dumps(_event({"t": True, "x": "X"})).replace('"X"', "1e400")  # `true`: JSON, not a Python literal
    error = _refusal(parse_message(text, "application/json", 10_000))
    assert error.message.startswith("data.x:") and "finite" in error.message
    with pytest.raises(PipelineJobsError):  # as a Python literal (Abaco's repr) it was already refused
        parse_message(text.replace("true", "True"), "str", 10_000)


# -- depth -------------------------------------------------------------------------------------
def test_data_may_nest_up_to_the_limit() -> None:
    # the message is level 1 and data level 2, so data may hold MAX_DEPTH - 1 levels
    assert classify(Intake(body=_event(_nested(MAX_DEPTH - 1)), content_type="application/json")).data is not None
    error = _refusal(_event(_nested(MAX_DEPTH)))
    assert f"limit of {MAX_DEPTH} levels" in error.message and error.message.startswith("data.a.a")


@pytest.mark.parametrize("as_repr", [False, True], ids=["json", "repr"])
def test_data_nested_300_deep_says_what_the_limit_is(as_repr: bool) -> None:
    msg = _event(_nested(300))
    text = repr(msg) if as_repr else json.dumps(msg)
    with pytest.raises(PipelineJobsError) as err:
        classify(Intake(body=parse_message(text, "str", 1_000_000), content_type="str"))
    assert err.value.kind is ErrorKind.BAD_MESSAGE
    assert f"limit of {MAX_DEPTH} levels" in err.value.message and "not JSON" not in err.value.message


def test_deep_text_that_is_not_a_message_still_says_not_json_when_shallow() -> None:
    assert parse_message("{'a': [1, 2", "str", 100) == "{'a': [1, 2"


# -- Tapis event.data strings ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"newJobStatus": "RUNNING", "x": NaN}', ["event.data", "NaN"]),
        ('{"newJobStatus": "RUNNING", "x": -Infinity}', ["event.data", "NaN or Infinity"]),
        ('{"newJobStatus": "RUNNING", "x": 123456789012345678901234567890}', ["event.data.x", "64-bit"]),
        ('{"newJobStatus": "RUNNING", "x": 1e999}', ["event.data.x", "finite"]),
        ('{"newJobStatus": "RUNNING", "x": "\\ud800"}', ["event.data.x", "surrogate"]),
        ('{"newJobStatus": "RUNNING", "x": ' + "[" * 70 + "]" * 70 + "}", ["event.data.x", "limit of 64"]),
        ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", ["event.data", "limit of 64"]),
    ],
    ids=["nan", "infinity", "huge-int", "overflow", "surrogate", "deep", "very-deep"],
)
def test_a_tapis_data_string_gets_the_same_rules_as_a_message(raw: str, words: list[str]) -> None:
    error = _refusal(tapis_notification("RUNNING", data=raw), uuid=JOB_UUID, token=TOKEN)
    for word in words:
        assert word in error.message, error.message
    assert "123456789012345678901234567890" not in error.message


def test_a_tapis_data_string_that_is_not_json_is_still_kept_as_text() -> None:
    message = classify(Intake(tapis_notification("RUNNING", data="not { json"), "application/json", {"uuid": JOB_UUID}))
    assert isinstance(message, EventMessage) and message.data["event"]["data"] == "not { json"


# -- reactor.py, as Abaco runs it, on both stores ---------------------------------------------------
HOSTILE = [
    ("surrogate-in-data", lambda u, t: (_hostile_event(u, t, {"s": SURROGATE}), {}, False), "surrogate"),
    ("surrogate-in-key", lambda u, t: (_hostile_event(u, t, {SURROGATE: 1}), {}, True), "surrogate"),
    (
        "surrogate-in-session",
        lambda u, t: ({"x": 1}, {"uuid": u, "token": t, "name": "update", "session": "\udcff"}, False),
        "surrogate",
    ),
    ("int-beyond-int64", lambda u, t: (_hostile_event(u, t, {"n": 2**64}), {}, False), "64-bit"),
    ("nested-300-repr", lambda u, t: (_hostile_event(u, t, _nested(300)), {}, True), "limit of 64"),
    ("nested-300-json", lambda u, t: (_hostile_event(u, t, _nested(300)), {}, False), "limit of 64"),
    ("nested-65", lambda u, t: (_hostile_event(u, t, _nested(64)), {}, False), "limit of 64"),
    (
        "tapis-nan",
        lambda u, t: (
            tapis_notification("RUNNING", data='{"newJobStatus": "RUNNING", "x": NaN}'),
            {"uuid": u, "token": t},
            False,
        ),
        "NaN",
    ),
    (
        "tapis-huge-int",
        lambda u, t: (
            tapis_notification("RUNNING", data='{"newJobStatus": "RUNNING", "x": 1' + "0" * 30 + "}"),
            {"uuid": u, "token": t},
            False,
        ),
        "64-bit",
    ),
    ("uuid-trailing-newline", lambda u, t: ({"uuid": u + "\n", "name": "run", "token": t}, {}, False), "uuid"),
]


def _hostile_event(uuid: str, token: str, data: Any) -> dict[str, Any]:
    return {"uuid": uuid, "name": "update", "token": token, "data": data}


class SqliteReactor:
    """reactor.py on the embedded store: no MongoDB configured, a SQLite file."""

    def __init__(self, reactor: Reactor, path: Path) -> None:
        self.reactor, self.path = reactor, path

    def run(self, msg: Any, *, params: dict[str, str] | None = None, as_repr: bool = False) -> ReactorResult:
        env = self.reactor.env(msg, params=params, as_repr=as_repr)
        env.pop("_REACTOR_MONGODB_AUTHN")
        env["_REACTOR_STORE_SQLITE_PATH"] = str(self.path)
        proc = subprocess.run([sys.executable, str(REACTOR)], env=env, capture_output=True, text=True, timeout=120)
        return ReactorResult(proc.returncode, proc.stdout, proc.stderr)

    def snapshot(self) -> str:
        with sqlite3.connect(self.path) as conn:
            return "\n".join(conn.iterdump())


class MongoReactor:
    def __init__(self, reactor: Reactor, db: Any) -> None:
        self.reactor, self.db = reactor, db

    def run(self, msg: Any, **kwargs: Any) -> ReactorResult:
        return self.reactor.run(msg, **kwargs)

    def snapshot(self) -> Any:
        import bson

        return {
            name: [bson.encode(doc) for doc in self.db[name].find({}).sort("_id", 1)]
            for name in sorted(self.db.list_collection_names())
        }


@pytest.fixture(params=["mongodb", "sqlite"])
def any_store_reactor(request: pytest.FixtureRequest, reactor: Reactor, db: Any, tmp_path: Path) -> Any:
    if request.param == "mongodb":
        db.pipelines.insert_one({"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID})
        return MongoReactor(reactor, db)
    from pipelinejobs.store.sqlite import SqliteJobStore

    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    store.ensure_indexes()
    store.save_pipeline({"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID})
    store.close()
    return SqliteReactor(reactor, path)


def _create(runner: Any) -> tuple[str, str]:
    out = runner.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {"n": 1}})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.result["uuid"], out.result["token"]


@pytest.mark.parametrize(("case", "build", "words"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_reactor_refuses_hostile_input_and_changes_nothing(
    any_store_reactor: Any, case: str, build: Any, words: str
) -> None:
    uuid, token = _create(any_store_reactor)
    msg, params, as_repr = build(uuid, token)
    before = any_store_reactor.snapshot()
    out = any_store_reactor.run(msg, params=params, as_repr=as_repr)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.result["kind"] == "bad_message" and words in out.result["message"], out.result
    assert "Traceback" not in out.stderr
    assert any_store_reactor.snapshot() == before


def test_both_stores_keep_the_int64_bounds_alike(any_store_reactor: Any) -> None:
    uuid, token = _create(any_store_reactor)
    out = any_store_reactor.run(_hostile_event(uuid, token, {"max": 2**63 - 1, "min": -(2**63)}))
    assert out.returncode == 0, out.stdout + out.stderr
    stored = (
        str(any_store_reactor.snapshot())
        if isinstance(any_store_reactor, SqliteReactor)
        else str(list(any_store_reactor.db.jobs.find({"uuid": uuid})))
    )
    assert str(2**63 - 1) in stored and str(-(2**63)) in stored


def test_an_invalid_escape_in_a_repr_prints_no_warning_to_the_log() -> None:
    """Abaco's repr of a message may hold ``\\&``: Python warns of the escape on stderr (reactor.py's log)
    and would quote the sender's text there; the message reads as it would without the warning."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert parse_message("{'a': '\\&x', 'b': '\\d'}", "str", 1_000) == {"a": "\\&x", "b": "\\d"}
    assert [str(w.message) for w in caught] == []
