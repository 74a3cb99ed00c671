"""Nextflow's weblog, replayed from the documented payloads (tests/fixtures/nextflow) through serve's app.

Java and Nextflow cannot be installed here. Each post goes through the app `serve` runs, in this process
on both stores (``tests/inprocess.py``), plus one whole run over a real `pipelinejobs serve` process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import web
from tests.inprocess import Served
from tests.server_fixtures import ACTOR_ID, LiveServer, new_job

FIXTURES = Path(__file__).parent / "fixtures" / "nextflow"


def payload(name: str, **changes: Any) -> dict[str, Any]:
    body = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return {**body, **changes}


def post(app: Served, body: Any, *, auth: Any = None, **params: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Nextflow/25.04.6"}
    return app.client.post("/nextflow", params=params, content=raw, headers=headers, auth=auth)


def as_job(app: Served, uuid: str, token: str) -> dict[str, str]:
    """The URL parameters of a weblog url that reports on job ``uuid``: the job, a nonce, the job's token."""
    return {"uuid": uuid, "x-nonce": app.nonce(), "token": token}


def unchanged(app: Served, uuid: str) -> tuple[Any, ...]:
    """What any accepted report would change: state, revision, the whole log, the progress summary."""
    job = app.job(uuid)
    return job["state"], job["_properties"]["revision"], len(app.events(uuid)), job.get("progress")


@pytest.mark.parametrize("name", ["started", "started-params"])
def test_started_makes_the_job_running_with_its_parameters_in_either_metadata_shape(
    serve_app: Served, name: str
) -> None:
    uuid, token = serve_app.new_job()
    body = payload(name)
    answer = post(serve_app, body, **as_job(serve_app, uuid, token))
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "RUNNING" and answer.json()["applied"] is True
    job = serve_app.job(uuid)
    assert job["state"] == "RUNNING"
    entry = job["history"][-1]
    assert entry["name"] == "run"
    shown = body["metadata"].get("parameters") or body["metadata"]["params"]
    assert entry["data"]["parameters"] == shown
    assert entry["data"]["run_name"] == body["runName"] and entry["data"]["report"] == "started"


