"""Workflow engines' reports through the one business path, on both stores (``service.apply_report``).

In-process, like tests/test_event_log.py; the engines' own routes and payloads are tested in
tests/test_nextflow.py and tests/test_snakemake.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pipelinejobs import service
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import ReportMessage
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.store.base import JobStore, iter_history
from tests.conftest import ROOT
from tests.test_event_log import new_job, snapshot

NOW = datetime(2026, 12, 1, 9, 30, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings({}, ROOT / "config.yml")


def report(
    store: JobStore,
    settings: Settings,
    uuid: str,
    token: str | None,
    name: str,
    *,
    operator: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    fields.setdefault("data", {"report": name})
    now = fields.pop("now", NOW)
    message = ReportMessage(uuid=uuid, name=name, via=fields.pop("via", "snakemake"), token=token, **fields)
    return service.handle(message, store=store, settings=settings, now=now, operator=operator)


def test_the_first_report_runs_the_job_and_later_ones_are_task_records(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    first = report(store, settings, uuid, token, "info")
    assert first["applied"] is True and first["state"] == "RUNNING" and first["report"] == "info"
    window = store.find_job(uuid)["history"]
    task = report(store, settings, uuid, token, "job_info", data={"rule": "a", "jobid": 3})
    assert task["applied"] is False and task["state"] == "RUNNING"
    job = store.find_job(uuid)
    assert job["history"] == window and job["_properties"]["revision"] == first["revision"]
    records = list(iter_history(store, uuid))
    assert [(r.name, r.outcome.value, r.via) for r in records[-2:]] == [
        ("run", "applied", "snakemake"),
        ("job_info", "task", "snakemake"),
    ]
    assert records[-1].data == {"rule": "a", "jobid": 3}


def test_a_success_as_first_report_is_preceded_by_an_implied_run(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    outcome = report(store, settings, uuid, token, "workflow_success", effect="finish")
    assert outcome["state"] == "FINISHED"
    assert [e["name"] for e in store.find_job(uuid)["history"]] == ["create", "run", "finish"]


def test_an_effect_that_changes_nothing_is_kept_as_a_task_record(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    report(store, settings, uuid, token, "progress", effect="finish", progress={"done": 4, "total": 4})
    assert store.find_job(uuid)["state"] == "FINISHED"
    again = report(store, settings, uuid, token, "workflow_success", effect="finish")
    assert again["applied"] is False and again["state"] == "FINISHED"
    assert [e["name"] for e in store.find_job(uuid)["history"]] == ["create", "run", "finish"]
    late = report(store, settings, uuid, token, "error", effect="fail")  # past it: logged as stale, not refused
    assert late.get("stale") is True and store.find_job(uuid)["state"] == "FINISHED"


def test_a_failing_run_names_the_tasks_that_started_and_never_finished(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    report(store, settings, uuid, token, "job_info", progress={"unfinished.2": "b"})
    report(store, settings, uuid, token, "job_info", progress={"unfinished.5": "d"})
    report(store, settings, uuid, token, "job_info", progress={"unfinished.5": "d"})  # d's second attempt
    report(store, settings, uuid, token, "job_finished", progress={"unfinished.5": None})  # ... succeeded
    failed = report(store, settings, uuid, token, "error", effect="fail", data={"error": "WorkflowError"})
    assert failed["state"] == "FAILED"
    job = store.find_job(uuid)
    assert job["history"][-1]["data"] == {"error": "WorkflowError", "failed": ["b"]}
    assert job["progress"]["unfinished"] == {"2": "b"} and job["progress"]["engine"] == "snakemake"


def test_reports_need_the_jobs_token_unless_the_caller_is_the_operator(store: JobStore, settings: Settings) -> None:
    uuid, _ = new_job(store)
    other_uuid, other_token = new_job(store, {"n": 2})
    before = snapshot(store, uuid)
    for wrong in (None, other_token, "0" * 16):
        with pytest.raises(PipelineJobsError) as refused:
            report(store, settings, uuid, wrong, "info", progress={"done": 1, "total": 2})
        assert refused.value.kind is ErrorKind.UNAUTHORIZED
    assert snapshot(store, uuid) == before
    assert report(store, settings, uuid, None, "info", operator=True)["state"] == "RUNNING"
    assert other_uuid != uuid


def test_a_report_delivered_twice_is_kept_once(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    for name, effect in (("started", "run"), ("process_completed", None), ("completed", "finish")):
        first = report(store, settings, uuid, token, name, via="nextflow", effect=effect, event_id=f"nextflow:{name}")
        later = NOW + timedelta(seconds=5)
        again = report(
            store, settings, uuid, token, name, via="nextflow", effect=effect, event_id=f"nextflow:{name}", now=later
        )
        assert again == {**first, "replayed": True}
    assert [r.name for r in iter_history(store, uuid)] == ["create", "run", "process_completed", "finish"]


def test_a_task_record_on_a_datacatalog_job_keeps_its_history_in_the_log(
    mongodb_uri: str, database_name: str, db: Any
) -> None:
    """python-datacatalog kept a job's history in its document only: the first record in the log must not hide it."""
    from pipelinejobs import documents
    from pipelinejobs.store.mongo import MongoJobStore
    from pipelinejobs.store.records import EventRecord, Outcome
    from tests.test_mongo_store import UUID, _job

    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        job = _job()
        job["history"] += [documents.history_entry("run", None, NOW)]
        job["_properties"] = {"revision": 1}  # no source: written by the library, no log yet
        job["state"] = "RUNNING"
        db.jobs.insert_one(dict(job))
        old = [entry["uuid"] for entry in job["history"]]
        task = EventRecord(
            UUID, 1, "108task", "job_info", NOW, {"rule": "a"}, "RUNNING", Outcome.TASK, "x", "snakemake"
        )
        assert store.record_task(task, {"done": 0, "total": 3}).status.value == "applied"
        records = list(iter_history(store, UUID))
        assert [r.event_uuid for r in records] == [*old, "108task"]
        assert [r.outcome for r in records] == [Outcome.IMPORTED] * len(old) + [Outcome.TASK]
