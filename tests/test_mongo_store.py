"""MongoDB-only paths: indexes, the log-first compare-and-set's repair, legacy histories, no-transaction deletes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pipelinejobs import deadlines, documents, identifiers
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.settings import Identity
from pipelinejobs.store.base import iter_history
from pipelinejobs.store.mongo import INDEXES, MongoJobStore
from pipelinejobs.store.records import Append, EventRecord, Outcome

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
UUID = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"


def _job(uuid: str = UUID) -> dict[str, Any]:
    return documents.new_job(
        uuid=uuid,
        pipeline_uuid="10650844-1baa-55c5-a481-5e945b19c065",
        archive_path="/a",
        archive_system=None,
        data={"x": 1},
        session=None,
        child_of=[],
        identity=IDENTITY,
        now=NOW,
    )


def _record(seq: int, name: str = "update", state: str = "CREATED", uuid: str = UUID) -> EventRecord:
    return EventRecord(
        uuid=uuid,
        seq=seq,
        event_uuid=identifiers.random_uuid("pipelinejob_event"),
        name=name,
        date=NOW,
        data={"seq": seq},
        state=state,
    )


@pytest.fixture
def store(mongodb_uri: str, database_name: str, db: Any) -> Any:
    with MongoJobStore(mongodb_uri, database_name) as opened:
        opened.ensure_indexes()
        yield opened


def test_indexes_are_created_once_and_unique(mongodb_uri: str, database_name: str, db: Any) -> None:
    store = MongoJobStore(mongodb_uri, database_name)
    assert sorted(store.missing_indexes()) == sorted(INDEXES)
    store.ensure_indexes()
    store.ensure_indexes()
    assert store.missing_indexes() == []
    jobs = db.jobs.index_information()
    assert jobs["uuid_unique"]["unique"] is True and "state_created" in jobs and "pipeline_created" in jobs
    pipelines = db.pipelines.index_information()
    assert pipelines["uuid_unique"]["unique"] is True and pipelines["id_unique"]["unique"] is True
    events = db.events.index_information()
    assert events["uuid_seq_unique"]["unique"] is True
    assert events["uuid_event_id_unique"]["partialFilterExpression"] == {"event_id": {"$exists": True}}
    store.close()


def test_db_init_drops_the_indexes_earlier_versions_made(mongodb_uri: str, database_name: str, db: Any) -> None:
    """An upgraded catalog loses the single-field indexes that compound ones now cover, and keeps its others."""
    db.jobs.create_index([("state", 1)], name="state")
    db.jobs.create_index([("pipeline_uuid", 1)], name="pipeline_uuid")
    db.jobs.create_index([("state", 1), ("pipeline_uuid", 1)], name="state_pipeline")
    db.jobs.create_index([("data.sample", 1)], name="an_operators_own")
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        assert store.missing_indexes() == []
    names = set(db.jobs.index_information())
    assert not names & {"state", "pipeline_uuid", "state_pipeline"}
    assert {"an_operators_own", "state_created", "pipeline_created", "uuid_unique"} <= names


def test_a_database_without_indexes_is_reported_not_used(mongodb_uri: str, database_name: str, db: Any) -> None:
    """Without `pipelinejobs db init` an event would run unindexed and without its unique keys: refuse clearly."""
    db.jobs.insert_one(_job())
    with MongoJobStore(mongodb_uri, database_name) as store, pytest.raises(PipelineJobsError) as err:
        store.find_head(UUID)
    assert err.value.kind is ErrorKind.CONFIGURATION and "pipelinejobs db init" in err.value.message
    assert db.list_collection_names() == ["jobs"]  # nothing was created or written


def test_a_writer_that_died_between_log_and_document_is_rolled_forward(store: MongoJobStore, db: Any) -> None:
    store.insert_job(_job(), {"uuid": UUID, "action": "create"})
    orphan = _record(1, "run", "RUNNING")
    db.events.insert_one(orphan.to_document())  # logged, then the writer died before updating the job
    assert db.jobs.find_one({"uuid": UUID})["_properties"]["revision"] == 0
    late = _record(1)
    assert store.append_event(late, expected_revision=0).status is Append.MOVED
    job = db.jobs.find_one({"uuid": UUID})
    assert job["state"] == "RUNNING" and job["_properties"]["revision"] == 1
    assert job["history"][-1]["uuid"] == orphan.event_uuid
    again = EventRecord(**{**late.__dict__, "seq": 2, "state": "RUNNING"})
    assert store.append_event(again, expected_revision=1).status is Append.APPLIED
    assert [r.event_uuid for r in iter_history(store, UUID)][1:] == [orphan.event_uuid, again.event_uuid]


def test_a_job_changed_outside_the_log_makes_the_append_undo_its_record(store: MongoJobStore, db: Any) -> None:
    store.insert_job(_job(), {"uuid": UUID, "action": "create"})
    db.jobs.update_one({"uuid": UUID}, {"$set": {"_properties.revision": 1}})  # e.g. datacatalog's own write
    assert store.append_event(_record(1), expected_revision=0).status is Append.MOVED
    assert [r.seq for r in iter_history(store, UUID)] == [0]  # the would-be record was taken back


def test_a_datacatalog_history_is_imported_before_the_window_trims_it(
    mongodb_uri: str, database_name: str, db: Any
) -> None:
    with MongoJobStore(mongodb_uri, database_name, history_window=10) as store:
        store.ensure_indexes()
        job = _job()
        job["history"] += [documents.history_entry("update", {"old": i}, NOW) for i in range(11)]
        job["_properties"]["revision"] = 11
        db.jobs.insert_one(dict(job))  # as python-datacatalog writes it: history only in the document
        old = [entry["uuid"] for entry in job["history"]]
        page = store.history(UUID, limit=5)  # readable before any event touched it
        assert [r.event_uuid for r in page.records] == old[:5] and page.next is not None
        assert [r.event_uuid for r in store.history(UUID, after=page.next, limit=50).records] == old[5:]
        assert store.append_event(_record(12), expected_revision=11).status is Append.APPLIED
        records = list(iter_history(store, UUID))
        assert [r.event_uuid for r in records[:12]] == old and {r.outcome for r in records[:12]} == {Outcome.IMPORTED}
        assert [r.seq for r in records[12:]] == [12]
        assert len(db.jobs.find_one({"uuid": UUID})["history"]) == 10


def test_without_transactions_a_stale_force_delete_leaves_no_tombstone(store: MongoJobStore, db: Any) -> None:
    store._transactions = False  # exercise the ordered-writes path a standalone mongod takes
    job = _job()
    _, created = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
    assert created and db.updates.count_documents({}) == 1
    assert store.append_event(_record(1, "run", "RUNNING"), expected_revision=0).status is Append.APPLIED
    updated = store.find_job(UUID)
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": updated}, job["_admin"], NOW)
    assert store.remove_job(job["uuid"], expected_revision=0, tombstone=tombstone) is False
    assert db.jobs.count_documents({"uuid": job["uuid"]}) == 1
    assert db.updates.count_documents({"action": "delete"}) == 0
    assert db.events.count_documents({"uuid": UUID}) == 2  # the log is back where it was
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is True
    assert db.jobs.count_documents({}) == 0 and db.updates.count_documents({"action": "delete"}) == 1
    assert db.events.count_documents({"uuid": UUID}) == 0 and db.events.count_documents({}) == 2


def test_an_event_costs_three_commands_and_reads_no_whole_document(
    mongodb_uri: str, database_name: str, db: Any
) -> None:
    """The hot path as serve runs it (one store, warm): head read, log insert, conditional update."""
    from pymongo import monitoring

    from pipelinejobs import service
    from pipelinejobs.messages import EventMessage
    from pipelinejobs.notify import matching
    from pipelinejobs.settings import load_settings
    from tests.conftest import ROOT

    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            self.seen.append({"name": event.command_name, "command": dict(event.command)})

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    listener = Commands()
    settings = load_settings({}, ROOT / "config.yml")
    with MongoJobStore(mongodb_uri, database_name, client_options={"event_listeners": [listener]}) as store:
        store.ensure_indexes()
        job = _job()
        store.insert_job(job, {"uuid": UUID, "action": "create"})
        token = identifiers.job_token(job["_salt"], UUID, job["_admin"])
        matching.subscriptions(store, settings)  # warm: the subscription list is cached per store (issue 10)
        for i in range(3):
            listener.seen.clear()
            message = EventMessage(UUID, "update", token, {"i": i})
            outcome = service.handle(message, store=store, settings=settings, now=NOW)
            assert outcome["applied"] is True
            assert [c["name"] for c in listener.seen] == ["find", "insert", "update"], listener.seen
        head_read = listener.seen[0]["command"]
        assert "history" not in head_read["projection"] and "data" not in head_read["projection"]
        # a job with deadlines (issue 10) also has a watch record: a state change moves it in one more write
        store.put_watch(
            deadlines.new_record(
                uuid=UUID,
                pipeline_uuid=None,
                state="CREATED",
                revision=3,
                since=NOW,
                last_seen=NOW,
                own=None,
                settings=settings,
            )
        )
        listener.seen.clear()
        outcome = service.handle(EventMessage(UUID, "run", token), store=store, settings=settings, now=NOW)
        assert outcome["state"] == "RUNNING"
        # ... and one more moves the job counts of /metrics (issue 20): acknowledged by the primary, not journaled
        assert [(c["name"], c["command"][c["name"]]) for c in listener.seen] == [
            ("find", "jobs"),
            ("insert", "events"),
            ("update", "jobs"),
            ("update", "job_counts"),
            ("update", "watch"),
        ], listener.seen
        assert listener.seen[3]["command"]["writeConcern"] == {"w": 1}
        pipeline = "10650844-1baa-55c5-a481-5e945b19c065"
        assert store.job_counts() == {("CREATED", pipeline): 0, ("RUNNING", pipeline): 1}
        moved = store.watch_record(UUID)
        assert moved is not None and moved["state"] == "RUNNING" and moved["revision"] == 4
        expected = min(
            v for v in (settings.section("deadlines").get(k) for k in ("silent_seconds", "running_seconds")) if v
        )
        assert moved["due_at"] == NOW + timedelta(seconds=expected)