def test_a_process_completed_is_a_task_record_without_the_script_or_env(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    params = as_job(serve_app, uuid, token)
    assert post(serve_app, payload("started"), **params).json()["state"] == "RUNNING"
    before = serve_app.job(uuid)
    answer = post(serve_app, payload("process_completed"), **params)
    assert answer.status_code == 200 and answer.json()["applied"] is False, answer.text
    after = serve_app.job(uuid)
    assert after["state"] == "RUNNING"
    assert after["_properties"]["revision"] == before["_properties"]["revision"]
    assert after["history"] == before["history"]  # the document's window is not flooded by tasks
    record = serve_app.events(uuid)[-1]
    assert (record["name"], record["outcome"], record["via"]) == ("process_completed", "task", "nextflow")
    trace = record["data"]["trace"]
    expected = {"process": "FASTQC", "name": "FASTQC (sample_1)", "task_id": 1, "status": "COMPLETED", "exit": 0}
    assert trace.items() >= {**expected, "hash": "3c/9a1f0e", "duration": 201282, "attempt": 1}.items()
    assert "script" not in trace and "env" not in trace
    assert "do-not-keep-this-secret" not in json.dumps(serve_app.events(uuid)) + json.dumps(after)


def test_a_successful_completed_finishes_the_job(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    params = as_job(serve_app, uuid, token)
    for name in ("started", "process_submitted", "process_completed", "completed-success"):
        assert post(serve_app, payload(name), **params).status_code == 200
    job = serve_app.job(uuid)
    assert job["state"] == "FINISHED"
    assert [e["name"] for e in job["history"]] == ["create", "run", "finish"]
    assert job["history"][-1]["data"]["workflow"]["success"] is True


def test_a_failed_completed_fails_the_job_with_its_error_message_and_exit_status(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    params = as_job(serve_app, uuid, token)
    for name in ("started", "error-with-trace", "error-without-trace", "completed-failure"):
        assert post(serve_app, payload(name), **params).status_code == 200
    job = serve_app.job(uuid)
    assert job["state"] == "FAILED"
    workflow = job["history"][-1]["data"]["workflow"]
    assert workflow["exitStatus"] == 137 and "terminated with an error exit status (137)" in workflow["errorMessage"]
    errors = [e for e in serve_app.events(uuid) if e["name"] == "error"]
    assert [e["outcome"] for e in errors] == ["task", "task"]
    assert errors[0]["data"]["trace"]["exit"] == 137 and "trace" not in errors[1]["data"]


def test_an_error_without_trace_is_kept_and_changes_nothing_else(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    params = as_job(serve_app, uuid, token)
    post(serve_app, payload("started"), **params)
    state, revision, logged, _ = unchanged(serve_app, uuid)
    answer = post(serve_app, payload("error-without-trace"), **params)
    assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
    assert unchanged(serve_app, uuid)[:3] == (state, revision, logged + 1)
    record = serve_app.events(uuid)[-1]
    assert record["name"] == "error" and record["data"]["utc_time"] == "2026-12-01T09:40:11Z"


def test_a_body_with_the_byte_e9_is_read_as_latin_1_not_refused(serve_app: Served) -> None:
    """nf-weblog writes one byte per character: é arrives as the single byte 0xE9, which is not UTF-8."""
    uuid, token = serve_app.new_job()
    body = payload("started")
    body["metadata"]["workflow"]["projectDir"] = "/home/andrée/pipelines"
    raw = json.dumps(body, ensure_ascii=False).encode("latin-1")
    assert b"\xe9" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    answer = post(serve_app, raw, **as_job(serve_app, uuid, token))
    assert answer.status_code == 200 and answer.json()["state"] == "RUNNING", answer.text
    assert serve_app.job(uuid)["history"][-1]["data"]["workflow"]["projectDir"] == "/home/andrée/pipelines"


def test_the_same_body_twice_is_applied_once(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    params = as_job(serve_app, uuid, token)
    for name in ("started", "process_completed", "completed-success"):
        first = post(serve_app, payload(name), **params)
        again = post(serve_app, payload(name), **params)
        assert first.status_code == again.status_code == 200
        assert "replayed" not in first.json() and again.json()["replayed"] is True, again.text
        assert again.json()["event_uuid"] == first.json()["event_uuid"]
    names = [e["name"] for e in serve_app.events(uuid)]
    assert names == ["create", "run", "process_completed", "finish"]


def test_basic_auth_carries_the_nonce_and_the_job_token(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    nonce = serve_app.nonce()
    answer = post(serve_app, payload("started"), auth=(nonce, token), uuid=uuid)
    assert answer.status_code == 200 and answer.json()["state"] == "RUNNING", answer.text
    before = unchanged(serve_app, uuid)
    wrong_password = post(serve_app, payload("completed-success"), auth=(nonce, "0" * 16), uuid=uuid)
    wrong_user = post(serve_app, payload("completed-success"), auth=("SD2E_notanonce", token), uuid=uuid)
    assert (wrong_password.status_code, wrong_user.status_code) == (401, 401)
    assert token not in wrong_password.text + wrong_user.text and nonce not in wrong_password.text
    assert unchanged(serve_app, uuid) == before


def test_a_valid_nonce_without_the_jobs_token_cannot_drive_the_job(serve_app: Served) -> None:
    uuid, _ = serve_app.new_job()
    _, other_token = serve_app.new_job()
    before = unchanged(serve_app, uuid)
    nonce = serve_app.nonce()
    no_token = post(serve_app, payload("started"), uuid=uuid, **{"x-nonce": nonce})
    other_jobs_token = post(serve_app, payload("started"), uuid=uuid, token=other_token, **{"x-nonce": nonce})
    assert (no_token.status_code, other_jobs_token.status_code) == (401, 401)
    assert unchanged(serve_app, uuid) == before


def test_without_a_serve_credential_nothing_is_read(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    before = unchanged(serve_app, uuid)
    read_only = serve_app.nonce(level="READ")
    for params in ({"uuid": uuid, "token": token}, {"uuid": uuid, "token": token, "x-nonce": read_only}):
        assert post(serve_app, payload("started"), **params).status_code == 401
    params = {"uuid": uuid, "token": token}
    bad_bearer = serve_app.client.post(
        "/nextflow", params=params, json=payload("started"), headers={"Authorization": "Bearer x"}
    )
    assert bad_bearer.status_code == 401
    assert unchanged(serve_app, uuid) == before


def test_run_id_chooses_the_job_when_nextflow_ran_with_nxf_uuid(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    answer = post(serve_app, payload("started", runId=uuid), token=token, **{"x-nonce": serve_app.nonce()})
    assert answer.status_code == 200 and answer.json()["uuid"] == uuid and answer.json()["state"] == "RUNNING"


def test_serves_api_token_may_report_without_the_jobs_token(serve_app: Served) -> None:
    uuid, _ = serve_app.new_job()
    answer = serve_app.client.post("/nextflow", params={"uuid": uuid}, json=payload("started"), headers=serve_app.auth)
    assert answer.status_code == 200 and answer.json()["state"] == "RUNNING", answer.text


def test_a_post_that_is_no_weblog_report_is_answered_200_and_changes_nothing(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    before = unchanged(serve_app, uuid)
    for raw in (b"not json at all", b"[1, 2]", json.dumps({"runId": uuid}).encode()):
        answer = post(serve_app, raw, **as_job(serve_app, uuid, token))
        assert answer.status_code == 200 and answer.json()["status"] == "error", answer.text
    assert unchanged(serve_app, uuid) == before


def test_the_messages_route_recognises_a_weblog_post_too(serve_app: Served) -> None:
    """A weblog url may be an actor's messages URL (Abaco's, or serve's): the body alone says it is Nextflow."""
    uuid, token = serve_app.new_job()
    params = {"uuid": uuid, "token": token, "x-nonce": serve_app.nonce(), "_abaco_synchronous": "true"}
    answer = serve_app.client.post(f"/actors/v2/{ACTOR_ID}/messages", params=params, json=payload("started"))
    assert answer.status_code == 200 and answer.json()["state"] == "RUNNING", answer.text
    assert serve_app.job(uuid)["history"][-1]["data"]["report"] == "started"


def test_a_whole_run_over_a_real_serve(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    uuid, token = new_job(server)
    nonce = web.post(f"{server.actor_url()}/nonces", headers=server.auth, json={"level": "EXECUTE"}).json()
    url, auth = f"{server.url}/nextflow?uuid={uuid}", (nonce["result"]["id"], token)
    for name in ("started", "process_submitted", "process_completed", "completed-success"):
        answer = web.post(url, content=(FIXTURES / f"{name}.json").read_bytes(), auth=auth)
        assert answer.status_code == 200, answer.text
    job = web.get(f"{server.url}/jobs/{uuid}", headers=server.auth).json()["result"]
    assert job["state"] == "FINISHED"
    log = server.read_log()
    assert token not in log and nonce["result"]["id"] not in log
