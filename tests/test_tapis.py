"""Tapis v3 job notifications: status mapping, the schema, classification, and reactor.py moving a job."""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any

import pytest

from pipelinejobs.adapters import tapis
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.intake import Intake
from pipelinejobs.messages import EventMessage, classify, schema_errors, validator
from tests.conftest import EXAMPLE_PIPELINE_UUID, Reactor

TAPIS_JOB = "60cfd7b6-746e-416c-bb8c-3cd8c761ab60-007"
JOB_UUID = "1073f4ff-c2b9-5190-bd9a-e6a406d9796a"
TOKEN = "0dc73dc3ff39b49a"
NONCE = "TACC_n0ncE5ecret1"
TERMINAL = ("FINISHED", "FAILED", "CANCELLED")


def tapis_notification(
    status: str, old: str = "QUEUED", *, callback: str | None = None, data: Any = "json"
) -> dict[str, Any]:
    """A notification as Tapis v3 delivers it: ``event.data`` is a JSON-encoded string."""
    fields = {
        "jobName": "tacobot-run",
        "jobUuid": TAPIS_JOB,
        "jobOwner": "tester",
        "message": f"The job has transitioned to a new status: {status}. The previous job status was {old}.",
        "newJobStatus": status,
        "oldJobStatus": old,
    }
    if status in TERMINAL:
        fields.update({"blockedCount": 0, "remoteJobId": "8675309", "remoteOutcome": None, "remoteQueue": "normal"})
    address = callback or f"https://api.example.org/actors/v2/pjmanager0001/messages?x-nonce={NONCE}&token={TOKEN}"
    # each status change is its own Tapis event and notification, with its own uuids
    event_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"tapis-event/{TAPIS_JOB}/{status}"))
    return {
        "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"tapis-notification/{TAPIS_JOB}/{status}")),
        "tenant": "tacc",
        "subscriptionName": f"jobs~tester~tacc~{TAPIS_JOB}~TSZn",
        "eventUuid": event_uuid,
        "event": {
            "source": "https://tapis.io/jobs",
            "type": f"jobs.JOB_NEW_STATUS.{status}",
            "subject": TAPIS_JOB,
            "seriesId": TAPIS_JOB,
            "seriesSeqCount": 4,
            "timestamp": "2024-06-12T14:03:21.595939893Z",
            "data": json.dumps(fields) if data == "json" else data,
            "deleteSubscriptionsMatchingSubject": status in TERMINAL,
            "endSeries": False,
            "tenant": "tacc",
            "user": "jobs",
            "received": "2024-06-12T14:03:21.615954424Z",
            "uuid": event_uuid,
        },
        "deliveryTarget": {"deliveryMethod": "WEBHOOK", "deliveryAddress": address},
        "created": "2024-06-12T14:03:21.635255381Z",
    }


# -- status mapping --------------------------------------------------------------------------
STATUS_TABLE = {
    "PENDING": "resource",
    "PROCESSING_INPUTS": "resource",
    "STAGING_INPUTS": "resource",
    "STAGING_JOB": "resource",
    "SUBMITTING_JOB": "resource",
    "QUEUED": "resource",
    "ARCHIVING": "resource",
    "BLOCKED": "resource",
    "PAUSED": "resource",
    "RUNNING": "run",
    "FINISHED": "finish",
    "FAILED": "fail",
    "CANCELLED": "fail",
    "SOMETHING_NEW": "update",
    "": "update",
}


@pytest.mark.parametrize(("status", "event"), STATUS_TABLE.items())
def test_each_tapis_status_maps_to_its_event(status: str, event: str) -> None:
    assert tapis.event_for_status(status) == event
    assert tapis.event_for_status(f" {status.lower()} ") == event


def test_status_comes_from_new_job_status_else_from_the_event_type() -> None:
    assert tapis.job_status(tapis_notification("RUNNING")) == "RUNNING"
    mismatched = tapis_notification("RUNNING")
    mismatched["event"]["type"] = "jobs.JOB_NEW_STATUS.QUEUED"  # data wins when it can be read
    assert tapis.job_status(mismatched) == "RUNNING"
    assert tapis.job_status(tapis_notification("FINISHED", data="not { json")) == "FINISHED"
    assert tapis.job_status(tapis_notification("FAILED", data=None)) == "FAILED"
    assert tapis.job_status(tapis_notification("QUEUED", data={"newJobStatus": "running"})) == "RUNNING"
    assert tapis.job_status(tapis_notification("PAUSED", data=json.dumps({"jobName": "x"}))) == "PAUSED"


def test_event_data_decodes_the_data_string_and_drops_the_callback() -> None:
    kept = tapis.event_data(tapis_notification("FINISHED"))
    assert "deliveryTarget" not in kept
    assert kept["event"]["data"]["newJobStatus"] == "FINISHED"
    assert kept["event"]["data"]["remoteJobId"] == "8675309"
    assert NONCE not in json.dumps(kept) and TOKEN not in json.dumps(kept)
    assert tapis.event_data(tapis_notification("RUNNING", data="plain words"))["event"]["data"] == "plain words"


# -- schema ----------------------------------------------------------------------------------
def test_schema_is_draft7_and_accepts_realistic_notifications() -> None:
    assert validator("tapisv3").schema["title"] == "TapisV3JobNotification"
    assert validator("tapisv3").schema["$schema"].startswith("http://json-schema.org/draft-07")
    for status in STATUS_TABLE:
        if status:
            assert schema_errors("tapisv3", tapis_notification(status)) == []
    extra = tapis_notification("RUNNING")
    extra["somethingTapisAddsLater"] = {"x": 1}
    extra["event"]["anotherField"] = True
    assert schema_errors("tapisv3", extra) == []


