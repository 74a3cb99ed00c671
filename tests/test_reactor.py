"""reactor.py's message path, as Abaco runs it: the message and its context in the environment.

The rules run in this process (``Reactor``: the one call reactor.py makes); the seed's examples, a
binary message, the secrets check and the races run reactor.py itself, a process per message.
Covers every message example of the seed (MSG as JSON and as Python repr), jobs
written by SD2E's ManagedPipelineJob, the bad-input table (exit 1, clear error,
database byte-for-byte unchanged), concurrency and a database outage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bson
import pytest

from pipelinejobs import identifiers
from tests.conftest import DATACATALOG_JOB_KEYS, EXAMPLE_PIPELINE_UUID, ROOT, Reactor, ReactorResult, authn_for

AS_JSON_AND_REPR = pytest.mark.parametrize("as_repr", [False, True], ids=["json", "repr"])


# -- helpers -------------------------------------------------------------------------------
def create_job(reactor: Reactor, data: dict[str, Any] | None = None) -> tuple[str, str]:
    msg = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/v2/tacobot", "data": data or {"n": 1}}
    out = reactor.run(msg)
    assert out.returncode == 0, out.stderr
    return out.result["uuid"], out.result["token"]


def send(reactor: Reactor, msg: Any, **kwargs: Any) -> dict[str, Any]:
    out = reactor.run(msg, **kwargs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.result["status"] == "ok"
    return out.result


def snapshot(db: Any) -> dict[str, list[bytes]]:
    """Every document of every collection, BSON-encoded, for byte-for-byte comparison."""
    return {
        name: [bson.encode(doc) for doc in db[name].find({}).sort("_id", 1)]
        for name in sorted(db.list_collection_names())
    }


def write_datacatalog_job(
    db: Any, *, state: str = "CREATED", salt: str = "q2xkzq3e1x0j5e8yvq2x5w=="
) -> tuple[str, str]:
    """A job laid out exactly as SD2E's ManagedPipelineJob writes it (compat §4), straight into MongoDB."""
    child_of = ["10483e8d-6602-532a-8941-176ce20dd05a"]
    data = {"param1": "value1", "param2": 1, "param3": True, "param4": [1, 2, 3], "param5": ["a", "b", "c"]}
    uuid = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"
    admin = {"owner": "sd2eadm", "project": "SD2E-Community", "tenant": "sd2e"}
    created = datetime(2019, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    db.jobs.insert_one(
        {
            "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
            "archive_path": "/products/v2/1062b6c2fbbd5c6a85ac1a7d0b0ab5ea/PAVbV8BJ8kV7ZP5PPyAaZ3v5",
            "archive_system": "data-sd2e-community",
            "archive_patterns": [],
            "product_patterns": [],
            "data": data,
            "session": "fluffy-bunny",
            "agent": "https://api.sd2e.org/actors/v2/G1p783PxpalBB",
            "task": None,
            "generated_by": [EXAMPLE_PIPELINE_UUID],
            "child_of": child_of,
            "acted_on": [],
            "acted_using": [],
            "uuid": uuid,
            "state": state,
            "last_event": "create",
            "updated": created,
            "history": [
                {"date": created, "data": None, "name": "create", "uuid": "1087dbe4-0e6b-57bc-b5e3-c4d4d1f1a7a2"}
            ],
            "_visible": True,
            "_properties": {"created_date": created, "modified_date": created, "revision": 0, "source": "testing"},
            "_admin": admin,
            "_salt": salt,
        }
    )
    return uuid, hashlib.sha256((salt + ":" + repr([uuid, admin])).encode()).hexdigest()[:16]


# -- the seed's messages -------------------------------------------------------------------
@AS_JSON_AND_REPR
def test_create_returns_uuid_and_token_and_is_idempotent(
    reactor: Reactor, example_pipeline: dict, db: Any, as_repr: bool
) -> None:
    msg = {
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "archive_path": "/a/b",
        "data": {"example_data": "datadata"},
        "session": "s-1",
    }
    first = send(reactor, msg, as_repr=as_repr)
    assert first["action"] == "create" and first["created"] is True and first["state"] == "CREATED"
    assert first["uuid"] == identifiers.job_uuid(EXAMPLE_PIPELINE_UUID, [], {"example_data": "datadata"})
    job = db.jobs.find_one({"uuid": first["uuid"]})
    assert list(job)[1:] == DATACATALOG_JOB_KEYS  # [0] is MongoDB's _id
    assert job["_admin"] == {"owner": "tester", "project": "SD2E-Community", "tenant": "sd2e"}
    assert job["agent"] == "https://api.example.org/actors/v2/pjmanager0001"
    assert isinstance(job["updated"], datetime) and job["updated"].microsecond == 0
    assert identifiers.job_token(job["_salt"], job["uuid"], job["_admin"]) == first["token"]
    send(reactor, {"uuid": first["uuid"], "name": "run", "token": first["token"]})
    before = snapshot(db)
    again = send(reactor, msg, as_repr=as_repr)
    # a repeated create is answered from what is stored, without the token: anyone able to send a create
    # could otherwise collect any job's token by repeating its create (its fields are readable)
    assert again["created"] is False and "token" not in again and again["state"] == "RUNNING"
    assert first["token"] not in json.dumps(again)
    shown = send(reactor, {**msg, "token": first["token"]}, as_repr=as_repr)  # the creator shows it: told again
    assert shown["created"] is False and shown["token"] == first["token"]
    assert snapshot(db) == before


@AS_JSON_AND_REPR
def test_seed_json_event(reactor_process: Reactor, example_pipeline: dict, db: Any, as_repr: bool) -> None:
    reactor = reactor_process  # reactor.py itself, as Abaco runs it
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token}, as_repr=as_repr)
    result = send(
        reactor,
        {"uuid": uuid, "data": {"arbitrary": "key value data"}, "name": "finish", "token": token},
        as_repr=as_repr,
    )
    assert (result["action"], result["event"], result["state"]) == ("event", "finish", "FINISHED")
    job = db.jobs.find_one({"uuid": uuid})
    assert job["state"] == "FINISHED" and job["last_event"] == "finish"
    assert job["_properties"]["revision"] == 2
    last = job["history"][-1]
    assert list(last) == ["date", "data", "name", "uuid"]
    assert last["data"] == {"arbitrary": "key value data"} and last["uuid"].startswith("108")
    assert job["data"] == {"n": 1}  # event data goes only into the history


