"""The event log end to end: reactor.py as Abaco runs it and `pipelinejobs serve` over HTTP.

The rules are tested in-process in tests/test_event_log.py; here a few whole-process
cases show that delivery ids, replays, conflicts and late callbacks reach the platform
as they should: exit 0 for a replay or a late callback, one log record however many
processes deliver the same id.
"""

from __future__ import annotations

import json
from typing import Any

from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, Reactor
from tests.server_fixtures import LiveServer
from tests.test_delivery_ids import agave_record
from tests.test_reactor import create_job, send, snapshot

SYNC = {"_abaco_synchronous": "true"}


def log_of(db: Any, uuid: str) -> list[dict[str, Any]]:
    return list(db.events.find({"uuid": uuid}, {"_id": False}).sort([("seq", 1), ("slot", 1)]))


def test_a_retried_delivery_is_answered_not_applied(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    event = {"uuid": uuid, "name": "run", "token": token, "data": {"k": 1}, "event_id": "send-1"}
    first = send(reactor, event)
    before = snapshot(db)
    again = send(reactor, event)  # e.g. send_message retrying after a timeout
    assert again == {**first, "replayed": True}
    assert snapshot(db) == before
    # by URL parameters too: the id in the URL, the data in the body
    out = reactor.run({"k": 1}, params={"uuid": uuid, "name": "run", "token": token, "event_id": "send-1"})
    assert out.returncode == 0 and out.result == {**first, "replayed": True}
    # the same id for another message is refused and changes nothing
    out = reactor.run({**event, "data": {"k": 2}})
    assert out.returncode == 1 and out.result["kind"] == "conflict" and "Traceback" not in out.stderr
    assert snapshot(db) == before


def test_sixteen_processes_delivering_one_id_make_one_record(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    event = {"uuid": uuid, "name": "update", "token": token, "data": {"once": True}, "event_id": "webhook-42"}
    procs = [reactor.start(event) for _ in range(16)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, outputs
    answers = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    records = [r for r in log_of(db, uuid) if r.get("event_id") == "webhook-42"]
    assert len(records) == 1
    assert {a["event_uuid"] for a in answers} == {records[0]["event_uuid"]}
    assert sum(1 for a in answers if not a.get("replayed")) == 1
    assert db.jobs.find_one({"uuid": uuid})["_properties"]["revision"] == 1


def test_a_late_agave_callback_is_ok_and_not_applied(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token})
    send(reactor, {"uuid": uuid, "name": "finish", "token": token})
    before = db.jobs.find_one({"uuid": uuid}, {"_id": False})
    # Agave's persistent RUNNING notification, delivered after FINISHED
    late = reactor.run(agave_record("RUNNING"), params={"uuid": uuid, "token": token, "status": "RUNNING"})
    assert late.returncode == 0, late.stdout + late.stderr
    answer = late.result
    assert answer["status"] == "ok" and answer["applied"] is False and answer["stale"] is True
    assert answer["state"] == "FINISHED" and answer["event"] == "run"
    assert db.jobs.find_one({"uuid": uuid}, {"_id": False}) == before
    last = log_of(db, uuid)[-1]
    assert (last["outcome"], last["via"], last["event_uuid"]) == ("stale", "agave", answer["event_uuid"])
    # a person sending the same event keeps the error
    out = reactor.run({"uuid": uuid, "name": "run", "token": token})
    assert out.returncode == 1 and out.result["kind"] == "invalid_transition"


def _tapis(status: str, event_uuid: str) -> dict[str, Any]:
    return {
        "uuid": "notification-" + event_uuid,
        "tenant": "tacc",
        "subscriptionName": "pipelinejob",
        "eventUuid": event_uuid,
        "event": {
            "source": "https://tacc.tapis.io/v3/jobs",
            "type": f"jobs.JOB_NEW_STATUS.{status}",
            "subject": "tapis-job-1",
            "data": json.dumps({"newJobStatus": status, "oldJobStatus": "PENDING"}),
        },
    }


def test_a_late_tapis_notification_over_serve_is_ok_and_logged_once(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    with server.open_store() as store:  # the example pipeline, registered as `pipeline register` would
        store.save_pipeline({"id": "tacc/tacobot:9000", "uuid": EXAMPLE_PIPELINE_UUID})
    with web.client(headers=server.auth, timeout=30) as http:
        create = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {}}
        created = http.post(server.messages_url, params=SYNC, json=create)
        job = created.json()
        params = {**SYNC, "uuid": job["uuid"], "token": job["token"]}
        running = http.post(server.messages_url, params=params, json=_tapis("RUNNING", "e-running"))
        assert running.json()["state"] == "RUNNING" and running.json()["applied"] is True
        for attempt in range(2):  # Tapis retries a delivery it thinks failed
            queued = http.post(server.messages_url, params=params, json=_tapis("QUEUED", "e-queued"))
            assert queued.status_code == 200 and queued.headers["x-abaco-exit-code"] == "0"
            answer = queued.json()
            assert answer["applied"] is False and answer["stale"] is True and answer["state"] == "RUNNING"
            assert answer.get("replayed", False) is (attempt == 1)
    with server.open_store() as store:
        records = [r for r in store.history(job["uuid"]).records if r.outcome.value == "stale"]
        found = store.find_job(job["uuid"])
    assert len(records) == 1 and records[0].event_id == "tapis:e-queued"
    assert found is not None and found["state"] == "RUNNING" and found["_properties"]["revision"] == 1
