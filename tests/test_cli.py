"""The `pipelinejobs` command against the test MongoDB: output for people and for scripts, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelinejobs import cli, service
from pipelinejobs.errors import ErrorKind
from pipelinejobs.messages import EventMessage
from pipelinejobs.settings import load_settings, read_config_file
from pipelinejobs.store.mongo import MongoJobStore
from tests import web
from tests.conftest import (
    EXAMPLE_PIPELINE_COMPONENTS,
    EXAMPLE_PIPELINE_ID,
    EXAMPLE_PIPELINE_UUID,
    ROOT,
    authn_for,
    prepare_database,
)
from tests.server_fixtures import LiveServer


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, mongodb_uri: str, database_name: str, db: Any) -> Any:
    """The CLI reads its settings from the environment, as it would on an operator's machine."""
    monkeypatch.setenv("_REACTOR_MONGODB_AUTHN", authn_for(mongodb_uri))
    monkeypatch.setenv("_REACTOR_MONGODB_DATABASE", database_name)
    prepare_database(mongodb_uri, database_name)  # `pipelinejobs db init`, once per deployment
    return db


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pj(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Run:
    """`pipelinejobs ARGS...` in-process, with the checkout's config.yml minus any `serve` section."""
    config = {k: v for k, v in read_config_file(None).items() if k != "serve"}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--config", str(path), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.json"
    path.write_text(
        json.dumps({"id": EXAMPLE_PIPELINE_ID, "name": "Tacobot", "components": EXAMPLE_PIPELINE_COMPONENTS})
    )
    return path


def test_pipeline_register_computes_the_uuid(env: Any, pj: Run, pipeline_file: Path) -> None:
    code, out, _ = pj("pipeline", "register", str(pipeline_file))
    assert code == 0 and out.strip() == f"registered pipeline {EXAMPLE_PIPELINE_ID} as {EXAMPLE_PIPELINE_UUID}"
    stored = env.pipelines.find_one({"uuid": EXAMPLE_PIPELINE_UUID})
    assert stored["id"] == EXAMPLE_PIPELINE_ID and stored["components"] == EXAMPLE_PIPELINE_COMPONENTS
    code, out, _ = pj("pipeline", "register", str(pipeline_file), "--json")
    assert code == 0 and json.loads(out)["created"] is False
    assert env.pipelines.count_documents({}) == 1


def test_job_create_show_list(env: Any, pj: Run, pipeline_file: Path) -> None:
    pj("pipeline", "register", str(pipeline_file))
    code, out, _ = pj(
        "--json",
        "job",
        "create",
        "--pipeline",
        EXAMPLE_PIPELINE_UUID,
        "--archive-path",
        "/p",
        "--data",
        '{"n": 1}',
    )
    assert code == 0
    created = json.loads(out)
    assert created["state"] == "CREATED" and re.fullmatch(r"[0-9a-f]{16}", created["token"])
    uuid = created["uuid"]
    assert env.jobs.find_one({"uuid": uuid})["data"] == {"n": 1}

    code, out, _ = pj("job", "show", uuid)
    assert code == 0
    assert f"job {uuid}  state CREATED" in out and "create" in out and "_salt" not in out
    code, out, _ = pj("job", "show", uuid, "--json")
    shown = json.loads(out)
    assert shown["uuid"] == uuid and [h["name"] for h in shown["history"]] == ["create"] and "_salt" not in shown

    code, out, _ = pj("job", "list", "--state", "CREATED")
    assert code == 0 and uuid in out
    code, out, _ = pj("job", "list", "--state", "RUNNING")
    assert code == 0 and uuid not in out and out.strip() == "no jobs match"
    code, out, _ = pj("job", "list", "--pipeline", EXAMPLE_PIPELINE_UUID, "--json")
    assert [j["uuid"] for j in json.loads(out)] == [uuid]


@pytest.mark.parametrize(
    ("argv", "kind", "words"),
    [
        (["job", "show", "10700000-0000-5000-8000-000000000000"], ErrorKind.NOT_FOUND, "no job with uuid"),
        (
            ["job", "create", "--pipeline", "10600000-0000-5000-8000-000000000000", "--archive-path", "/p"],
            ErrorKind.NOT_FOUND,
            "register the pipeline first",
        ),
        (
            ["job", "create", "--pipeline", "x", "--archive-path", "/p", "--data", "{nope"],
            ErrorKind.BAD_MESSAGE,
            "JSON",
        ),
        (["pipeline", "register", "/nonexistent/pipeline.json"], ErrorKind.BAD_MESSAGE, "cannot read"),
        (["nonce", "create", "--actor", "a1", "--max-uses", "0"], ErrorKind.BAD_MESSAGE, "max uses parameter"),
        (["nonce", "delete", "--actor", "a1", "SD2E_AAAAAAAAAAAAA"], ErrorKind.NOT_FOUND, "no such nonce"),
        (["serve", "--workers", "0"], ErrorKind.CONFIGURATION, "--workers must be a whole number >= 1"),
    ],
)
def test_errors_map_to_exit_codes(env: Any, pj: Run, argv: list[str], kind: ErrorKind, words: str) -> None:
    code, _, err = pj(*argv)
    assert code == cli.EXIT_CODES[kind]
    assert words in err and f"({kind.value})" in err


def test_bad_pipeline_file(env: Any, pj: Run, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"id": "x"}))
    code, _, err = pj("--json", "pipeline", "register", str(path))
    assert code == cli.EXIT_CODES[ErrorKind.BAD_MESSAGE] and "'components'" in err
    assert env.pipelines.count_documents({}) == 0


