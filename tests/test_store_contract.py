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
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest

from pipelinejobs import documents, identifiers, service
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import EventMessage
from pipelinejobs.runtime import open_store
from pipelinejobs.settings import Identity, load_settings
from pipelinejobs.store.base import JobStore, iter_history
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.records import HEAD_FIELDS, Append, AppendResult, EventRecord, Outcome
from pipelinejobs.store.sqlite import SqliteJobStore, default_sqlite_path, loads_document
from tests.conftest import EXAMPLE_PIPELINE_ID, EXAMPLE_PIPELINE_UUID, ROOT, Reactor, StoreFactory

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
OTHER_PIPELINE = "10650844-1baa-55c5-a481-5e945b19c066"
UNKNOWN_JOB = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"
HISTORY_KEYS = ["date", "data", "name", "uuid"]


# -- fixtures and helpers ------------------------------------------------------------------
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


def append(
    store: JobStore,
    uuid: str,
    name: str,
    *,
    state: str,
    revision: int,
    data: dict[str, Any] | None = None,
    now: datetime = NOW,
    event_id: str | None = None,
) -> tuple[EventRecord, AppendResult]:
    """Log and apply one event at ``revision``; returns (the record offered, the store's answer)."""
    record = EventRecord(
        uuid=uuid,
        seq=revision + 1,
        event_uuid=identifiers.random_uuid("pipelinejob_event"),
        name=name,
        date=now,
        data=data,
        state=state,
        event_id=event_id,
        digest=documents.payload_digest(name, data),
    )
    return record, store.append_event(record, expected_revision=revision)


def log_of(store: JobStore, uuid: str) -> list[EventRecord]:
    return list(iter_history(store, uuid, page_size=7))


# -- the contract --------------------------------------------------------------------------
#: contract method -> the tests that call it on both stores (filled as this module is read)
COVERED: dict[str, list[str]] = {}


