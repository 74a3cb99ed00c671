"""The storage contract: every backend keeps the same documents and applies writes atomically.

Each contract test runs against MongoDB (the session's secantusd-py, or MONGODB_URI)
and against the embedded SQLite store; SQLite-only tests (file errors, locking,
locations) and a reactor.py run with no MongoDB configured follow.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest

from pipelinejobs import documents, identifiers
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.runtime import open_store
from pipelinejobs.settings import Identity, load_settings
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.sqlite import SqliteJobStore, default_sqlite_path, loads_document
from tests.conftest import EXAMPLE_PIPELINE_ID, EXAMPLE_PIPELINE_UUID, ROOT, Reactor

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
OTHER_PIPELINE = "10650844-1baa-55c5-a481-5e945b19c066"
UNKNOWN_JOB = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"
HISTORY_KEYS = ["date", "data", "name", "uuid"]

StoreFactory = Callable[[], JobStore]


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(params=["mongodb", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens store objects (each with its own connection) on one fresh database of the backend."""
    opened: list[JobStore] = []
    if request.param == "mongodb":
        uri = request.getfixturevalue("mongodb_uri")
        name = request.getfixturevalue("database_name")
        request.getfixturevalue("db")  # drops the database after the test

        def factory() -> JobStore:
            opened.append(MongoJobStore(uri, name))
            return opened[-1]
    else:
        path = tmp_path / "store" / "jobs.sqlite3"

        def factory() -> JobStore:
            opened.append(SqliteJobStore(path))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> JobStore:
    opened = store_factory()
    opened.ensure_indexes()
    return opened


def audit_rows(store: JobStore) -> list[dict[str, Any]]:
    """Everything in ``updates``, oldest first, read past the store's protocol."""
    if isinstance(store, MongoJobStore):
        return list(store.updates.find({}, {"_id": False}).sort("_id", pymongo.ASCENDING))
    assert isinstance(store, SqliteJobStore)
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT doc FROM updates ORDER BY seq").fetchall()
    return [loads_document(text) for (text,) in rows]


def make_job(data: dict[str, Any] | None = None, *, pipeline: str = EXAMPLE_PIPELINE_UUID, now: datetime = NOW) -> dict:
    data = {"x": 1} if data is None else data
    return documents.new_job(
        uuid=identifiers.job_uuid(pipeline, [], data),
        pipeline_uuid=pipeline,
        archive_path="/products/v2/tacobot",
        archive_system=None,
        data=data,
        session="s-1",
        child_of=[],
        identity=IDENTITY,
        now=now,
    )


def insert(store: JobStore, job: dict[str, Any]) -> dict[str, Any]:
    stored, created = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
    assert created
    return stored


