"""The event log through the one business path, on both stores: replays, conflicts, stale callbacks, volume.

Messages go through ``service.handle`` in-process (the rules); tests/test_reactor.py and
tests/test_serve_*.py keep the whole-process cases.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo.write_concern import WriteConcern

from pipelinejobs import documents, identifiers, service
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import EventMessage
from pipelinejobs.settings import Identity, Settings, load_settings
from pipelinejobs.store.base import JobStore, iter_history
from pipelinejobs.store.records import Outcome
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
Factory = Callable[..., JobStore]


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings({}, ROOT / "config.yml")


def new_job(
    store: JobStore, data: dict[str, Any] | None = None, *, pipeline: str = EXAMPLE_PIPELINE_UUID, at: Any = NOW
) -> tuple[str, str]:
    """A job in CREATED, written through the store (created ``at``); returns (uuid, token)."""
    data = {"n": 1} if data is None else data
    job = documents.new_job(
        uuid=identifiers.job_uuid(pipeline, [], data),
        pipeline_uuid=pipeline,
        archive_path="/products/x",
        archive_system=None,
        data=data,
        session=None,
        child_of=[],
        identity=IDENTITY,
        now=at,
    )
    stored, _ = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], at))
    return job["uuid"], identifiers.job_token(stored["_salt"], job["uuid"], stored["_admin"])


def send(store: JobStore, settings: Settings, uuid: str, token: str, name: str, **fields: Any) -> dict[str, Any]:
    message = EventMessage(uuid=uuid, name=name, token=token, **fields)
    return service.handle(message, store=store, settings=settings, now=fields.pop("now", NOW))


def snapshot(store: JobStore, uuid: str) -> Any:
    return store.find_job(uuid), list(iter_history(store, uuid))


# -- idempotent delivery ---------------------------------------------------------------------
def test_a_repeated_delivery_returns_the_original_outcome_and_changes_nothing(
    store: JobStore, settings: Settings
) -> None:
    uuid, token = new_job(store)
    first = send(store, settings, uuid, token, "run", data={"k": 1}, event_id="callback-7")
    assert first["applied"] is True and first["state"] == "RUNNING" and "replayed" not in first
    before = snapshot(store, uuid)
    again = send(store, settings, uuid, token, "run", data={"k": 1}, event_id="callback-7")
    assert again == {**first, "replayed": True}
    assert snapshot(store, uuid) == before
    # still answered once the job has moved on (the event would now be an invalid transition)
    send(store, settings, uuid, token, "finish")
    late = send(store, settings, uuid, token, "run", data={"k": 1}, event_id="callback-7")
    assert late == {**first, "replayed": True}


def test_the_same_delivery_id_with_another_payload_is_a_conflict(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    send(store, settings, uuid, token, "update", data={"k": 1}, event_id="d-1")
    before = snapshot(store, uuid)
    for name, data in (("update", {"k": 2}), ("run", {"k": 1}), ("update", None)):
        with pytest.raises(PipelineJobsError) as err:
            send(store, settings, uuid, token, name, data=data, event_id="d-1")
        assert err.value.kind is ErrorKind.CONFLICT and "event_id" in err.value.message
    assert snapshot(store, uuid) == before


def test_sixteen_concurrent_deliveries_of_one_id_make_one_record(store_factory: Factory, settings: Settings) -> None:
    setup = store_factory()
    uuid, token = new_job(setup)
    workers = 16
    barrier = threading.Barrier(workers)
    answers: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        try:
            with lock:
                own = store_factory()  # a connection of its own, like a separate process
            barrier.wait(timeout=60)
            answers.append(send(own, settings, uuid, token, "update", data={"same": True}, event_id="once"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not failures, failures
    records = [r for r in iter_history(setup, uuid) if r.event_id == "once"]
    assert len(records) == 1
    assert {a["event_uuid"] for a in answers} == {records[0].event_uuid}
    assert sorted(a.get("replayed", False) for a in answers) == [False] + [True] * (workers - 1)
    job = setup.find_job(uuid)
    assert job is not None and job["_properties"]["revision"] == 1 and len(job["history"]) == 2


# -- stale scheduler callbacks -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("via", "path", "name", "status"),
    [
        ("agave", ["run", "finish"], "run", "RUNNING"),  # RUNNING after FINISHED
        ("tapis", ["run"], "resource", "QUEUED"),  # QUEUED after RUNNING
        ("agave", ["run", "finish", "retire"], "fail", "FAILED"),  # anything after RETIRED
        ("tapis", ["run", "finish", "validate", "validated"], "update", "RUNNING"),
    ],
)
def test_a_late_scheduler_callback_is_logged_and_answered_ok_without_changing_the_job(
    store: JobStore, settings: Settings, via: str, path: list[str], name: str, status: str
) -> None:
    uuid, token = new_job(store)
    for step in path:
        send(store, settings, uuid, token, step)
    before = store.find_job(uuid)
    answer = send(store, settings, uuid, token, name, via=via, status=status, data={"status": status})
    assert answer["status"] == "ok" and answer["applied"] is False and answer["stale"] is True
    assert answer["state"] == before["state"] and answer["revision"] == len(path)  # type: ignore[index]
    assert store.find_job(uuid) == before
    last = list(iter_history(store, uuid))[-1]
    assert (last.outcome, last.name, last.via, last.event_uuid) == (Outcome.STALE, name, via, answer["event_uuid"])
    # the next real event still gets the next revision
    if before["state"] == "RUNNING":  # type: ignore[index]
        assert send(store, settings, uuid, token, "update")["revision"] == len(path) + 1


def test_explicit_events_keep_the_invalid_transition_error(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    send(store, settings, uuid, token, "run")
    send(store, settings, uuid, token, "finish")
    before = snapshot(store, uuid)
    for via in ("message", "url"):
        with pytest.raises(PipelineJobsError) as err:
            send(store, settings, uuid, token, "run", via=via)
        assert err.value.kind is ErrorKind.INVALID_TRANSITION
    # a scheduler's status the job is not past yet (FINISHED before RUNNING) is an error too
    fresh, fresh_token = new_job(store, {"n": 2})
    with pytest.raises(PipelineJobsError) as err:
        send(store, settings, fresh, fresh_token, "finish", via="agave", status="FINISHED")
    assert err.value.kind is ErrorKind.INVALID_TRANSITION
    assert snapshot(store, uuid) == before


def test_a_repeated_stale_delivery_is_replayed(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    send(store, settings, uuid, token, "run")
    first = send(store, settings, uuid, token, "resource", via="tapis", status="QUEUED", event_id="tapis:e1")
    again = send(store, settings, uuid, token, "resource", via="tapis", status="QUEUED", event_id="tapis:e1")
    assert first["stale"] is True and again == {**first, "replayed": True}
    assert [r.outcome for r in iter_history(store, uuid)].count(Outcome.STALE) == 1


# -- volume ------------------------------------------------------------------------------------
def test_a_long_log_keeps_the_document_bounded(store_factory: Factory, request: pytest.FixtureRequest) -> None:
    """Written through the store API (the service's path minus token checks), read back in order.

    600 events, sixty times a history window of 10: the document keeps the window, the log keeps
    everything (20,000 events in a window of 100 cost this suite five minutes and showed nothing more).
    """
    from pipelinejobs.store.records import Append, EventRecord

    # majority + journaled writes cost a disk flush each on secantusd-py; this test is about the log's
    # shape, not durability (tests/test_durability.py is), so it writes with w=1 to stay within minutes
    window = 10
    options: dict[str, Any] = {"history_window": window}
    if "mongodb" in request.node.name:
        options["write_concern"] = WriteConcern(w=1)
    store = store_factory(**options)
    uuid, _ = new_job(store)
    count = 600
    for seq in range(1, count + 1):
        record = EventRecord(
            uuid=uuid,
            seq=seq,
            event_uuid=identifiers.random_uuid("pipelinejob_event"),
            name="update",
            date=NOW + timedelta(seconds=seq),
            data={"i": seq},
            state="CREATED",
        )
        assert store.append_event(record, expected_revision=seq - 1).status is Append.APPLIED
    job = store.find_job(uuid)
    assert job is not None and job["_properties"]["revision"] == count
    assert len(job["history"]) == window
    assert [h["data"]["i"] for h in job["history"]] == list(range(count - window + 1, count + 1))
    size = len(json.dumps(job, default=str).encode())  # far below MongoDB's 16 MB, whatever the count
    assert size < 64 * 1024, size
    seqs = [r.seq for r in iter_history(store, uuid, page_size=1000)]
    assert seqs == list(range(count + 1))