@AS_JSON_AND_REPR
def test_seed_event_by_url_parameters(reactor_process: Reactor, example_pipeline: dict, db: Any, as_repr: bool) -> None:
    reactor = reactor_process  # reactor.py itself, as Abaco runs it
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token})
    result = send(
        reactor,
        {"arbitrary": "key value data"},
        as_repr=as_repr,
        params={"uuid": uuid, "name": "finish", "token": token},
    )
    assert result["state"] == "FINISHED"
    # the older parameter name `event`, and the nonce parameter Abaco passes through as well
    result = send(
        reactor,
        {"k": "v"},
        as_repr=as_repr,
        params={"uuid": uuid, "event": "validate", "token": token, "x-nonce": "TACC_XXXXxxxxYz356"},
    )
    assert result["state"] == "VALIDATING"
    history = db.jobs.find_one({"uuid": uuid})["history"]
    assert [h["name"] for h in history] == ["create", "run", "finish", "validate"]
    assert history[2]["data"] == {"arbitrary": "key value data"} and history[3]["data"] == {"k": "v"}


def test_seed_bearer_request_without_data(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token})
    # under Abaco the bearer token is checked by the platform; the message arrives as a str repr
    send(reactor, f"{{'uuid': '{uuid}', 'token': '{token}', 'name': 'finish'}}")
    job = db.jobs.find_one({"uuid": uuid})
    assert job["state"] == "FINISHED" and job["history"][-1]["data"] is None


