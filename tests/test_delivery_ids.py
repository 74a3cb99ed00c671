"""Delivery ids (``event_id``): each source, in order, and the derivations for Agave and Tapis callbacks."""

from __future__ import annotations

from typing import Any

import pytest

from pipelinejobs.adapters import agave, tapis
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.intake import MESSAGE_PARAMS, from_env
from pipelinejobs.messages import DeleteMessage, EventMessage, classify
from tests.conftest import EXAMPLE_PIPELINE_UUID, Reactor
from tests.test_tapis import JOB_UUID, TOKEN, tapis_notification

AGAVE_JOB = "6583653525475142121-242ac11b-0001-007"


def agave_record(status: str, **extra: Any) -> dict[str, Any]:
    record = {
        "id": AGAVE_JOB,
        "appId": "bbq-brisket-0.5.0",
        "executionSystem": "hpc-tacc-maverick",
        "owner": "sd2eadm",
        "archivePath": "/archive/x",
        "archiveSystem": "data-sd2e-community",
        "status": status,
        "inputs": {},
        "parameters": {},
        "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/x"}},
    }
    record.update(extra)
    return record


def _classify(body: Any, **params: str) -> Any:
    """As from_env reads Abaco's environment: only the parameters the manager knows."""
    env = {"MSG": repr(body) if body is not None else "", "_abaco_Content_Type": "str", **params}
    return classify(from_env(env, 1_000_000))


# -- the body's event_id, then the URL parameter ---------------------------------------------------
def test_a_json_event_carries_its_event_id() -> None:
    message = _classify({"uuid": JOB_UUID, "name": "run", "token": TOKEN, "event_id": "send-42"})
    assert isinstance(message, EventMessage) and message.event_id == "send-42"
    assert _classify({"uuid": JOB_UUID, "name": "run", "token": TOKEN}).event_id is None


def test_the_body_wins_over_the_url_parameter_which_fills_in_when_the_body_has_none() -> None:
    body = {"uuid": JOB_UUID, "name": "run", "token": TOKEN, "event_id": "from-body"}
    assert _classify(body, event_id="from-url").event_id == "from-body"
    del body["event_id"]
    assert _classify(body, event_id="from-url").event_id == "from-url"


def test_event_id_is_a_url_parameter_the_manager_reads() -> None:
    assert "event_id" in MESSAGE_PARAMS


def test_an_event_by_url_parameters_takes_the_event_id_parameter() -> None:
    message = _classify({"k": "v"}, uuid=JOB_UUID, name="finish", token=TOKEN, event_id="retry-safe-1")
    assert (message.via, message.event_id, message.data) == ("url", "retry-safe-1", {"k": "v"})
    assert _classify(None, uuid=JOB_UUID, name="finish", event_id="no-body").event_id == "no-body"


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "tab\there", "caf\u00e9", "new\nline"])
def test_a_malformed_event_id_parameter_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify({"k": "v"}, uuid=JOB_UUID, name="finish", token=TOKEN, event_id=bad)
    assert err.value.kind is ErrorKind.BAD_MESSAGE and "event_id" in err.value.message
    assert bad not in err.value.message
    with pytest.raises(PipelineJobsError) as joined:
        _classify({"uuid": JOB_UUID, "name": "run", "token": TOKEN}, event_id=bad)
    assert "event_id URL parameter" in joined.value.message


def test_a_delete_ignores_the_event_id_parameter_and_refuses_the_field() -> None:
    body = {"uuid": JOB_UUID, "action": "delete", "token": TOKEN}
    assert _classify(body, event_id="d-1") == DeleteMessage(JOB_UUID, False, TOKEN)
    with pytest.raises(PipelineJobsError):
        _classify({**body, "event_id": "d-1"})


# -- Agave callbacks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", sorted(agave.ONCE_STATUSES))
def test_agave_derives_an_id_for_statuses_a_job_enters_once(status: str) -> None:
    record = agave_record(status, lastUpdated="2018-09-25T15:23:57.000-05:00")
    expected = f"agave:{AGAVE_JOB}:{status}:2018-09-25T15:23:57.000-05:00"
    assert agave.delivery_id(record, status) == expected
    assert agave.delivery_id(agave_record(status), status.lower()) == f"agave:{AGAVE_JOB}:{status}"


@pytest.mark.parametrize(
    "status", ["RUNNING", "QUEUED", "PENDING", "STAGING_INPUTS", "PAUSED", "HEARTBEAT", "UPDATED", "KILLED", "NEW"]
)
def test_agave_derives_none_for_statuses_that_can_recur_or_are_updates(status: str) -> None:
    assert agave.delivery_id(agave_record(status, lastUpdated="2018-09-25T15:23:57.000-05:00"), status) is None


def test_agave_derives_none_without_a_usable_job_id() -> None:
    assert agave.delivery_id({k: v for k, v in agave_record("FINISHED").items() if k != "id"}, "FINISHED") is None
    assert agave.delivery_id(agave_record("FINISHED", id=""), "FINISHED") is None
    assert agave.delivery_id(agave_record("FINISHED", id="has space"), "FINISHED") is None
    assert agave.delivery_id(agave_record("FINISHED", id="x" * 200), "FINISHED") is None