def event(
    store: JobStore,
    uuid: str,
    name: str,
    *,
    from_states: set[str] | None,
    new_state: str | None,
    data: dict[str, Any] | None = None,
    now: datetime = NOW,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Apply one event; returns (the history entry offered, the store's answer)."""
    entry = documents.history_entry(name, data, now)
    audit = documents.audit_record(uuid, "update", {"event": name, "event_uuid": entry["uuid"]}, {}, now)
    return entry, store.apply_event(
        uuid, from_states=from_states, entry=entry, new_state=new_state, now=now, audit=audit
    )


# -- the contract --------------------------------------------------------------------------
def test_ensure_indexes_is_repeatable_and_uniqueness_holds(store: JobStore, store_factory: StoreFactory) -> None:
    store.ensure_indexes()
    again = store_factory()
    again.ensure_indexes()
    pipeline = {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID}
    assert store.save_pipeline(pipeline)[1] is True
    assert again.save_pipeline(pipeline)[1] is False
    insert(store, make_job())
    assert again.insert_job(make_job(), {"uuid": "x", "action": "create"})[1] is False


def test_save_and_find_pipeline(store: JobStore) -> None:
    pipeline = {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "name": "Tacobot", "components": [{"a": 1}]}
    stored, created = store.save_pipeline(pipeline)
    assert created is True and stored == pipeline
    assert store.find_pipeline(EXAMPLE_PIPELINE_UUID) == pipeline
    # same uuid, or same id under another uuid: the stored pipeline answers, nothing is replaced
    existing, created = store.save_pipeline({**pipeline, "name": "changed"})
    assert created is False and existing == pipeline
    existing, created = store.save_pipeline({"id": EXAMPLE_PIPELINE_ID, "uuid": OTHER_PIPELINE})
    assert created is False and existing == pipeline
    assert store.find_pipeline(OTHER_PIPELINE) is None
    assert store.find_pipeline(EXAMPLE_PIPELINE_UUID) == pipeline


def test_insert_job_is_idempotent_and_never_overwrites(store: JobStore) -> None:
    job = make_job()
    stored, created = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
    assert created is True and stored == job
    retry = make_job(now=NOW + timedelta(hours=1))  # same uuid, fresh salt and dates
    retry["history"].append(documents.history_entry("run", None, NOW))
    assert retry["uuid"] == job["uuid"] and retry["_salt"] != job["_salt"]
    existing, created = store.insert_job(retry, documents.audit_record(job["uuid"], "create", {}, {}, NOW))
    assert created is False and existing == job
    found = store.find_job(job["uuid"])
    assert found is not None and found["_salt"] == job["_salt"] and len(found["history"]) == 1
    assert found["updated"] == NOW
    assert [row["action"] for row in audit_rows(store)] == ["create"]


def test_documents_round_trip_with_dates_and_key_order(store: JobStore) -> None:
    job = make_job({"nested": {"b": [1, 2.5, None, True], "a": "ü"}})
    job["_admin"] = {"tenant": "sd2e", "owner": "someone", "project": "P"}  # an unusual order must survive
    insert(store, job)
    found = store.find_job(job["uuid"])
    assert found == job
    assert list(found) == list(job)
    assert list(found["_admin"]) == ["tenant", "owner", "project"]
    assert list(found["data"]["nested"]) == ["b", "a"]
    assert list(found["history"][0]) == HISTORY_KEYS
    for moment in (found["updated"], found["history"][0]["date"], found["_properties"]["created_date"]):
        assert isinstance(moment, datetime) and moment.utcoffset() == timedelta(0) and moment == NOW
    token = identifiers.job_token(job["_salt"], job["uuid"], job["_admin"])
    assert identifiers.job_token(found["_salt"], found["uuid"], found["_admin"]) == token
    assert store.find_job(UNKNOWN_JOB) is None


def test_apply_event_appends_history_and_bumps_revision(store: JobStore) -> None:
    job = insert(store, make_job())
    later = NOW + timedelta(minutes=5)
    entry, updated = event(
        store, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING", data={"k": "v"}, now=later
    )
    assert updated is not None
    assert updated["state"] == "RUNNING" and updated["last_event"] == "run"
    assert updated["updated"] == later and updated["_properties"]["modified_date"] == later
    assert updated["_properties"]["revision"] == 1
    assert updated["_properties"]["created_date"] == NOW
    assert updated["history"][-1] == entry and list(updated["history"][-1]) == HISTORY_KEYS
    assert [h["name"] for h in updated["history"]] == ["create", "run"]
    assert updated["data"] == {"x": 1}  # the event's data goes only into the history entry
    assert store.find_job(job["uuid"]) == updated
    assert list(updated) == list(job)  # no key moved
    rows = audit_rows(store)
    assert [row["action"] for row in rows] == ["create", "update"]
    assert rows[-1]["diff"]["event_uuid"] == entry["uuid"] and rows[-1]["date"] == later


def test_apply_event_creates_a_missing_revision(store: JobStore) -> None:
    job = make_job()
    del job["_properties"]["revision"]
    insert(store, job)
    _, updated = event(store, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")
    assert updated is not None and updated["_properties"]["revision"] == 1


def test_failed_preconditions_change_nothing(store: JobStore) -> None:
    job = insert(store, make_job())
    hidden = insert(store, make_job({"x": 2}))
    assert store.hide_job(hidden["uuid"], now=NOW, audit={"uuid": hidden["uuid"], "action": "update"}) is not None
    before = (store.find_job(job["uuid"]), store.find_job(hidden["uuid"]), len(audit_rows(store)))
    assert event(store, job["uuid"], "finish", from_states={"RUNNING"}, new_state="FINISHED")[1] is None
    assert event(store, hidden["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")[1] is None
    assert event(store, hidden["uuid"], "reset", from_states=None, new_state="RESET")[1] is None
    assert event(store, UNKNOWN_JOB, "run", from_states=None, new_state="RUNNING")[1] is None
    assert (store.find_job(job["uuid"]), store.find_job(hidden["uuid"]), len(audit_rows(store))) == before


def test_event_without_new_state_keeps_the_state(store: JobStore) -> None:
    job = insert(store, make_job())
    _, updated = event(store, job["uuid"], "update", from_states={"CREATED", "RUNNING"}, new_state=None)
    assert updated is not None
    assert updated["state"] == "CREATED" and updated["last_event"] == "update"
    assert updated["_properties"]["revision"] == 1 and len(updated["history"]) == 2


def test_hide_job_once(store: JobStore) -> None:
    job = insert(store, make_job())
    later = NOW + timedelta(seconds=30)
    audit = documents.audit_record(job["uuid"], "update", {"_visible": False}, job["_admin"], later)
    hidden = store.hide_job(job["uuid"], now=later, audit=audit)
    assert hidden is not None and hidden["_visible"] is False
    assert hidden["_properties"]["revision"] == 1 and hidden["updated"] == later
    assert hidden["history"] == job["history"] and hidden["state"] == "CREATED"
    assert store.find_job(job["uuid"]) == hidden  # hidden jobs are still found by uuid
    assert store.hide_job(job["uuid"], now=later, audit=audit) is None
    assert store.hide_job(UNKNOWN_JOB, now=later, audit=audit) is None
    assert [row["action"] for row in audit_rows(store)] == ["create", "update"]
    assert store.find_job(job["uuid"]) == hidden


def test_remove_job_leaves_a_tombstone_holding_the_whole_job(store: JobStore) -> None:
    job = insert(store, make_job())
    _, updated = event(store, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")
    assert updated is not None
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": updated}, job["_admin"], NOW)
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is True
    assert store.find_job(job["uuid"]) is None
    last = audit_rows(store)[-1]
    assert last["action"] == "delete" and last["diff"]["deleted"] == updated
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is False  # already gone
    assert [row["action"] for row in audit_rows(store)] == ["create", "update", "delete"]


def test_remove_job_with_a_stale_revision_writes_nothing(store: JobStore) -> None:
    job = insert(store, make_job())
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": job}, job["_admin"], NOW)
    _, updated = event(store, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")
    assert store.remove_job(job["uuid"], expected_revision=0, tombstone=tombstone) is False
    assert store.find_job(job["uuid"]) == updated
    assert [row["action"] for row in audit_rows(store)] == ["create", "update"]


def test_list_jobs_filters_and_sorts_newest_first(store: JobStore) -> None:
    oldest = insert(store, make_job({"n": 1}, now=NOW))
    middle = insert(store, make_job({"n": 2}, now=NOW + timedelta(minutes=1), pipeline=OTHER_PIPELINE))
    newest = insert(store, make_job({"n": 3}, now=NOW + timedelta(minutes=2)))
    hidden = insert(store, make_job({"n": 4}, now=NOW + timedelta(minutes=3)))
    event(store, oldest["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING", now=NOW + timedelta(minutes=4))
    store.hide_job(hidden["uuid"], now=NOW + timedelta(minutes=5), audit={"uuid": hidden["uuid"], "action": "u"})

    def uuids(**filters: Any) -> list[str]:
        return [job["uuid"] for job in store.list_jobs(**filters)]

    assert uuids() == [oldest["uuid"], newest["uuid"], middle["uuid"]]  # by `updated`, the run moved `oldest` up
    assert uuids(include_hidden=True) == [hidden["uuid"], oldest["uuid"], newest["uuid"], middle["uuid"]]
    assert uuids(state="CREATED") == [newest["uuid"], middle["uuid"]]
    assert uuids(state="RUNNING") == [oldest["uuid"]]
    assert uuids(state="FINISHED") == []
    assert uuids(pipeline_uuid=OTHER_PIPELINE) == [middle["uuid"]]
    assert uuids(pipeline_uuid=EXAMPLE_PIPELINE_UUID, state="CREATED", include_hidden=True) == [
        hidden["uuid"],
        newest["uuid"],
    ]
    assert uuids(limit=2) == [oldest["uuid"], newest["uuid"]]
    assert store.list_jobs(state="RUNNING")[0] == store.find_job(oldest["uuid"])


def test_racing_events_lose_no_history_entry(store: JobStore, store_factory: StoreFactory) -> None:
    job = insert(store, make_job())
    workers = 16
    barrier = threading.Barrier(workers)
    entries: list[str] = []
    failures: list[BaseException] = []
    opened_lock = threading.Lock()

    def work() -> None:
        try:
            with opened_lock:  # the factory's bookkeeping list is shared
                own = store_factory()  # each thread has its own connection
            barrier.wait(timeout=60)
            entry, updated = event(own, job["uuid"], "update", from_states={"CREATED"}, new_state=None)
            assert updated is not None
            entries.append(entry["uuid"])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not failures, failures
    found = store.find_job(job["uuid"])
    assert found is not None
    assert found["_properties"]["revision"] == workers
    assert len(found["history"]) == workers + 1
    assert sorted(h["uuid"] for h in found["history"][1:]) == sorted(entries) and len(set(entries)) == workers
    assert len(audit_rows(store)) == workers + 1


# -- SQLite only ---------------------------------------------------------------------------
def test_sqlite_schema_has_the_unique_keys_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "jobs.sqlite3"
    store = SqliteJobStore(path)  # the parent directories are created
    store.ensure_indexes()
    store.ensure_indexes()
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexed: dict[str, set[tuple[str, bool]]] = {}
        for table in ("jobs", "pipelines", "updates"):
            for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
                (column,) = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
                indexed.setdefault(table, set()).add((column, bool(unique)))
    assert {("uuid", True), ("state", False), ("pipeline_uuid", False)} <= indexed["jobs"]
    assert {("uuid", True), ("id", True)} <= indexed["pipelines"]
    assert ("uuid", False) in indexed["updates"]


def test_sqlite_stores_dates_tagged_and_keeps_lookalike_data(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    lookalike = {"$date": "2020-01-01T00:00:00+00:00", "when": {"$date": "not a date"}}
    job = insert(store, make_job({"tricky": lookalike, "also": {"$literal": [1]}}))
    found = store.find_job(job["uuid"])
    assert found is not None and found["data"] == job["data"]
    with sqlite3.connect(store.path) as conn:
        text = conn.execute("SELECT doc FROM jobs").fetchone()[0]
    assert json.loads(text)["updated"] == {"$date": "2026-11-28T12:00:00+00:00"}
    store.close()


@pytest.mark.parametrize("kind", ["directory", "not-a-database", "parent-is-a-file"])
def test_sqlite_unusable_path_is_storage_unavailable(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        path = tmp_path / "jobs.sqlite3"
        path.mkdir()
    elif kind == "not-a-database":
        path = tmp_path / "jobs.sqlite3"
        path.write_bytes(b"this is no database\n" * 500)
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "jobs.sqlite3"
    with pytest.raises(PipelineJobsError) as err:
        SqliteJobStore(path)
    assert err.value.kind is ErrorKind.STORAGE_UNAVAILABLE
    assert "nothing was changed" in err.value.message and str(path) in err.value.message


def test_sqlite_locked_file_is_storage_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    setup = SqliteJobStore(path)
    job = insert(setup, make_job())
    impatient = SqliteJobStore(path, timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with pytest.raises(PipelineJobsError) as err:
            event(impatient, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")
        assert err.value.kind is ErrorKind.STORAGE_UNAVAILABLE and "locked" in err.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert impatient.find_job(job["uuid"]) == job
    assert len(audit_rows(impatient)) == 1
    # the lock is gone: the same store object works again
    assert event(impatient, job["uuid"], "run", from_states={"CREATED"}, new_state="RUNNING")[1] is not None
    impatient.close()
    setup.close()
    with pytest.raises(PipelineJobsError) as closed:
        impatient.find_job(job["uuid"])
    assert closed.value.kind is ErrorKind.INTERNAL


def test_default_sqlite_path_follows_xdg() -> None:
    expected_tail = Path("pipelinejobs") / "pipelinejobs.sqlite3"
    assert default_sqlite_path({"XDG_DATA_HOME": "/data", "HOME": "/home/u"}) == Path("/data") / expected_tail
    assert default_sqlite_path({"HOME": "/home/u"}) == Path("/home/u/.local/share") / expected_tail
    assert default_sqlite_path({"XDG_DATA_HOME": "relative", "HOME": "/h"}) == Path("/h/.local/share") / expected_tail


def test_open_store_without_mongodb_uses_sqlite(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    store = open_store(load_settings(env, ROOT / "config.yml"), env)
    try:
        assert store.backend == "sqlite" and isinstance(store, SqliteJobStore)
        assert store.path == tmp_path / "xdg" / "pipelinejobs" / "pipelinejobs.sqlite3" and store.path.exists()
    finally:
        store.close()
    env["_REACTOR_STORE_SQLITE_PATH"] = "~/elsewhere.sqlite3"
    store = open_store(load_settings(env, ROOT / "config.yml"), env)
    try:
        assert isinstance(store, SqliteJobStore) and store.path == tmp_path / "home" / "elsewhere.sqlite3"
    finally:
        store.close()


def test_reactor_without_mongodb_runs_on_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    setup = SqliteJobStore(path)
    setup.save_pipeline({"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID})
    setup.close()
    reactor = Reactor(mongodb_uri="", database="")
    home = tmp_path / "home"
    extra = {"_REACTOR_STORE_SQLITE_PATH": str(path), "HOME": str(home)}

    def run(msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        env = reactor.env(msg, extra=extra)
        del env["_REACTOR_MONGODB_AUTHN"], env["_REACTOR_MONGODB_DATABASE"]
        proc = subprocess.run(
            [sys.executable, str(ROOT / "reactor.py")], env=env, capture_output=True, text=True, timeout=120
        )
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert lines, proc.stderr
        return proc.returncode, json.loads(lines[-1])

    code, created = run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/a/b", "data": {"n": 1}})
    assert code == 0, created
    assert created["status"] == "ok" and created["created"] is True and created["state"] == "CREATED"
    code, moved = run({"uuid": created["uuid"], "name": "run", "token": created["token"]})
    assert code == 0, moved
    assert moved["state"] == "RUNNING" and moved["revision"] == 1
    code, refused = run({"uuid": created["uuid"], "name": "run", "token": "0" * 16})
    assert code == 1 and refused["kind"] == "unauthorized"

    check = SqliteJobStore(path)
    job = check.find_job(created["uuid"])
    check.close()
    assert job is not None and [h["name"] for h in job["history"]] == ["create", "run"]
    assert identifiers.job_token(job["_salt"], job["uuid"], job["_admin"]) == created["token"]
    assert not home.exists()  # nothing went to the default location
