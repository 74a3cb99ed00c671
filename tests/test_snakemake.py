"""Snakemake reporting to `pipelinejobs serve`: real runs (snakemake 9 + snakemake-logger-plugin-panoptes,
the test extras) against a serve process on each store, and the protocol's corners through serve's app.

The real runs are few and small, and all of a store's runs go at once (``runs``): a workflow that
succeeds on a job it creates, one whose rule fails, one whose rule fails once under ``--retries 1``,
and one with the wrong job token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelinejobs import cli, identifiers
from pipelinejobs.server.engines import SnakemakeAddress, snakemake_address
from pipelinejobs.server.http import shown_path
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, authn_for
from tests.inprocess import Served
from tests.server_fixtures import LiveServer, new_job, start_server

SNAKEFILE = """
rule all:
    input: "c.txt", "d_x.txt"

rule a:
    output: "a.txt"
    shell: "echo a > {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "%s"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output}"

rule d:
    output: "d_{w}.txt"
    shell: "echo {wildcards.w} > {output}"
"""
B_WORKS = "cat {input} > {output}"
B_FAILS = "echo broken >&2; exit 3"
B_FAILS_ONCE = "if [ -e tried ]; then cat {input} > {output}; else touch tried; exit 3; fi"
RULE_JOBS = {"a", "b", "c", "d", "all"}
#: a pipeline of its own for the run that creates its job: its one job is that run's
PIPELINE = {"id": "lab/snakemake-test:1", "uuid": identifiers.catalog_uuid("lab/snakemake-test:1", "pipeline")}


STORES = ["sqlite", "mongodb"]


@pytest.fixture(scope="module")
def serves(tmp_path_factory: pytest.TempPathFactory, mongodb_uri: str) -> Iterator[dict[str, LiveServer]]:
    """One `pipelinejobs serve` process per store for the whole module: real Snakemake runs report to the
    command itself, as they would in a deployment."""
    database = "t_" + uuidlib.uuid4().hex[:12]
    sqlite_dir, mongo_dir = tmp_path_factory.mktemp("serve-sqlite"), tmp_path_factory.mktemp("serve-mongodb")
    path = sqlite_dir / "catalog.sqlite3"
    mongo_env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": database}
    starting = {
        "sqlite": start_server(
            sqlite_dir, "sqlite", {"_REACTOR_STORE_SQLITE_PATH": str(path)}, {"path": path}, process=True
        ),
        "mongodb": start_server(
            mongo_dir, "mongodb", mongo_env, {"uri": mongodb_uri, "database": database}, process=True
        ),
    }
    try:
        yield {backend: next(server) for backend, server in starting.items()}
    finally:
        for server in starting.values():
            server.close()
        import pymongo

        with pymongo.MongoClient(mongodb_uri) as mongo:
            mongo.drop_database(database)


@dataclass
class Run:
    uuid: str
    token: str
    address: str
    proc: subprocess.CompletedProcess[str]


def make_nonce(server: LiveServer, level: str = "EXECUTE") -> str:
    answer = web.post(f"{server.actor_url()}/nonces", headers=server.auth, json={"level": level})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["result"]["id"])


def snakemake(workdir: Path, address: str, *args: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "XDG_CACHE_HOME": str(workdir / ".cache")}
    command = [sys.executable, "-m", "snakemake", "-c1", "--logger", "panoptes", "--logger-panoptes-address", address]
    return subprocess.Popen(
        [*command, *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def start_runs(serve: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ...]]:
    """A store's four Snakemake runs, started: name -> (job uuid, job token, address, process)."""
    store = serve.open_store()
    try:
        store.save_pipeline(dict(PIPELINE))
    finally:
        store.close()
    base = f"{serve.url}/snakemake/{make_nonce(serve)}"
    plans: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}  # name -> (uuid, token, address, args)
    plans["finished"] = ("", "", f"{base}/pipeline/{PIPELINE['uuid']}", ())  # a job of its own, made by the run
    for name in ("failed", "retried", "refused"):
        uuid, token = new_job(serve)
        plans[name] = (uuid, token, f"{base}/job/{token}", ("--logger-panoptes-workflow-id", uuid))
    _, other_token = new_job(serve)
    plans["refused"] = (*plans["refused"][:2], f"{base}/job/{other_token}", plans["refused"][3])
    plans["retried"] = (*plans["retried"][:3], (*plans["retried"][3], "--retries", "1"))
    shells = {"finished": B_WORKS, "failed": B_FAILS, "retried": B_FAILS_ONCE, "refused": B_WORKS}
    started = {}
    for name, (uuid, token, address, args) in plans.items():
        workdir = tmp_path_factory.mktemp(f"snakemake-{serve.backend}-{name}")
        (workdir / "Snakefile").write_text(SNAKEFILE % shells[name])
        started[name] = (uuid, token, address, snakemake(workdir, address, *args))
    return started