def test_exit_code_table_is_complete_and_distinct() -> None:
    assert set(cli.EXIT_CODES) == set(ErrorKind)
    codes = list(cli.EXIT_CODES.values())
    assert len(set(codes)) == len(codes) and not {0, 1, cli.USAGE_ERROR} & set(codes)


def test_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.USAGE_ERROR
    with pytest.raises(SystemExit) as exited:
        cli.main(["job", "explode"])
    assert exited.value.code == cli.USAGE_ERROR
    assert "invalid choice" in capsys.readouterr().err


def test_nonce_create_list_delete(env: Any, pj: Run) -> None:
    code, out, _ = pj("nonce", "create", "--actor", "pjmanager0001", "--max-uses", "3", "--json")
    assert code == 0
    nonce = json.loads(out)
    assert re.fullmatch(r"SD2E_[A-Za-z0-9]{13}", nonce["id"]) and nonce["remainingUses"] == 3
    assert env.abaco_nonces.count_documents({"id": nonce["id"], "actorId": "pjmanager0001"}) == 1
    code, out, _ = pj("nonce", "list", "--actor", "pjmanager0001")
    assert code == 0 and nonce["id"] in out and "EXECUTE" in out
    code, out, _ = pj("nonce", "list", "--actor", "someoneelse")
    assert out.strip() == "no nonces for actor someoneelse"
    code, out, _ = pj("nonce", "delete", "--actor", "pjmanager0001", nonce["id"])
    assert code == 0 and env.abaco_nonces.count_documents({}) == 0


def test_nonce_made_by_the_cli_works_on_the_server(live_server: LiveServer, pj: Run, monkeypatch: Any) -> None:
    """The CLI and `serve` share the registry: a nonce made offline authenticates a POST."""
    options = live_server.store_options
    monkeypatch.setenv("_REACTOR_MONGODB_AUTHN", authn_for(options["uri"]))
    monkeypatch.setenv("_REACTOR_MONGODB_DATABASE", options["database"])
    code, out, _ = pj("nonce", "create", "--actor", live_server.actor_id, "--level", "READ", "--json")
    assert code == 0

    nonce = json.loads(out)["id"]
    answer = web.get(f"{live_server.actor_url()}/executions", params={"x-nonce": nonce})
    assert answer.status_code == 200
    refused = web.post(live_server.messages_url, params={"x-nonce": nonce}, json={})
    assert refused.json()["message"] == "Nonce does not have sufficient permissions level."


