"""MongoDB-only paths: indexes, and the ordered-writes fallback used where a server has no transactions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipelinejobs import documents
from pipelinejobs.settings import Identity
from pipelinejobs.store.mongo import MongoJobStore

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


def _job(uuid: str = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5") -> dict[str, Any]:
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


def test_indexes_are_created_once_and_unique(mongodb_uri: str, database_name: str, db: Any) -> None:
    store = MongoJobStore(mongodb_uri, database_name)
    store.ensure_indexes()
    store.ensure_indexes()
    jobs = db.jobs.index_information()
    assert jobs["uuid_unique"]["unique"] is True and "state" in jobs and "pipeline_uuid" in jobs
    pipelines = db.pipelines.index_information()
    assert pipelines["uuid_unique"]["unique"] is True and pipelines["id_unique"]["unique"] is True
    store.close()


def test_without_transactions_a_stale_force_delete_leaves_no_tombstone(
    mongodb_uri: str, database_name: str, db: Any
) -> None:
    store = MongoJobStore(mongodb_uri, database_name)
    store.ensure_indexes()
    store._transactions = False  # exercise the ordered-writes path a standalone mongod takes
    job = _job()
    _, created = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
    assert created and db.updates.count_documents({}) == 1
    entry = documents.history_entry("run", None, NOW)
    audit = documents.audit_record(job["uuid"], "update", {"event": "run"}, job["_admin"], NOW)
    updated = store.apply_event(
        job["uuid"], from_states={"CREATED"}, entry=entry, new_state="RUNNING", now=NOW, audit=audit
    )
    assert updated is not None and updated["_properties"]["revision"] == 1
    tombstone = documents.audit_record(job["uuid"], "delete", {"deleted": updated}, job["_admin"], NOW)
    assert store.remove_job(job["uuid"], expected_revision=0, tombstone=tombstone) is False
    assert db.jobs.count_documents({"uuid": job["uuid"]}) == 1
    assert db.updates.count_documents({"action": "delete"}) == 0
    assert store.remove_job(job["uuid"], expected_revision=1, tombstone=tombstone) is True
    assert db.jobs.count_documents({}) == 0 and db.updates.count_documents({"action": "delete"}) == 1
    store.close()