@pytest.fixture(scope="module")
def runs(serves: dict[str, LiveServer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Run]]:
    """Every store's runs, all started together (the machine waits on Snakemake, not on serve), then awaited."""
    started = {backend: start_runs(serve, tmp_path_factory) for backend, serve in serves.items()}
    done: dict[str, dict[str, Run]] = {}
    for backend, plans in started.items():
        done[backend] = {}
        for name, (uuid, token, address, proc) in plans.items():
            out, _ = proc.communicate(timeout=300)
            done[backend][name] = Run(
                uuid, token, address, subprocess.CompletedProcess(proc.args, proc.returncode, out)
            )
        found = web.get(
            f"{serves[backend].url}/jobs", params={"pipeline": PIPELINE["uuid"]}, headers=serves[backend].auth
        )
        created = found.json()["result"]["jobs"]
        assert len(created) == 1, done[backend]["finished"].proc.stdout
        done[backend]["finished"].uuid = created[0]["uuid"]
    return done


def job(serve: LiveServer, uuid: str) -> dict[str, Any]:
    return dict(web.get(f"{serve.url}/jobs/{uuid}", headers=serve.auth).json()["result"])


def events(serve: LiveServer, uuid: str) -> list[dict[str, Any]]:
    answer = web.get(f"{serve.url}/jobs/{uuid}/events", params={"limit": 1000}, headers=serve.auth)
    return list(answer.json()["result"]["events"])


@pytest.mark.parametrize("backend", STORES)
def test_a_workflow_ends_finished_with_its_progress_and_a_task_record_per_rule(
    serves: dict[str, LiveServer],
    runs: dict[str, dict[str, Run]],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve, run = serves[backend], runs[backend]["finished"]
    assert run.proc.returncode == 0, run.proc.stdout
    shown = job(serve, run.uuid)
    assert shown["state"] == "FINISHED", run.proc.stdout
    assert [e["name"] for e in shown["history"]] == ["create", "run", "finish"]  # tasks stay out of the window
    assert shown["progress"]["done"] == shown["progress"]["total"] == len(RULE_JOBS)
    assert shown["progress"]["engine"] == "snakemake" and not shown["progress"].get("unfinished")
    logged = events(serve, run.uuid)
    infos = [e["data"] for e in logged if e["name"] == "job_info"]
    assert sorted(i["rule"] for i in infos) == sorted(RULE_JOBS)  # one task record per rule job
    assert all(e["outcome"] == "task" for e in logged if e["name"].startswith("job_"))
    d = next(i for i in infos if i["rule"] == "d")
    assert d["wildcards"] == {"w": "x"} and d["output"] == ["d_x.txt"]
    assert "echo" not in json.dumps(logged)  # shell commands are not kept
    finished = {e["data"]["jobid"] for e in logged if e["name"] == "job_finished"}
    assert finished == {i["jobid"] for i in infos}
    # done/total where people look: the web view (with a READ nonce) and `pipelinejobs job show`
    page = web.get(f"{serve.url}/ui/jobs/{run.uuid}", params={"x-nonce": make_nonce(serve, "READ")})
    assert page.status_code == 200 and f"{len(RULE_JOBS)} of {len(RULE_JOBS)} steps" in page.text
    for name, value in serve_env(serve).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["job", "show", run.uuid]) == 0
    assert f"progress  {len(RULE_JOBS)} of {len(RULE_JOBS)} steps (snakemake" in capsys.readouterr().out
    log = serve.read_log()
    assert run.address.split("/snakemake/")[1].split("/")[0] not in log  # the nonce of the address


def serve_env(serve: LiveServer) -> dict[str, str]:
    if serve.backend == "sqlite":
        return {"_REACTOR_STORE_SQLITE_PATH": str(serve.store_options["path"])}
    options = serve.store_options
    return {"_REACTOR_MONGODB_AUTHN": authn_for(options["uri"]), "_REACTOR_MONGODB_DATABASE": options["database"]}