def test_an_agave_callback_gets_the_parameter_else_the_derived_id() -> None:
    params = {"uuid": JOB_UUID, "token": TOKEN}
    finished = agave_record("FINISHED", lastUpdated="2018-09-25T15:23:57.000-05:00")
    message = _classify(finished, status="FINISHED", **params)
    assert (message.via, message.name) == ("agave", "finish")
    assert message.event_id == f"agave:{AGAVE_JOB}:FINISHED:2018-09-25T15:23:57.000-05:00"
    assert _classify(finished, status="FINISHED", event_id="mine", **params).event_id == "mine"
    assert _classify(agave_record("RUNNING"), status="RUNNING", **params).event_id is None
    # an unexpanded ${JOB_STATUS} macro: the record's own status picks the event and the id
    assert _classify(finished, status="${JOB_STATUS}", **params).event_id.startswith(f"agave:{AGAVE_JOB}:FINISHED")


# -- Tapis notifications -------------------------------------------------------------------------------
def test_tapis_derives_its_id_from_the_event_uuid_else_the_notification_uuid() -> None:
    notification = tapis_notification("RUNNING")
    event_uuid, notification_uuid = notification["eventUuid"], notification["uuid"]
    assert tapis.delivery_id(notification) == "tapis:" + event_uuid
    assert tapis.delivery_id(tapis_notification("FINISHED")) != "tapis:" + event_uuid  # another status change
    del notification["eventUuid"]
    assert tapis.delivery_id(notification) == "tapis:" + notification_uuid
    notification["eventUuid"] = "not usable"  # whitespace: not a delivery id, so the next source
    assert tapis.delivery_id(notification) == "tapis:" + notification_uuid
    del notification["uuid"]
    assert tapis.delivery_id(notification) is None


def test_a_tapis_notification_gets_the_parameter_else_the_derived_id() -> None:
    params = {"uuid": JOB_UUID, "token": TOKEN}
    finished = tapis_notification("FINISHED")
    message = _classify(finished, **params)
    assert (message.via, message.event_id) == ("tapis", "tapis:" + finished["eventUuid"])
    assert _classify(tapis_notification("FINISHED"), event_id="mine", **params).event_id == "mine"
    anonymous = tapis_notification("FINISHED")
    del anonymous["eventUuid"], anonymous["uuid"]
    assert _classify(anonymous, **params).event_id is None


# -- reactor.py, as Abaco runs it ----------------------------------------------------------------------
def test_reactor_accepts_events_carrying_delivery_ids(reactor: Reactor, example_pipeline: dict) -> None:
    created = reactor.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {"d": 1}})
    uuid, token = created.result["uuid"], created.result["token"]
    run = reactor.run({"uuid": uuid, "name": "run", "token": token, "event_id": "client-run-1"})
    assert run.returncode == 0 and run.result["state"] == "RUNNING", run.stdout + run.stderr
    update = reactor.run({"n": 2}, params={"uuid": uuid, "name": "update", "token": token, "event_id": "u-1"})
    assert update.returncode == 0, update.stdout + update.stderr
    bad = reactor.run({"n": 3}, params={"uuid": uuid, "name": "update", "token": token, "event_id": "a b"})
    assert bad.returncode == 1 and bad.result["kind"] == "bad_message" and "event_id" in bad.result["message"]


def test_scheduler_callbacks_carry_their_own_status_word_for_stale_checks() -> None:
    params = {"uuid": JOB_UUID, "token": TOKEN}
    assert _classify(agave_record("FINISHED"), status="finished", **params).status == "FINISHED"
    assert _classify(agave_record("QUEUED"), status="${JOB_STATUS}", **params).status == "QUEUED"
    assert _classify(tapis_notification("QUEUED"), **params).status == "QUEUED"
    assert _classify({"k": 1}, uuid=JOB_UUID, name="run", token=TOKEN).status is None


def test_reactor_answers_a_redelivered_callback_as_a_replay(reactor: Reactor, example_pipeline: dict) -> None:
    """The derived ids reach the event log: Tapis and Agave retrying a delivery change nothing."""
    created = reactor.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {"d": 2}})
    params = {"uuid": created.result["uuid"], "token": created.result["token"]}
    running = tapis_notification("RUNNING")
    first, again = reactor.run(running, params=params), reactor.run(running, params=params)
    assert (first.returncode, again.returncode) == (0, 0), again.stdout + again.stderr
    assert again.result.get("replayed") is True and again.result["event_uuid"] == first.result["event_uuid"]
    finished = agave_record("FINISHED", lastUpdated="2018-09-25T15:23:57.000-05:00")
    done = reactor.run(finished, params={**params, "status": "FINISHED"})
    redone = reactor.run(finished, params={**params, "status": "FINISHED"})
    assert done.result["state"] == "FINISHED" and redone.result.get("replayed") is True, redone.stdout