def covers(*methods: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Names the contract methods a test exercises; see test_every_contract_method_has_a_contract_test."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        for method in methods:
            COVERED.setdefault(method, []).append(test.__name__)
        return test

    return mark


@covers("ensure_indexes", "missing_indexes")
def test_ensure_indexes_is_repeatable_and_uniqueness_holds(store: JobStore, store_factory: StoreFactory) -> None:
    store.ensure_indexes()
    again = store_factory()
    again.ensure_indexes()
    assert store.missing_indexes() == [] and again.missing_indexes() == []
    pipeline = {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID}
    assert store.save_pipeline(pipeline)[1] is True
    assert again.save_pipeline(pipeline)[1] is False
    insert(store, make_job())
    assert again.insert_job(make_job(), {"uuid": "x", "action": "create"})[1] is False


@covers("save_pipeline", "find_pipeline", "list_pipelines")
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
    assert store.list_pipelines() == [pipeline]


@covers("save_pipeline")
def test_save_pipeline_answers_alike_on_both_stores_when_uuid_and_id_point_apart(store: JobStore) -> None:
    first = {"id": "a/first:1", "uuid": EXAMPLE_PIPELINE_UUID}
    second = {"id": "b/second:1", "uuid": OTHER_PIPELINE}
    assert store.save_pipeline(first)[1] and store.save_pipeline(second)[1]
    # the uuid is the first's, the id the second's: the uuid's holder answers, on both stores
    existing, created = store.save_pipeline({"id": "b/second:1", "uuid": EXAMPLE_PIPELINE_UUID})
    assert created is False and existing == first
    # a pipeline without an id: only its uuid can collide
    existing, created = store.save_pipeline({"uuid": OTHER_PIPELINE})
    assert created is False and existing == second
    assert [p["id"] for p in store.list_pipelines()] == ["a/first:1", "b/second:1"]


@covers("insert_job", "find_job")
def test_insert_job_is_idempotent_and_never_overwrites(store: JobStore) -> None:
    job = make_job()
    stored, created = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
    assert created is True and stored == job
    retry = make_job(now=NOW + timedelta(hours=1))  # same uuid, fresh salt and dates
    assert retry["uuid"] == job["uuid"] and retry["_salt"] != job["_salt"]
    existing, created = store.insert_job(retry, documents.audit_record(job["uuid"], "create", {}, {}, NOW))
    assert created is False and existing == job
    found = store.find_job(job["uuid"])
    assert found is not None and found["_salt"] == job["_salt"] and len(found["history"]) == 1
    assert found["updated"] == NOW
    assert [row["action"] for row in audit_rows(store)] == ["create"]
    [created_record] = log_of(store, job["uuid"])
    assert (created_record.seq, created_record.name, created_record.data) == (0, "create", job["data"])
    assert created_record.event_uuid == job["history"][0]["uuid"]


@covers("insert_job", "find_job")
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
    head = store.find_head(job["uuid"])
    assert head is not None and set(head) == set(HEAD_FIELDS) and "history" not in head and "data" not in head
    assert (head["state"], head["_visible"], head["_properties"]["revision"]) == ("CREATED", True, 0)
    assert head["_salt"] == job["_salt"] and list(head["_admin"]) == ["tenant", "owner", "project"]


@covers("append_event", "find_head", "history")
def test_append_event_logs_applies_and_bumps_revision(store: JobStore) -> None:
    job = insert(store, make_job())
    later = NOW + timedelta(minutes=5)
    record, result = append(store, job["uuid"], "run", state="RUNNING", revision=0, data={"k": "v"}, now=later)
    assert result.status is Append.APPLIED
    updated = store.find_job(job["uuid"])
    assert updated is not None
    assert updated["state"] == "RUNNING" and updated["last_event"] == "run"
    assert updated["updated"] == later and updated["_properties"]["modified_date"] == later
    assert updated["_properties"]["revision"] == 1
    assert updated["_properties"]["created_date"] == NOW
    entry = {"date": later, "data": {"k": "v"}, "name": "run", "uuid": record.event_uuid}
    assert updated["history"][-1] == entry and list(updated["history"][-1]) == HISTORY_KEYS
    assert [h["name"] for h in updated["history"]] == ["create", "run"]
    assert updated["data"] == {"x": 1}  # the event's data goes only into the history entry
    assert list(updated) == list(job)  # no key moved
    assert [row["action"] for row in audit_rows(store)] == ["create"]  # events are audited by the log
    assert log_of(store, job["uuid"])[-1] == record


@covers("append_event")
def test_a_job_without_a_revision_counts_as_revision_zero(store: JobStore) -> None:
    job = make_job()
    del job["_properties"]["revision"]
    insert(store, job)
    assert append(store, job["uuid"], "run", state="RUNNING", revision=0)[1].status is Append.APPLIED
    assert store.find_job(job["uuid"])["_properties"]["revision"] == 1  # type: ignore[index]


@covers("append_event")
def test_failed_preconditions_change_nothing(store: JobStore) -> None:
    job = insert(store, make_job())
    hidden = insert(store, make_job({"x": 2}))
    assert store.hide_job(hidden["uuid"], now=NOW, audit={"uuid": hidden["uuid"], "action": "update"}) is not None

    def snapshot() -> Any:
        return [(store.find_job(j["uuid"]), log_of(store, j["uuid"])) for j in (job, hidden)], len(audit_rows(store))

    before = snapshot()
    assert append(store, job["uuid"], "finish", state="FINISHED", revision=3)[1].status is Append.MOVED
    assert append(store, hidden["uuid"], "run", state="RUNNING", revision=1)[1].status is Append.MOVED
    assert append(store, UNKNOWN_JOB, "run", state="RUNNING", revision=0)[1].status is Append.MOVED
    assert snapshot() == before


@covers("append_event", "find_delivery")
def test_a_delivery_id_is_logged_once_per_job(store: JobStore) -> None:
    job = insert(store, make_job())
    other = insert(store, make_job({"x": 2}))
    first, result = append(store, job["uuid"], "run", state="RUNNING", revision=0, event_id="delivery-1")
    assert result.status is Append.APPLIED
    _, result = append(store, job["uuid"], "run", state="RUNNING", revision=1, event_id="delivery-1")
    assert result.status is Append.REPLAYED and result.existing == first
    assert store.find_delivery(job["uuid"], "delivery-1") == first
    assert store.find_delivery(job["uuid"], "delivery-2") is None
    assert store.find_job(job["uuid"])["_properties"]["revision"] == 1  # type: ignore[index]
    # the same id on another job is another delivery
    assert append(store, other["uuid"], "run", state="RUNNING", revision=0, event_id="delivery-1")[1].status is (
        Append.APPLIED
    )


@covers("record_stale", "find_delivery", "history")
def test_stale_records_are_logged_without_changing_the_job(store: JobStore) -> None:
    job = insert(store, make_job())
    append(store, job["uuid"], "run", state="RUNNING", revision=0)
    before = store.find_job(job["uuid"])
    stale = EventRecord(
        uuid=job["uuid"],
        seq=1,
        slot="0001.000000~a",
        event_uuid=identifiers.random_uuid("pipelinejob_event"),
        name="resource",
        date=NOW,
        data={"status": "QUEUED"},
        state="RUNNING",
        outcome=Outcome.STALE,
        via="agave",
        event_id="agave:1:QUEUED",
    )
    assert store.record_stale(stale).status is Append.APPLIED
    assert store.find_job(job["uuid"]) == before
    retry = EventRecord(**{**stale.__dict__, "event_uuid": identifiers.random_uuid("pipelinejob_event")})
    result = store.record_stale(retry)
    assert result.status is Append.REPLAYED and result.existing == stale
    assert [(r.seq, r.outcome) for r in log_of(store, job["uuid"])] == [
        (0, Outcome.APPLIED),
        (1, Outcome.APPLIED),
        (1, Outcome.STALE),
    ]
    # the stale record takes no revision: the next event still gets seq 2
    assert append(store, job["uuid"], "update", state="RUNNING", revision=1)[1].status is Append.APPLIED


@covers("append_event", "history")
def test_history_window_is_bounded_and_the_log_keeps_everything(store_factory: StoreFactory) -> None:
    store_factory().ensure_indexes()
    small = store_factory(history_window=10, inline_data_bytes=64)
    job = insert(small, make_job())
    big = {"blob": "x" * 200}
    for revision in range(25):
        data = big if revision == 20 else {"i": revision}
        assert append(small, job["uuid"], "update", state="CREATED", revision=revision, data=data)[1].status is (
            Append.APPLIED
        )
    found = small.find_job(job["uuid"])
    assert found is not None and found["_properties"]["revision"] == 25
    assert len(found["history"]) == 10
    assert [h["data"] for h in found["history"]][:5] == [{"i": i} for i in range(15, 20)]
    stub = found["history"][5]["data"]
    assert stub == {"_in_event_log": {"seq": 21, "bytes": len(documents.canonical_json(big))}}
    records = log_of(small, job["uuid"])
    assert [r.seq for r in records] == list(range(26))
    assert records[21].data == big  # the log has the whole data
    page = small.history(job["uuid"], limit=10)
    assert [r.seq for r in page.records] == list(range(10)) and page.next is not None
    page = small.history(job["uuid"], after=page.next, limit=100)
    assert [r.seq for r in page.records] == list(range(10, 26)) and page.next is None


@covers("hide_job", "audit_trail")
def test_hide_job_once(store: JobStore) -> None:
    job = insert(store, make_job())
    later = NOW + timedelta(seconds=30)
    audit = documents.audit_record(job["uuid"], "update", {"_visible": False}, job["_admin"], later)
    hidden = store.hide_job(job["uuid"], now=later, audit=audit)
    assert hidden is not None and hidden["_visible"] is False
    assert hidden["_properties"]["revision"] == 1 and hidden["state"] == "CREATED"
    found = store.find_job(job["uuid"])  # hidden jobs are still found by uuid
    assert found is not None and found["_visible"] is False and found["updated"] == later
    assert found["history"] == job["history"]
    assert store.hide_job(job["uuid"], now=later, audit=audit) is None
    assert store.hide_job(UNKNOWN_JOB, now=later, audit=audit) is None
    assert [row["action"] for row in audit_rows(store)] == ["create", "update"]
    assert store.find_job(job["uuid"]) == found
    assert [row["action"] for row in store.audit_trail(job["uuid"])] == ["create", "update"]


@covers("remove_job", "audit_trail")
def test_remove_job_leaves_a_tombstone_and_sets_its_log_aside(store: JobStore) -> None:
    job = insert(store, make_job())
    append(store, job["uuid"], "run", state="RUNNING", revision=0)
    updated = store.find_job(job["uuid"])
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": updated}, job["_admin"], NOW)
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is True
    assert store.find_job(job["uuid"]) is None and store.find_head(job["uuid"]) is None
    last = audit_rows(store)[-1]
    assert last["action"] == "delete" and last["diff"]["deleted"] == updated
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is False  # already gone
    assert [row["action"] for row in audit_rows(store)] == ["create", "delete"]
    assert log_of(store, job["uuid"]) == []
    # the same uuid created again starts a log of its own
    again = insert(store, make_job())
    assert [r.name for r in log_of(store, again["uuid"])] == ["create"]
    assert append(store, again["uuid"], "run", state="RUNNING", revision=0)[1].status is Append.APPLIED


@covers("remove_job")
def test_remove_job_with_a_stale_revision_writes_nothing(store: JobStore) -> None:
    job = insert(store, make_job())
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": job}, job["_admin"], NOW)
    append(store, job["uuid"], "run", state="RUNNING", revision=0)
    updated = store.find_job(job["uuid"])
    assert store.remove_job(job["uuid"], expected_revision=0, tombstone=tombstone) is False
    assert store.find_job(job["uuid"]) == updated
    assert [row["action"] for row in audit_rows(store)] == ["create"]
    assert [r.name for r in log_of(store, job["uuid"])] == ["create", "run"]


@covers("list_jobs")
def test_list_jobs_filters_and_sorts_newest_first(store: JobStore) -> None:
    oldest = insert(store, make_job({"n": 1}, now=NOW))
    middle = insert(store, make_job({"n": 2}, now=NOW + timedelta(minutes=1), pipeline=OTHER_PIPELINE))
    newest = insert(store, make_job({"n": 3}, now=NOW + timedelta(minutes=2)))
    hidden = insert(store, make_job({"n": 4}, now=NOW + timedelta(minutes=3)))
    append(store, oldest["uuid"], "run", state="RUNNING", revision=0, now=NOW + timedelta(minutes=4))
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
    listed = store.list_jobs(state="RUNNING")[0]
    full = store.find_job(oldest["uuid"])
    assert full is not None and "history" not in listed  # lists never carry histories
    assert listed == {key: value for key, value in full.items() if key != "history"}


@covers("append_event")
def test_racing_events_lose_no_event(store: JobStore, store_factory: StoreFactory) -> None:
    """16 writers, each with its own connection, through the service's read-decide-append loop."""
    job = insert(store, make_job())
    token = identifiers.job_token(job["_salt"], job["uuid"], job["_admin"])
    settings = load_settings({}, ROOT / "config.yml")
    workers = 16
    barrier = threading.Barrier(workers)
    answers: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    opened_lock = threading.Lock()

    def work(i: int) -> None:
        try:
            with opened_lock:  # the factory's bookkeeping list is shared
                own = store_factory()
            barrier.wait(timeout=60)
            message = EventMessage(uuid=job["uuid"], name="update", token=token, data={"i": i})
            answers.append(service.apply_event(message, store=own, settings=settings, now=NOW))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not failures, failures
    found = store.find_job(job["uuid"])
    assert found is not None and found["_properties"]["revision"] == workers
    assert len(found["history"]) == workers + 1
    assert sorted(a["revision"] for a in answers) == list(range(1, workers + 1))
    records = log_of(store, job["uuid"])
    assert [r.seq for r in records] == list(range(workers + 1))
    assert sorted(r.data["i"] for r in records[1:] if r.data) == list(range(workers))
    assert [h["uuid"] for h in found["history"]] == [r.event_uuid for r in records]


@covers("describe", "ping", "waiting_for_server", "close")
def test_a_store_says_what_it_is_answers_a_ping_and_refuses_work_once_closed(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.backend in store.describe() and "password" not in store.describe()
    store.ping()
    store.find_pipeline(EXAMPLE_PIPELINE_UUID)  # a round trip: a networked store has reached its server
    assert store.waiting_for_server() is False
    store.close()
    with pytest.raises(Exception):  # noqa: B017 - each driver says "closed" its own way; none answers
        store.find_job(UNKNOWN_JOB)


@covers("log_unlogged_jobs")
def test_jobs_this_manager_created_need_no_history_copied_at_db_init(store: JobStore) -> None:
    job = make_job()
    insert(store, job)
    before = log_of(store, job["uuid"])
    assert store.log_unlogged_jobs() == 0
    assert log_of(store, job["uuid"]) == before and [r.name for r in before] == ["create"]


def watch_record(uuid: str, *, state: str = "RUNNING", revision: int = 1, due: datetime | None = NOW) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "state": state,
        "revision": revision,
        "since": NOW,
        "last_seen": NOW,
        "due_at": due,
        "deadlines": None,
        "effective": {"created_seconds": 60, "silent_seconds": 30, "running_seconds": 600, "validating_seconds": None},
        "logged_at": None,
    }


@covers("put_watch", "watch_record", "forget_watch")
def test_a_watch_record_is_replaced_only_by_a_newer_one(store: JobStore) -> None:
    uuid = make_job()["uuid"]
    assert store.watch_record(uuid) is None
    assert store.put_watch(watch_record(uuid, revision=2)) is True
    assert store.put_watch(watch_record(uuid, revision=1, state="CREATED")) is False  # older: not written
    assert store.watch_record(uuid)["state"] == "RUNNING"
    assert store.put_watch(watch_record(uuid, revision=3, state="FINISHED", due=None)) is True
    assert store.watch_record(uuid)["state"] == "FINISHED" and store.watch_record(uuid)["due_at"] is None
    store.forget_watch(uuid)
    assert store.watch_record(uuid) is None


@covers("enter_state", "touch_watch")
def test_entering_a_state_sets_due_from_the_records_own_deadlines_in_one_write(store: JobStore) -> None:
    uuid = make_job()["uuid"]
    store.put_watch(watch_record(uuid, state="CREATED", revision=0))
    later = NOW + timedelta(minutes=5)
    assert store.enter_state(
        uuid, state="RUNNING", revision=1, now=later, deadlines=("silent_seconds", "running_seconds")
    )
    entered = store.watch_record(uuid)
    assert (entered["state"], entered["revision"], entered["since"]) == ("RUNNING", 1, later)
    assert entered["due_at"] == later + timedelta(seconds=30)  # the smaller of silent (30) and running (600)
    assert not store.enter_state(uuid, state="FAILED", revision=1, now=later, deadlines=())  # not newer: refused
    assert store.enter_state(uuid, state="FINISHED", revision=2, now=later, deadlines=())
    assert store.watch_record(uuid)["due_at"] is None  # no deadline applies in FINISHED
    # the compare-and-set heartbeats use: at the revision, and (when named) at the logged_at read
    assert store.touch_watch(uuid, revision=1, changes={"last_seen": later}) is False
    assert store.touch_watch(uuid, revision=2, changes={"logged_at": later}, logged_at=NOW) is False
    assert store.touch_watch(uuid, revision=2, changes={"logged_at": later}, logged_at=None) is True
    assert store.touch_watch(uuid, revision=2, changes={"last_seen": later}) is True
    assert store.watch_record(uuid)["last_seen"] == later and store.watch_record(uuid)["logged_at"] == later


@covers("due_watches")
def test_due_watches_are_the_records_whose_time_has_come_earliest_first(store: JobStore) -> None:
    uuids = [make_job({"n": i})["uuid"] for i in range(4)]
    dues = [NOW + timedelta(seconds=30), NOW - timedelta(seconds=10), None, NOW]
    for uuid, due in zip(uuids, dues, strict=True):
        store.put_watch(watch_record(uuid, due=due))
    assert [r["uuid"] for r in store.due_watches(NOW, limit=10)] == [uuids[1], uuids[3]]
    assert [r["uuid"] for r in store.due_watches(NOW, limit=1)] == [uuids[1]]
    assert len(store.due_watches(NOW + timedelta(minutes=1), limit=10)) == 3


def finished_job(store: JobStore, data: dict[str, Any], *, when: datetime) -> str:
    job = make_job(data, now=when)
    insert(store, job)
    append(store, job["uuid"], "run", state="RUNNING", revision=0, now=when)
    append(store, job["uuid"], "finish", state="FINISHED", revision=1, now=when)
    return str(job["uuid"])


@covers("retention_candidates", "purge_job", "expire_tombstones")
def test_retention_finds_old_finished_and_hidden_jobs_and_purges_one_all_or_nothing(store: JobStore) -> None:
    old = NOW - timedelta(days=40)
    done = finished_job(store, {"n": 1}, when=old)
    recent = finished_job(store, {"n": 2}, when=NOW)
    hidden = make_job({"n": 3}, now=old)
    insert(store, hidden)
    store.hide_job(hidden["uuid"], now=old, audit=documents.audit_record(hidden["uuid"], "update", {}, {}, old))
    cutoff = NOW - timedelta(days=30)
    found = store.retention_candidates(states=["FINISHED"], before=cutoff, hidden_before=cutoff, limit=10)
    assert {h["uuid"] for h in found} == {done, hidden["uuid"]} and recent not in {h["uuid"] for h in found}
    assert {
        h["uuid"] for h in store.retention_candidates(states=["FINISHED"], before=cutoff, hidden_before=None, limit=10)
    } == {done}
    head = next(h for h in found if h["uuid"] == done)
    assert head["state"] == "FINISHED" and "_salt" not in head and "history" not in head
    store.put_watch(watch_record(done, revision=2, due=None))
    tombstone = {"uuid": done, "date": NOW, "action": "purge", "diff": {}, "expires_at": NOW + timedelta(days=1)}
    assert store.purge_job(done, expected_revision=1, tombstone=tombstone) is False  # it moved on: kept whole
    assert store.find_job(done) is not None and len(log_of(store, done)) == 3
    assert store.purge_job(done, expected_revision=2, tombstone=tombstone) is True
    assert store.find_job(done) is None and log_of(store, done) == [] and store.watch_record(done) is None
    assert store.audit_trail(done)[-1]["action"] == "purge"
    assert store.expire_tombstones(NOW, dry_run=True) == 0
    assert store.expire_tombstones(NOW + timedelta(days=2), dry_run=True) == 1
    assert store.expire_tombstones(NOW + timedelta(days=2)) == 1
    assert [r["action"] for r in store.audit_trail(done)] == ["create"]


@covers("query_jobs", "count_jobs", "job_totals")
def test_the_read_side_lists_counts_and_totals_the_same_jobs(store: JobStore) -> None:
    from pipelinejobs.store.listing import JOB_SUMMARY_FIELDS, JobFilter

    uuids = []
    for i in range(5):
        job = make_job({"n": i}, now=NOW + timedelta(seconds=i))
        insert(store, job)
        uuids.append(job["uuid"])
    append(store, uuids[0], "run", state="RUNNING", revision=0)
    other = make_job({"n": 9}, pipeline=OTHER_PIPELINE)
    insert(store, other)
    store.hide_job(uuids[4], now=NOW, audit=documents.audit_record(uuids[4], "update", {}, {}, NOW))
    first = store.query_jobs(JobFilter(pipeline_uuid=EXAMPLE_PIPELINE_UUID), limit=2)
    assert [j["uuid"] for j in first.jobs] == [uuids[3], uuids[2]] and first.next is not None  # newest created first
    rest = store.query_jobs(JobFilter(pipeline_uuid=EXAMPLE_PIPELINE_UUID), after=first.next, limit=2)
    assert [j["uuid"] for j in rest.jobs] == [uuids[1], uuids[0]] and rest.next is None
    assert list(first.jobs[0]) == list(JOB_SUMMARY_FIELDS) and first.jobs[0]["visible"] is True
    assert store.count_jobs(JobFilter()) == {"CREATED": 4, "RUNNING": 1}
    assert store.count_jobs(JobFilter(include_hidden=True, states=("CREATED",))) == {"CREATED": 5}
    assert store.job_totals() == {
        ("CREATED", EXAMPLE_PIPELINE_UUID): 3,
        ("RUNNING", EXAMPLE_PIPELINE_UUID): 1,
        ("CREATED", OTHER_PIPELINE): 1,
    }


def subscription(sub_id: str, when: datetime) -> dict[str, Any]:
    return {
        "id": sub_id,
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "target": "webhook",
        "url": "https://example.org/h",
        "secret": "whsec_x",
        "states": [],
        "events": [],
        "include_data": True,
        "description": "",
        "created": when,
    }


@covers("save_subscription", "list_subscriptions", "find_subscription", "delete_subscription")
def test_subscriptions_are_kept_listed_oldest_first_and_deleted_once(store: JobStore) -> None:
    store.save_subscription(subscription("sub_b", NOW + timedelta(seconds=1)))
    store.save_subscription(subscription("sub_a", NOW))
    assert [s["id"] for s in store.list_subscriptions()] == ["sub_a", "sub_b"]
    assert store.find_subscription("sub_b") == subscription("sub_b", NOW + timedelta(seconds=1))
    assert store.delete_subscription("sub_b") is True and store.delete_subscription("sub_b") is False
    assert store.find_subscription("sub_b") is None and [s["id"] for s in store.list_subscriptions()] == ["sub_a"]


@covers(
    "claim_notifications",
    "event_fates",
    "settle_notifications",
    "release_notifications",
    "list_deliveries",
    "expire_deliveries",
)
def test_the_outbox_is_claimed_by_one_dispatcher_delivered_and_settled(
    store: JobStore, store_factory: StoreFactory
) -> None:
    from pipelinejobs.store.outbox import EventFate, Settled

    job = make_job()
    insert(store, job)
    uuid = job["uuid"]
    record = EventRecord(
        uuid=uuid,
        seq=1,
        event_uuid=identifiers.random_uuid("pipelinejob_event"),
        name="run",
        date=NOW,
        data=None,
        state="RUNNING",
        notify=("sub_a", "sub_b"),
    )
    assert store.append_event(record, expected_revision=0).status is Append.APPLIED
    until = NOW + timedelta(minutes=2)
    items = store.claim_notifications(NOW, until=until, owner="d1", limit=10)
    assert [(i.uuid, i.seq, i.pending, i.attempts) for i in items] == [(uuid, 1, ("sub_a", "sub_b"), 0)]
    assert items[0].record is not None and items[0].record.event_uuid == record.event_uuid
    other = store_factory()  # another dispatcher, elsewhere, while d1's lease is live: nothing
    assert other.claim_notifications(NOW, until=until, owner="d2", limit=10) == []
    assert store.event_fates(items, now=NOW, grace_seconds=30) == [(EventFate.APPLIED, EXAMPLE_PIPELINE_UUID)]
    row = {
        "webhook_id": "msg_1",
        "subscription": "sub_a",
        "job_uuid": uuid,
        "event": "run",
        "attempt": 1,
        "outcome": "delivered",
        "at": NOW,
        "expires_at": NOW + timedelta(days=1),
    }
    retry_at = NOW + timedelta(seconds=60)
    assert store.settle_notifications("d1", [Settled(items[0], ("sub_b",), 1, retry_at)], [row]) == 1
    assert store.claim_notifications(NOW + timedelta(seconds=1), until=until, owner="d1", limit=10) == []  # not due
    later = store.claim_notifications(retry_at, until=retry_at + timedelta(minutes=2), owner="d1", limit=10)
    assert [(i.pending, i.attempts) for i in later] == [(("sub_b",), 1)]
    assert store.settle_notifications("d1", [Settled(later[0], (), 2, retry_at)], []) == 1
    assert (
        store.claim_notifications(
            retry_at + timedelta(days=1), until=retry_at + timedelta(days=2), owner="d1", limit=10
        )
        == []
    )
    store.release_notifications("d1")
    assert store.list_deliveries(job_uuid=uuid) == [row] and store.list_deliveries(subscription="sub_b") == []
    assert store.expire_deliveries(NOW) == 0 and store.expire_deliveries(NOW + timedelta(days=2)) >= 1
    assert store.list_deliveries(job_uuid=uuid) == []


@covers("set_progress")
def test_progress_fields_are_set_and_removed_without_touching_state_revision_or_history(store: JobStore) -> None:
    uuid = insert(store, make_job())["uuid"]
    before = store.find_job(uuid)
    assert store.set_progress(uuid, {"done": 1, "total": 4, "failed.2": "b", "failed.7": "c", "updated": NOW})
    assert store.set_progress(uuid, {"done": 2, "failed.2": None})
    job = store.find_job(uuid)
    assert job["progress"] == {"done": 2, "total": 4, "failed": {"7": "c"}, "updated": NOW}
    assert {k: v for k, v in job.items() if k != "progress"} == before
    assert store.set_progress("107b93f3-1eae-5e79-8a18-0a480f8aa3a5", {"done": 1}) is False
    for bad in ("failed.$where", "a.b.c.d", "", "x y"):
        with pytest.raises(ValueError):
            store.set_progress(uuid, {bad: 1})


@covers("record_task")
def test_a_task_record_and_its_progress_are_one_step_and_a_known_delivery_changes_nothing(store: JobStore) -> None:
    from pipelinejobs.store.records import Append, EventRecord, Outcome

    uuid = insert(store, make_job())["uuid"]

    def task(slot: str, event_id: str | None) -> EventRecord:
        return EventRecord(
            uuid,
            0,
            f"108{slot}",
            "process_completed",
            NOW,
            {"n": slot},
            "CREATED",
            Outcome.TASK,
            slot,
            "nextflow",
            event_id,
        )

    assert store.record_task(task("a", "nextflow:1"), {"done": 1}).status is Append.APPLIED
    assert store.find_job(uuid)["progress"] == {"done": 1}
    again = store.record_task(task("b", "nextflow:1"), {"done": 2})
    assert again.status is Append.REPLAYED and again.existing is not None and again.existing.slot == "a"
    assert store.find_job(uuid)["progress"] == {"done": 1}  # the repeat's progress is not applied
    assert [r.slot for r in iter_history(store, uuid) if r.outcome is Outcome.TASK] == ["a"]
    assert store.record_task(task("c", None), {}).status is Append.APPLIED


@covers("job_counts", "count_move", "recount_jobs")
def test_the_job_counts_follow_creates_transitions_and_hides_and_a_recount_finds_nothing_to_repair(
    store: JobStore,
) -> None:
    def counts() -> dict[tuple[str, str], int]:
        return {key: n for key, n in store.job_counts().items() if n}

    first, second = make_job({"n": 1}), make_job({"n": 2})
    insert(store, first)
    insert(store, second)
    assert counts() == {("CREATED", EXAMPLE_PIPELINE_UUID): 2} == store.job_totals()
    # an event that moves the state, then what the event path does after an applied append
    assert append(store, first["uuid"], "run", state="RUNNING", revision=0)[1].status is Append.APPLIED
    store.count_move(EXAMPLE_PIPELINE_UUID, "CREATED", "RUNNING")
    store.hide_job(second["uuid"], now=NOW, audit=documents.audit_record(second["uuid"], "update", {}, {}, NOW))
    assert counts() == {("RUNNING", EXAMPLE_PIPELINE_UUID): 1} == store.job_totals()
    recount = store.recount_jobs(settle=0.05)
    assert recount.applied is True and recount.corrections == {}
    assert counts() == store.job_totals()


def test_every_contract_method_has_a_contract_test() -> None:
    """The contract is the JobStore protocol; each of its methods is run on both stores above."""
    contract = {name for name, value in vars(JobStore).items() if callable(value) and not name.startswith("_")}
    assert sorted(contract - set(COVERED)) == []
    assert sorted(set(COVERED) - contract) == []  # a covers() naming a method the contract no longer has


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
                columns = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
                key = columns[0] if len(columns) == 1 else tuple(columns)  # compound: (state, updated)
                indexed.setdefault(table, set()).add((key, bool(unique)))
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
            append(impatient, job["uuid"], "run", state="RUNNING", revision=0)
        assert err.value.kind is ErrorKind.STORAGE_UNAVAILABLE and "locked" in err.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert impatient.find_job(job["uuid"]) == job
    assert len(audit_rows(impatient)) == 1
    # the lock is gone: the same store object works again
    assert append(impatient, job["uuid"], "run", state="RUNNING", revision=0)[1].status is Append.APPLIED
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