@pytest.mark.parametrize("backend", STORES)
def test_a_failing_rule_fails_the_job_naming_it(
    serves: dict[str, LiveServer], runs: dict[str, dict[str, Run]], backend: str
) -> None:
    serve, run = serves[backend], runs[backend]["failed"]
    assert run.proc.returncode != 0
    shown = job(serve, run.uuid)
    assert shown["state"] == "FAILED", run.proc.stdout
    last = shown["history"][-1]
    assert last["name"] == "fail" and last["data"]["error"] == "WorkflowError" and last["data"]["failed"] == ["b"]
    rules = [e["data"]["rule"] for e in events(serve, run.uuid) if e["name"] == "job_info"]
    assert "b" in rules and "c" not in rules and "all" not in rules
    assert [e["data"]["rule"] for e in events(serve, run.uuid) if e["name"] == "job_error"] == ["b"]


@pytest.mark.parametrize("backend", STORES)
def test_a_rule_that_fails_once_under_retries_does_not_fail_the_job(
    serves: dict[str, LiveServer], runs: dict[str, dict[str, Run]], backend: str
) -> None:
    serve, run = serves[backend], runs[backend]["retried"]
    assert run.proc.returncode == 0, run.proc.stdout
    shown = job(serve, run.uuid)
    assert shown["state"] == "FINISHED", run.proc.stdout
    assert [e["name"] for e in shown["history"]] == ["create", "run", "finish"]
    logged = events(serve, run.uuid)
    assert [e["data"]["rule"] for e in logged if e["name"] == "job_error"] == ["b"]
    assert [e["data"]["rule"] for e in logged if e["name"] == "job_info"].count("b") == 2
    assert not shown["progress"].get("unfinished")


@pytest.mark.parametrize("backend", STORES)
def test_a_wrong_job_token_changes_nothing_and_the_workflow_runs_on(
    serves: dict[str, LiveServer], runs: dict[str, dict[str, Run]], backend: str
) -> None:
    serve, run = serves[backend], runs[backend]["refused"]
    assert run.proc.returncode == 0, run.proc.stdout  # the plugin logs the refusal; the workflow is not stopped
    shown = job(serve, run.uuid)
    assert shown["state"] == "CREATED" and shown["_properties"]["revision"] == 0 and "progress" not in shown
    assert [e["name"] for e in events(serve, run.uuid)] == ["create"]
    assert "create_workflow 401" in serve.read_log()


# -- the protocol's corners, in-process ------------------------------------------------------------
def address(app: Served, nonce: str | None, *, token: str | None = None, pipeline: str | None = None) -> str:
    base = "/snakemake" + (f"/{nonce}" if nonce else "")
    return base + (f"/job/{token}" if token else "") + (f"/pipeline/{pipeline}" if pipeline else "")


def update(
    app: Served, base: str, uuid_or_id: str, msg: Any, *, as_json: bool = False, **headers: str
) -> httpx.Response:
    fields = {"msg": json.dumps(msg), "timestamp": "Tue Dec  1 09:30:00 2026", "id": uuid_or_id}
    if as_json:  # Snakemake 7: a JSON text without a Content-Type
        return app.client.post(f"{base}/update_workflow_status", content=json.dumps(fields).encode(), headers=headers)
    return app.client.post(f"{base}/update_workflow_status", data=fields, headers=headers)


def state(app: Served, uuid: str) -> tuple[Any, ...]:
    shown = app.job(uuid)
    return shown["state"], shown["_properties"]["revision"], len(app.events(uuid)), shown.get("progress")


def test_the_address_carries_the_credentials_and_logs_never_show_them() -> None:
    assert snakemake_address("N0NCE/job/T0KEN/update_workflow_status") == SnakemakeAddress(
        "update_workflow_status", "N0NCE", token="T0KEN"
    )
    parsed = snakemake_address("N0NCE/pipeline/106aa/create_workflow")
    assert parsed is not None and (parsed.nonce, parsed.pipeline, parsed.token) == ("N0NCE", "106aa", None)
    assert snakemake_address("job/T0KEN/api/service-info") == SnakemakeAddress("service-info", None, token="T0KEN")
    assert snakemake_address("N0NCE/api/workflow/107x.T0KEN") == SnakemakeAddress(
        "workflow", "N0NCE", workflow="107x.T0KEN"
    )
    assert snakemake_address("N0NCE/extra/job/T/create_workflow") is None
    assert snakemake_address("N0NCE/elsewhere") is None
    for path in ("/snakemake/N0NCE/job/T0KEN/update_workflow_status", "/snakemake/N0NCE/api/workflow/107x.T0KEN"):
        assert "N0NCE" not in shown_path(path) and "T0KEN" not in shown_path(path)
    assert shown_path("/snakemake/N0NCE/pipeline/106aa/create_workflow").endswith("/pipeline/106aa/create_workflow")