def test_token_from_url_parameter_with_json_event(reactor: Reactor, example_pipeline: dict) -> None:
    uuid, token = create_job(reactor)
    assert send(reactor, {"uuid": uuid, "name": "run"}, params={"token": token})["state"] == "RUNNING"


@AS_JSON_AND_REPR
def test_seed_delete_soft_then_force(reactor: Reactor, example_pipeline: dict, db: Any, as_repr: bool) -> None:
    uuid, token = create_job(reactor)
    hidden = send(reactor, {"uuid": uuid, "action": "delete", "token": token}, as_repr=as_repr)
    assert hidden["visible"] is False and db.jobs.find_one({"uuid": uuid})["_visible"] is False
    assert send(reactor, {"uuid": uuid, "action": "delete", "force": False, "token": token})["visible"] is False
    rejected = reactor.run({"uuid": uuid, "name": "run", "token": token})
    assert rejected.returncode == 1 and "hidden" in rejected.result["message"]
    job = db.jobs.find_one({"uuid": uuid}, {"_id": False})
    send(reactor, {"uuid": uuid, "action": "delete", "force": True, "token": token}, as_repr=as_repr)
    assert db.jobs.count_documents({"uuid": uuid}) == 0
    tombstone = db.updates.find_one({"uuid": uuid, "action": "delete"})
    assert tombstone["diff"]["deleted"] == job


@AS_JSON_AND_REPR
def test_agave_callback(reactor: Reactor, example_pipeline: dict, db: Any, as_repr: bool) -> None:
    uuid, token = create_job(reactor)
    record = {
        "id": "6fe3fa6b-2e4a-4f3c-9a1d-1bb0f2d6c1f1-007",
        "appId": "bbq-brisket-0.5.0",
        "executionSystem": "hpc-tacc-maverick",
        "owner": "sd2eadm",
        "archivePath": "/archive/x",
        "archiveSystem": "data-sd2e-community",
        "status": "RUNNING",
        "inputs": {},
        "parameters": {"smoke": True},
        "retries": 0,
        "localId": "12345",
        "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/x"}},
    }
    params = {"uuid": uuid, "token": token, "status": "RUNNING"}
    assert send(reactor, record, as_repr=as_repr, params=params)["state"] == "RUNNING"
    beat = send(reactor, dict(record, status="HEARTBEAT"), params=dict(params, status="HEARTBEAT"))
    assert (beat["action"], beat["state"]) == ("heartbeat", "RUNNING")  # a sign of life, not a history entry
    # an unexpanded ${JOB_STATUS} macro falls back to the record's own status
    finished = send(reactor, dict(record, status="FINISHED"), params=dict(params, status="${JOB_STATUS}"))
    assert (finished["event"], finished["state"]) == ("finish", "FINISHED")
    history = db.jobs.find_one({"uuid": uuid})["history"]
    assert [h["name"] for h in history] == ["create", "run", "finish"]
    assert "_links" not in history[1]["data"] and "retries" not in history[1]["data"]
    assert "localId" not in history[1]["data"] and history[1]["data"]["appId"] == "bbq-brisket-0.5.0"