def test_schema_rejects_what_is_not_a_job_status_event() -> None:
    no_subject = tapis_notification("RUNNING")
    del no_subject["event"]["subject"]
    assert any("subject" in reason for reason in schema_errors("tapisv3", no_subject))
    other_type = tapis_notification("RUNNING")
    other_type["event"]["type"] = "systems.SYSTEM_CREATED.x"
    assert schema_errors("tapisv3", other_type) == ["event.type: is not in the expected format"]
    assert any("event" in reason for reason in schema_errors("tapisv3", {"uuid": "x"}))


# -- classification --------------------------------------------------------------------------
def _classify(body: Any, **params: str) -> Any:
    return classify(Intake(body=body, content_type="application/json", params=params))


@pytest.mark.parametrize(("status", "event"), [("RUNNING", "run"), ("FINISHED", "finish"), ("QUEUED", "resource")])
def test_a_notification_with_uuid_and_token_parameters_is_an_event(status: str, event: str) -> None:
    message = _classify(tapis_notification(status), uuid=JOB_UUID, token=TOKEN, session="s1", **{"x-nonce": NONCE})
    assert isinstance(message, EventMessage)
    assert (message.uuid, message.name, message.token, message.via) == (JOB_UUID, event, TOKEN, "tapis")
    assert message.data is not None and message.data["event"]["data"]["newJobStatus"] == status
    assert "deliveryTarget" not in message.data


def test_a_notification_without_the_uuid_parameter_says_so_without_values() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify(tapis_notification("RUNNING"), token=TOKEN)
    assert err.value.kind is ErrorKind.BAD_MESSAGE
    assert "TapisV3JobNotification (callback with uuid parameter): needs the uuid URL parameter" in err.value.message
    assert TOKEN not in err.value.message and TAPIS_JOB not in err.value.message


def test_a_broken_notification_is_explained_and_other_messages_are_unaffected() -> None:
    broken = tapis_notification("RUNNING")
    broken["event"]["type"] = "jobs.SOMETHING_ELSE"
    with pytest.raises(PipelineJobsError) as err:
        _classify(broken, uuid=JOB_UUID, token=TOKEN)
    assert any(title.startswith("TapisV3JobNotification") for title in err.value.details["candidates"])
    assert "event.type: is not in the expected format" in err.value.message
    # an explicit event name wins: the notification is then just the event's data
    named = _classify(tapis_notification("RUNNING"), uuid=JOB_UUID, token=TOKEN, name="update")
    assert (named.name, named.via) == ("update", "url")
    # a plain body without an event object never mentions the Tapis candidate
    with pytest.raises(PipelineJobsError) as plain:
        _classify({"colour": "blue"}, token=TOKEN)
    assert "TapisV3JobNotification" not in plain.value.message


def test_a_bad_token_parameter_is_refused_by_the_event_schema() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify(tapis_notification("RUNNING"), uuid=JOB_UUID, token="short")
    assert "Tapis notification's URL parameters" in err.value.message and "token" in err.value.message


# -- reactor.py as Abaco runs it -------------------------------------------------------------
def test_reactor_moves_a_job_on_tapis_notifications(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    created = reactor.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/v2/t", "data": {"n": 7}})
    assert created.returncode == 0, created.stderr
    uuid, token = created.result["uuid"], created.result["token"]
    callback = f"https://api.example.org/actors/v2/pjmanager0001/messages?x-nonce={NONCE}&token={token}&uuid={uuid}"
    params = {"uuid": uuid, "token": token, "x-nonce": NONCE, "session": "s1"}

    queued = reactor.run(tapis_notification("QUEUED", "STAGING_JOB", callback=callback), params=params)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert (queued.result["event"], queued.result["state"]) == ("resource", "CREATED")
    running = reactor.run(tapis_notification("RUNNING", callback=callback), params=params)
    assert (running.returncode, running.result["state"]) == (0, "RUNNING")
    # Abaco hands JSON messages over as a Python repr; the result must be the same
    done = reactor.run(tapis_notification("FINISHED", "ARCHIVING", callback=callback), params=params, as_repr=True)
    assert (done.returncode, done.result["event"], done.result["state"]) == (0, "finish", "FINISHED")

    job = db.jobs.find_one({"uuid": uuid})
    assert job["state"] == "FINISHED"
    assert [h["name"] for h in job["history"]] == ["create", "resource", "run", "finish"]
    last = job["history"][-1]["data"]
    assert last["event"]["data"]["newJobStatus"] == "FINISHED" and last["event"]["subject"] == TAPIS_JOB
    assert NONCE not in json.dumps(job, default=str) and token not in json.dumps(job["history"], default=str)
    assert NONCE not in queued.stderr + running.stderr + done.stderr


def test_reactor_refuses_a_notification_with_a_wrong_token(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    created = reactor.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/v2/t", "data": {"n": 8}})
    uuid = created.result["uuid"]
    before = db.jobs.find_one({"uuid": uuid})
    refused = reactor.run(tapis_notification("RUNNING"), params={"uuid": uuid, "token": "ffffffffffffffff"})
    assert refused.returncode == 1
    assert refused.result["kind"] == "unauthorized"
    assert db.jobs.find_one({"uuid": uuid}) == before