def test_a_nonce_alone_cannot_drive_a_job_and_a_wrong_nonce_reaches_nothing(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    before = state(serve_app, uuid)
    nonce = serve_app.nonce()
    bind = serve_app.client.get(f"{address(serve_app, nonce)}/create_workflow", params={"workflow_id": uuid})
    no_token = update(serve_app, address(serve_app, nonce), uuid, {"level": "workflow_success"})
    wrong_nonce = update(serve_app, address(serve_app, "SD2E_madeup", token=token), uuid, {"level": "workflow_success"})
    read_nonce = update(serve_app, address(serve_app, serve_app.nonce("READ"), token=token), uuid, {"level": "info"})
    assert [a.status_code for a in (bind, no_token, wrong_nonce, read_nonce)] == [401, 401, 401, 401]
    assert token not in bind.text + no_token.text + wrong_nonce.text
    assert state(serve_app, uuid) == before


def test_a_run_on_a_pipeline_creates_its_job_and_the_id_carries_its_token(serve_app: Served) -> None:
    serve_app.new_job()  # registers the example pipeline
    base = address(serve_app, serve_app.nonce(), pipeline=EXAMPLE_PIPELINE_UUID)
    answer = serve_app.client.get(f"{base}/create_workflow")
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["id"]
    uuid, _, token = run_id.partition(".")
    assert answer.json()["name"] == uuid and len(token) == 16 and serve_app.job(uuid)["state"] == "CREATED"
    second = serve_app.client.get(f"{base}/create_workflow").json()["id"]
    assert second.partition(".")[0] != uuid  # each run is a job of its own
    assert update(serve_app, base, run_id, {"level": "info", "msg": "Workflow started"}).json()["state"] == "RUNNING"
    forged = update(serve_app, base, f"{uuid}.{'0' * 16}", {"level": "workflow_success"})
    assert forged.status_code == 401 and serve_app.job(uuid)["state"] == "RUNNING"


def test_snakemake_7_and_8_with_a_bearer_token(serve_app: Served) -> None:
    """``--wms-monitor URL`` with ``WMS_MONITOR_TOKEN``: service-info first, JSON updates, PUT /api/workflow/<id>."""
    serve_app.new_job()  # registers the example pipeline
    operator = {"Authorization": serve_app.auth["Authorization"]}
    base = address(serve_app, None, pipeline=EXAMPLE_PIPELINE_UUID)
    assert serve_app.client.get(f"{base}/api/service-info", headers=operator).json() == {"status": "running"}
    assert serve_app.client.get(f"{base}/api/service-info").status_code == 401
    created = serve_app.client.get(f"{base}/create_workflow", params={"sample": "S1"}, headers=operator).json()
    uuid = created["id"].partition(".")[0]
    assert serve_app.job(uuid)["data"]["snakemake"]["args"] == {"sample": "S1"}
    dotted = serve_app.client.get(f"{base}/create_workflow", params={"run.name": "x"}, headers=operator)
    assert dotted.status_code == 200 and "id" in dotted.json(), dotted.text  # kept as text, not refused
    put = serve_app.client.put(
        f"{base}/api/workflow/{created['id']}", json={"snakefile": "Snakefile"}, headers=operator
    )
    assert put.status_code == 200 and put.json()["state"] == "RUNNING", put.text
    progress = {"level": "progress", "done": 1, "total": 2}
    assert update(serve_app, base, created["id"], progress, as_json=True, **operator).status_code == 200
    assert serve_app.job(uuid)["progress"]["done"] == 1
    # a nonce as WMS_MONITOR_TOKEN, the job token in the address
    job_uuid, token = serve_app.new_job()
    with_nonce = {"Authorization": f"Bearer {serve_app.nonce()}"}
    bound = serve_app.client.get(
        f"/snakemake/job/{token}/create_workflow", params={"workflow_id": job_uuid}, headers=with_nonce
    )
    assert bound.status_code == 200 and bound.json()["id"] == job_uuid and bound.json()["state"] == "RUNNING"


def test_keep_going_stays_running_until_the_workflow_ends_and_unknown_levels_are_kept(serve_app: Served) -> None:
    """The reports of a ``--keep-going`` run whose rule b fails while d still runs (recorded from Snakemake 9.27)."""
    uuid, token = serve_app.new_job()
    base = address(serve_app, serve_app.nonce(), token=token)
    sequence = [
        {"level": "info", "msg": "Workflow started: Snakefile"},
        {"level": "progress", "done": 0, "total": 5},
        {"level": "job_started", "jobs": [4, 2]},
        {"level": "job_info", "jobid": 4, "name": "d", "output": ["d.txt"], "wildcards": {}, "shellcmd": "sleep 2"},
        {"level": "job_info", "jobid": 2, "name": "b", "output": ["b.txt"], "wildcards": {}, "shellcmd": "exit 3"},
        {"level": "error", "msg": "RuleException", "rule": None, "location": None, "traceback": None},
        {"level": "job_error", "jobid": 2, "name": "b"},
        {"level": "rulegraph", "rulegraph": {"nodes": [{"rule": "b"}], "links": []}},  # a level we do not know
        {"level": "job_finished", "jobid": 4},
        {"level": "progress", "done": 2, "total": 5},
    ]
    for msg in sequence:
        answer = update(serve_app, base, uuid, msg)
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
        assert serve_app.job(uuid)["state"] == "RUNNING"
    end = update(serve_app, base, uuid, {"level": "error", "msg": "WorkflowError", "rule": None})
    assert end.json()["state"] == "FAILED"
    shown = serve_app.job(uuid)
    assert shown["history"][-1]["data"]["failed"] == ["b"] and shown["progress"]["unfinished"] == {"2": "b"}
    kept = [e for e in serve_app.events(uuid) if e["name"] == "rulegraph"]
    assert kept[0]["outcome"] == "task" and kept[0]["data"]["message"]["rulegraph"]["nodes"] == [{"rule": "b"}]
    fields = {"msg": "not json {", "timestamp": "Tue Dec  1 09:31:00 2026", "id": uuid}  # msg that is no JSON
    odd = serve_app.client.post(f"{base}/update_workflow_status", data=fields)
    assert odd.status_code == 200 and serve_app.events(uuid)[-1]["data"]["message"]["msg"] == "not json {"


def test_an_error_before_any_rule_fails_the_job(serve_app: Served) -> None:
    uuid, token = serve_app.new_job()
    base = address(serve_app, serve_app.nonce(), token=token)
    update(serve_app, base, uuid, {"level": "info", "msg": "Workflow started"})
    answer = update(serve_app, base, uuid, {"level": "error", "msg": "MissingInputException"})
    assert answer.json()["state"] == "FAILED" and "failed" not in serve_app.job(uuid)["history"][-1]["data"]


def test_snakemake_8_sends_each_report_twice_and_errors_as_text(serve_app: Served) -> None:
    """Snakemake 8.30's ``--wms-monitor`` (run by hand against serve): every message twice, each with its own
    time.time(); an error's msg is the exception's text ("RuleException:\\nCalledProcessError ...")."""
    uuid, token = serve_app.new_job()
    base = address(serve_app, serve_app.nonce(), token=token)
    created = serve_app.client.get(f"{base}/create_workflow", params={"workflow_id": uuid})
    assert created.json() == {"id": uuid, "name": uuid, "status": "Running", "state": "RUNNING"}
    assert serve_app.client.post(f"{base}/api/workflow/{uuid}", json={}).status_code == 200  # 8.x POSTs it
    sequence = [
        {"level": "host", "timestamp": 1796600345.893698},
        {"level": "job_info", "jobid": 2, "name": "b", "output": ["b.txt"], "wildcards": {}, "timestamp": 1796600346.1},
        {
            "level": "error",
            "msg": "RuleException:\nCalledProcessError in file Snakefile, line 9",
            "timestamp": 1796600346.2,
        },
        {"level": "job_error", "jobid": 2, "name": "b", "timestamp": 1796600346.3},
    ]
    for msg in sequence:
        first, second = update(serve_app, base, uuid, msg), update(serve_app, base, uuid, msg)
        assert first.status_code == second.status_code == 200 and second.json()["replayed"] is True, second.text
    assert serve_app.job(uuid)["state"] == "RUNNING"  # one rule job's error: it may be retried
    assert [e["name"] for e in serve_app.events(uuid)][-4:] == ["host", "job_info", "error", "job_error"]
    end = {
        "level": "error",
        "msg": "WorkflowError:\nAt least one job did not complete successfully.",
        "timestamp": 1796600347.0,
    }
    assert update(serve_app, base, uuid, end).json()["state"] == "FAILED"
    assert serve_app.job(uuid)["history"][-1]["data"]["failed"] == ["b"]