# -- jobs written by SD2E's ManagedPipelineJob -------------------------------------------------
def test_datacatalog_job_walks_to_retired(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = write_datacatalog_job(db)
    assert token == "1045671acff8be19"  # the compat page's vector
    states = []
    for event in ("run", "finish", "validate", "validated", "finalize", "retire"):
        states.append(send(reactor, {"uuid": uuid, "name": event, "token": token, "data": {"step": event}})["state"])
    assert states == ["RUNNING", "FINISHED", "VALIDATING", "VALIDATED", "FINALIZED", "RETIRED"]
    job = db.jobs.find_one({"uuid": uuid})
    assert job["_salt"] == "q2xkzq3e1x0j5e8yvq2x5w=="  # never rotated: the token stays valid
    assert job["_properties"]["revision"] == 6 and job["_properties"]["source"] == "testing"
    assert [h["name"] for h in job["history"]] == [
        "create",
        "run",
        "finish",
        "validate",
        "validated",
        "finalize",
        "retire",
    ]
    assert job["history"][0]["uuid"] == "1087dbe4-0e6b-57bc-b5e3-c4d4d1f1a7a2"
    assert job["updated"] > datetime(2019, 3, 1, 12, 0, tzinfo=timezone.utc)
    # the event log holds the old entry (imported on first touch) and the six events, in order
    log = list(db.events.find({"uuid": uuid}, {"_id": False}).sort([("seq", 1), ("slot", 1)]))
    assert [(r["seq"], r["name"], r["outcome"]) for r in log] == [(-1, "create", "imported")] + [
        (seq, name, "applied")
        for seq, name in enumerate(("run", "finish", "validate", "validated", "finalize", "retire"), start=1)
    ]
    assert log[0]["event_uuid"] == "1087dbe4-0e6b-57bc-b5e3-c4d4d1f1a7a2"
    assert [r["event_uuid"] for r in log[1:]] == [h["uuid"] for h in job["history"][1:]]


def test_same_job_created_through_the_actor_finds_the_datacatalog_job(
    reactor: Reactor, example_pipeline: dict, db: Any
) -> None:
    uuid, token = write_datacatalog_job(db)
    msg = {
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "archive_path": "/x",
        "data": {"param1": "value1", "param2": 1, "param3": True, "param4": [1, 2, 3], "param5": ["a", "b", "c"]},
        "child_of": ["10483e8d-6602-532a-8941-176ce20dd05a"],
    }
    result = send(reactor, msg)
    assert (result["uuid"], result["created"]) == (uuid, False) and "token" not in result
    result = send(reactor, {**msg, "token": token})  # the library's token verifies: the job's own is answered
    assert (result["uuid"], result["token"], result["created"]) == (uuid, token, False)


# -- admin tokens -----------------------------------------------------------------------------
def _pinned_reactor_dir(tmp_path: Path, secret: str) -> Path:
    shutil.copy(ROOT / "reactor.py", tmp_path / "reactor.py")
    config = (
        (ROOT / "config.yml")
        .read_text()
        .replace("secret_sha256: ~", f"secret_sha256: {hashlib.sha256(secret.encode()).hexdigest()}")
    )
    (tmp_path / "config.yml").write_text(config)
    return tmp_path / "reactor.py"


def test_reset_and_ready_need_an_admin_token(reactor: Reactor, example_pipeline: dict, db: Any, tmp_path: Path) -> None:
    import subprocess

    uuid, token = create_job(reactor)
    denied = reactor.run({"uuid": uuid, "name": "reset", "token": token})
    assert denied.returncode == 1 and denied.result["kind"] == "unauthorized"
    assert "admin token" in denied.result["message"]
    secret = "admin-secret-for-tests"
    admin = identifiers.admin_token(secret, "XB]6f^~T3)EDxB(3A6F@CE>JTU.T>whH", 3600, time.time())
    pinned = _pinned_reactor_dir(tmp_path, secret)
    extra = {"CATALOG_ADMIN_TOKEN_SECRET": secret}
    for event, state in (("reset", "RESET"), ("ready", "CREATED")):
        env = reactor.env({"uuid": uuid, "name": event, "token": admin}, extra=extra)
        proc = subprocess.run([sys.executable, str(pinned)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["state"] == state
        assert secret not in proc.stderr and admin not in proc.stderr
    # the shipped config has no pin: under Abaco the same admin token is refused
    unpinned = reactor.run({"uuid": uuid, "name": "reset", "token": admin}, extra=extra)
    assert unpinned.returncode == 1 and "admin.secret_sha256" in unpinned.result["message"]


# -- bad input ----------------------------------------------------------------------------------
BAD_INPUTS = [
    # (id, builder(uuid, token) -> (msg, params), expected kind, words the message must contain)
    ("malformed-json", lambda u, t: ('{"uuid": "' + u + '", "name": ', {}), "bad_message", ["fits no"]),
    ("wrong-type", lambda u, t: ({"uuid": u, "name": 5, "token": t}, {}), "bad_message", ["name", "type string"]),
    (
        "extra-field",
        lambda u, t: ({"uuid": u, "name": "update", "token": t, "owner": "x"}, {}),
        "bad_message",
        ["unexpected field 'owner'"],
    ),
    (
        "operator-uuid",
        lambda u, t: ({"uuid": {"$ne": None}, "name": "update", "token": t}, {}),
        "bad_message",
        ["uuid", "type string"],
    ),
    (
        "operator-token",
        lambda u, t: ({"uuid": u, "name": "update", "token": {"$ne": None}}, {}),
        "bad_message",
        ["token", "type string"],
    ),
    (
        "operator-in-data",
        lambda u, t: ({"uuid": u, "name": "update", "token": t, "data": {"$set": {"state": "X"}}}, {}),
        "bad_message",
        ["data.$set"],
    ),
    ("unknown-event", lambda u, t: ({"uuid": u, "name": "explode", "token": t}, {}), "bad_message", ["name"]),
    ("create-event", lambda u, t: ({"uuid": u, "name": "create", "token": t}, {}), "bad_message", ["name"]),
    ("missing-token", lambda u, t: ({"uuid": u, "name": "update"}, {}), "unauthorized", ["token is required"]),
    ("wrong-token", lambda u, t: ({"uuid": u, "name": "update", "token": "0" * 16}, {}), "unauthorized", ["not valid"]),
    ("short-token", lambda u, t: ({"uuid": u, "name": "update", "token": "abc"}, {}), "bad_message", ["token"]),
    (
        "unknown-job",
        lambda u, t: ({"uuid": "107" + u[3:-4] + "ffff", "name": "update", "token": t}, {}),
        "not_found",
        ["no job"],
    ),
    (
        "invalid-transition",
        lambda u, t: ({"uuid": u, "name": "validate", "token": t}, {}),
        "invalid_transition",
        ["RUNNING", "allowed: run, update, resource, fail, finish"],
    ),
    (
        "admin-event-with-job-token",
        lambda u, t: ({"uuid": u, "name": "reset", "token": t}, {}),
        "unauthorized",
        ["admin token"],
    ),
    (
        "oversized-data",
        lambda u, t: ({"uuid": u, "name": "update", "token": t, "data": {"blob": "x" * 300_000}}, {}),
        "bad_message",
        ["data is", "limit is 262144"],
    ),
    (
        "oversized-message",
        lambda u, t: ({"uuid": u, "name": "update", "token": t, "data": {"b": "x" * 1_100_000}}, {}),
        "bad_message",
        ["limit is 1048576"],
    ),
    (
        "url-event-list-body",
        lambda u, t: ([1, 2], {"uuid": u, "name": "update", "token": t}),
        "bad_message",
        ["JSON object"],
    ),
    (
        "url-event-bad-uuid",
        lambda u, t: ({"a": 1}, {"uuid": "not-a-uuid", "name": "update", "token": t}),
        "bad_message",
        ["uuid", "format"],
    ),
    (
        "delete-wrong-token",
        lambda u, t: ({"uuid": u, "action": "delete", "force": True, "token": "f" * 16}, {}),
        "unauthorized",
        ["not valid"],
    ),
    (
        "delete-bad-force",
        lambda u, t: ({"uuid": u, "action": "delete", "force": "yes", "token": t}, {}),
        "bad_message",
        ["force"],
    ),
    (
        "create-unknown-pipeline",
        lambda u, t: ({"pipeline_uuid": "106" + u[3:], "archive_path": "/x", "data": {}}, {}),
        "not_found",
        ["no pipeline", "register"],
    ),
    (
        "create-missing-data",
        lambda u, t: ({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/x"}, {}),
        "bad_message",
        ["missing required field 'data'"],
    ),
    ("plain-text", lambda u, t: ("finish the job please", {}), "bad_message", ["not JSON"]),
    ("empty-message", lambda u, t: ("", {}), "bad_message", ["uuid and name"]),
]


@pytest.mark.parametrize(("case", "build", "kind", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_and_changes_nothing(
    reactor: Reactor, example_pipeline: dict, db: Any, case: str, build: Any, kind: str, words: list[str]
) -> None:
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token})
    msg, params = build(uuid, token)
    before = snapshot(db)
    if len(json.dumps(msg)) > 100_000:
        # an environment variable cannot hold this much (Linux caps one at 128 KiB), so the
        # same entry point is called in-process with the environment Abaco would set
        from pipelinejobs.runtime import dumps, run_message

        code, result = run_message(reactor.env(msg, params=params), config_path=ROOT / "config.yml")
        out = ReactorResult(code, dumps(result), "")
    else:
        out = reactor.run(msg, params=params)
    assert out.returncode == 1, out.stdout
    result = out.result
    assert result["status"] == "error" and result["kind"] == kind, result
    for word in words:
        assert word in result["message"], (word, result["message"])
    assert "Traceback" not in out.stderr
    assert token not in out.stdout and token not in out.stderr
    assert snapshot(db) == before


def test_binary_message_is_refused(reactor_process: Reactor, example_pipeline: dict) -> None:
    reactor = reactor_process  # reactor.py itself, as Abaco runs it
    out = reactor.run(None, extra={"_abaco_Content-Type": "application/octet-stream"})
    assert out.returncode == 1 and "binary" in out.result["message"]


def test_secrets_stay_out_of_logs(reactor_process: Reactor, example_pipeline: dict, mongodb_uri: str) -> None:
    reactor = reactor_process  # reactor.py itself, as Abaco runs it
    uuid, token = create_job(reactor)
    out = reactor.run({"k": 1}, params={"uuid": uuid, "name": "run", "token": token, "x-nonce": "TACC_nonceSECRET01"})
    assert out.returncode == 0
    combined = out.stdout + out.stderr
    for secret in (token, "TACC_nonceSECRET01", "abaco-access-token-secret-value", authn_for(mongodb_uri)):
        assert secret not in combined


# -- concurrency and outages ----------------------------------------------------------------------
def test_sixteen_concurrent_updates_all_land(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    send(reactor, {"uuid": uuid, "name": "run", "token": token})
    procs = [reactor.start({"uuid": uuid, "name": "update", "token": token, "data": {"i": i}}) for i in range(16)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, outputs
    job = db.jobs.find_one({"uuid": uuid})
    updates = [h for h in job["history"] if h["name"] == "update"]
    assert sorted(h["data"]["i"] for h in updates) == list(range(16))
    assert job["_properties"]["revision"] == 17 and job["state"] == "RUNNING"
    assert len({h["uuid"] for h in job["history"]}) == 18


def test_racing_run_and_fail_leave_a_consistent_job(reactor: Reactor, example_pipeline: dict, db: Any) -> None:
    uuid, token = create_job(reactor)
    procs = [reactor.start({"uuid": uuid, "name": name, "token": token}) for name in ("finish", "run") * 4]
    [p.communicate(timeout=120) for p in procs]
    job = db.jobs.find_one({"uuid": uuid})
    names = [h["name"] for h in job["history"]]
    assert job["_properties"]["revision"] == len(names) - 1
    # every accepted event is in the history, in an order the state machine allows
    state = "CREATED"
    from pipelinejobs import fsm

    for name in names[1:]:
        assert fsm.allows(state, name), names
        state = fsm.target_state(name, fsm.State(state)).value
    assert state == job["state"]


def test_database_outage_fails_loudly(reactor: Reactor, example_pipeline: dict) -> None:
    from tests.conftest import _free_port

    dead = f"mongodb://127.0.0.1:{_free_port()}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    msg = {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "finish", "token": "0dc73dc3ff39b49a"}
    out = reactor.run(msg, extra={"_REACTOR_MONGODB_AUTHN": authn_for(dead)})
    assert out.returncode == 1
    assert out.result["kind"] == "storage_unavailable" and "nothing was changed" in out.result["message"]
    assert "0dc73dc3ff39b49a" not in out.stderr and "Traceback" not in out.stderr