def test_send_reaches_the_server(live_server: LiveServer, pj: Run, monkeypatch: Any) -> None:
    options = live_server.store_options
    monkeypatch.setenv("_REACTOR_MONGODB_AUTHN", authn_for(options["uri"]))
    monkeypatch.setenv("_REACTOR_MONGODB_DATABASE", options["database"])
    monkeypatch.setenv(cli.BEARER_ENV, live_server.api_token)
    store = live_server.open_store()
    store.save_pipeline(
        {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "components": EXAMPLE_PIPELINE_COMPONENTS}
    )
    store.close()
    create = json.dumps({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {"via": "send"}})
    code, out, _ = pj("send", live_server.messages_url, create, "--sync", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["status"] == "ok" and created["state"] == "CREATED"
    event = json.dumps({"uuid": created["uuid"], "name": "run", "token": created["token"]})
    code, out, _ = pj("send", live_server.actor_id, event, "--api-server", live_server.url)
    assert code == 0 and out.startswith("sent; execution ")
    job = live_server.open_store()
    try:
        assert job.find_job(created["uuid"])["state"] == "RUNNING"
    finally:
        job.close()
    # a refusal by the manager under --sync is a non-zero exit with the manager's reason
    code, _, err = pj("send", live_server.messages_url, event.replace('"run"', '"validated"'), "--sync")
    assert code == cli.EXIT_CODES[ErrorKind.INVALID_TRANSITION] and "not allowed" in err
    # and a refusal by the platform (wrong bearer) too
    code, _, err = pj("send", live_server.messages_url, event, "--bearer", "wrong-token")
    assert code == cli.EXIT_CODES[ErrorKind.UNAUTHORIZED] and "Invalid JWT." in err


def test_importing_the_cli_stays_light() -> None:
    probe = (
        "import sys, pipelinejobs.cli; print(sorted(m for m in ('starlette', 'uvicorn', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_db_init_prepares_a_fresh_catalog(
    monkeypatch: pytest.MonkeyPatch, mongodb_uri: str, database_name: str, db: Any, pj: Run
) -> None:
    monkeypatch.setenv("_REACTOR_MONGODB_AUTHN", authn_for(mongodb_uri))
    monkeypatch.setenv("_REACTOR_MONGODB_DATABASE", database_name)
    db.jobs.insert_one({"uuid": "10700000-0000-5000-8000-000000000001"})  # a catalog datacatalog wrote, unindexed
    code, _, err = pj("job", "show", "10700000-0000-5000-8000-000000000000")
    assert code == 9 and "pipelinejobs db init" in err  # configuration: the indexes are missing
    code, out, _ = pj("db", "init")
    assert code == 0 and out.strip() == f"mongodb database '{database_name}' on {mongodb_uri[10:]}: indexes ready"
    assert db.events.index_information()["uuid_seq_unique"]["unique"] is True
    code, out, _ = pj("db", "init", "--json")  # safe to repeat
    assert code == 0 and json.loads(out)["ready"] is True


def test_job_history_pages_through_the_event_log(
    env: Any, pj: Run, pipeline_file: Path, mongodb_uri: str, database_name: str
) -> None:
    pj("pipeline", "register", str(pipeline_file))
    code, out, _ = pj("--json", "job", "create", "--pipeline", EXAMPLE_PIPELINE_UUID, "--archive-path", "/p")
    created = json.loads(out)
    uuid, token = created["uuid"], created["token"]
    settings = load_settings({}, ROOT / "config.yml")
    with MongoJobStore(mongodb_uri, database_name) as store:
        for i in range(5):
            message = EventMessage(uuid, "update", token, {"i": i})
            service.handle(message, store=store, settings=settings, now=datetime.now(timezone.utc))
    code, out, _ = pj("job", "history", uuid, "--limit", "4")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "DATE", "EVENT", "OUTCOME", "STATE", "DATA"]
    assert [line.split()[0] for line in lines[1:5]] == ["0", "1", "2", "3"]
    assert lines[-1] == f"more: pipelinejobs job history {uuid} --after 3:"
    code, out, _ = pj("job", "history", uuid, "--after", "3:", "--json")
    page = json.loads(out)
    assert [e["seq"] for e in page["events"]] == [4, 5] and page["next"] is None
    assert [e["data"] for e in page["events"]] == [{"i": 3}, {"i": 4}]
    code, out, _ = pj("job", "history", uuid, "--all", "--json")
    assert [e["seq"] for e in json.loads(out)["events"]] == list(range(6))
    assert token not in out
    code, _, err = pj("job", "history", uuid, "--after", "nonsense")
    assert code == 3 and "--after" in err
