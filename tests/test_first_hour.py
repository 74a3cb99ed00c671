"""A new user's first hour: the `pipelinejobs` command and `serve` run as subprocesses, as an operator runs them.

Each test is one thing a first-time user met (issue 9, "The first hour"): the store
in use named, a silent MongoDB reported, pipelines that cannot be overwritten, states
checked, `send` and `serve` sharing a token, a busy port, HTTPS, missing commands.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipelinejobs import cli, service
from pipelinejobs.errors import ErrorKind
from pipelinejobs.messages import CreateMessage
from pipelinejobs.settings import load_settings
from pipelinejobs.store.factory import open_job_store
from tests import web
from tests.conftest import (
    EXAMPLE_PIPELINE_COMPONENTS,
    EXAMPLE_PIPELINE_ID,
    EXAMPLE_PIPELINE_UUID,
    ROOT,
    authn_for,
    stop_process,
)
from tests.server_fixtures import ACTOR_ID, LiveServer, free_port

CODE = cli.EXIT_CODES


class Cli:
    """`pipelinejobs ARGS` in a subprocess with a clean environment: a HOME of its own and a SQLite file."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.sqlite = tmp_path / "jobs.sqlite3"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "USER": "tester",
            "_REACTOR_STORE_SQLITE_PATH": str(self.sqlite),
            **env,
        }

    def __call__(self, *argv: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipelinejobs.cli", *argv],
            env={**self.env, **env},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *argv: str, **env: str) -> str:
        done = self(*argv, **env)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def pj(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"id": EXAMPLE_PIPELINE_ID, "components": EXAMPLE_PIPELINE_COMPONENTS}))
    return path


def _create(pj: Cli, pipeline_file: Path, *extra: str) -> dict[str, Any]:
    pj.ok("pipeline", "register", str(pipeline_file))
    return json.loads(
        pj.ok("--json", "job", "create", "--pipeline", EXAMPLE_PIPELINE_UUID, "--archive-path", "/p", *extra)
    )


# -- which store ----------------------------------------------------------------------------------
def test_verbose_output_and_not_found_name_the_store(pj: Cli) -> None:
    done = pj("-v", "job", "show", "10700000-0000-5000-8000-000000000000")
    assert done.returncode == CODE[ErrorKind.NOT_FOUND]
    assert f"store: sqlite file {pj.sqlite}" in done.stderr
    assert f"no job with uuid 10700000-0000-5000-8000-000000000000 in the sqlite file {pj.sqlite}" in done.stderr


def test_a_silent_mongodb_is_reported_once_and_named(pj: Cli, tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    path = _short_timeout_config(tmp_path)
    password = "s3cret-passw0rd"
    authn = authn_for(f"mongodb://operator:{password}@127.0.0.1:{dead}/?authSource=admin")
    done = pj("--config", str(path), "job", "list", _REACTOR_MONGODB_AUTHN=authn)
    assert done.returncode == CODE[ErrorKind.STORAGE_UNAVAILABLE]
    waiting = [line for line in done.stderr.splitlines() if "waiting up to 1.5 s" in line]
    assert len(waiting) == 1 and f"127.0.0.1:{dead}" in waiting[0]
    error = done.stderr.splitlines()[-1]
    assert error.startswith("pipelinejobs: error (storage_unavailable)") and f"127.0.0.1:{dead}" in error
    assert password not in done.stderr and "Traceback" not in done.stderr


def _short_timeout_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((ROOT / "config.yml").read_text())
    config["mongodb"]["server_selection_timeout_ms"] = 1500
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_serve_says_it_waits_for_a_silent_mongodb(tmp_path: Path) -> None:
    dead = free_port()
    config = _short_timeout_config(tmp_path)
    authn = authn_for(f"mongodb://127.0.0.1:{dead}")
    proc = _serve(tmp_path, "--config", str(config), port=free_port(), _REACTOR_MONGODB_AUTHN=authn)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == CODE[ErrorKind.STORAGE_UNAVAILABLE]
    assert out.count(f"waiting up to 1.5 s for MongoDB at 127.0.0.1:{dead}") == 1
    assert "listening" not in out and "Traceback" not in out and f"127.0.0.1:{dead}" in out.splitlines()[-1]


def test_a_mongodb_that_answers_is_not_reported(
    pj: Cli, mongodb_uri: str, database_name: str, db: Any, pipeline_file: Path
) -> None:
    env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": database_name}
    pj.ok("db", "init", **env)
    done = pj("-v", "pipeline", "list", **env)
    assert done.returncode == 0 and "waiting" not in done.stderr
    assert f"store: mongodb database '{database_name}' on {mongodb_uri[10:]}" in done.stderr


# -- pipelines ------------------------------------------------------------------------------------
def test_registering_other_components_under_a_taken_id_is_a_conflict(pj: Cli, pipeline_file: Path) -> None:
    assert pj.ok("pipeline", "register", str(pipeline_file)).strip().startswith("registered pipeline")
    assert pj.ok("pipeline", "register", str(pipeline_file)).strip().startswith("already registered:")
    changed = json.loads(pipeline_file.read_text())
    changed["components"][1]["parameters"]["smoke"] = False
    pipeline_file.write_text(json.dumps(changed))
    done = pj("pipeline", "register", str(pipeline_file))
    assert done.returncode == CODE[ErrorKind.CONFLICT]
    assert f"pipeline {EXAMPLE_PIPELINE_ID} is already registered as {EXAMPLE_PIPELINE_UUID}" in done.stderr
    shown = json.loads(pj.ok("--json", "pipeline", "show", EXAMPLE_PIPELINE_UUID))
    assert shown["components"] == EXAMPLE_PIPELINE_COMPONENTS  # the first registration stands


def test_pipeline_list_and_show(pj: Cli, pipeline_file: Path) -> None:
    assert pj.ok("pipeline", "list").strip() == "no pipelines registered"
    pj.ok("pipeline", "register", str(pipeline_file))
    lines = pj.ok("pipeline", "list").splitlines()
    assert lines[1].split() == [EXAMPLE_PIPELINE_UUID, "2", EXAMPLE_PIPELINE_ID]
    by_id = pj.ok("pipeline", "show", EXAMPLE_PIPELINE_ID)
    assert by_id.splitlines()[0] == f"pipeline {EXAMPLE_PIPELINE_ID}  uuid {EXAMPLE_PIPELINE_UUID}"
    assert '"image": "index.docker.io/tacc/tacbobot:latest"' in by_id
    done = pj("pipeline", "show", "nobody/nothing:1")
    assert done.returncode == CODE[ErrorKind.NOT_FOUND] and "sqlite file" in done.stderr


# -- jobs -----------------------------------------------------------------------------------------
def test_job_list_states_in_any_case_and_unknown_states_refused(pj: Cli, pipeline_file: Path) -> None:
    job = _create(pj, pipeline_file)
    assert job["uuid"] in pj.ok("job", "list", "--state", "created")
    done = pj("job", "list", "--state", "BOGUS")
    assert done.returncode == CODE[ErrorKind.BAD_MESSAGE] and done.stdout == ""
    assert "--state 'BOGUS' is not a state; states: CREATED, RUNNING, FAILED, FINISHED" in done.stderr


def test_event_delete_audit_and_hidden_jobs(pj: Cli, pipeline_file: Path) -> None:
    parent = "10700000-0000-5000-8000-000000000001"
    job = _create(pj, pipeline_file, "--archive-system", "data-tacc-work", "--child-of", parent, "--session", "s-1")
    uuid, token = job["uuid"], job["token"]
    stored = json.loads(pj.ok("--json", "job", "show", uuid))
    assert stored["archive_system"] == "data-tacc-work" and stored["child_of"] == [parent]

    assert pj.ok("job", "event", uuid, "run", "--token", token).strip() == f"job {uuid}: run -> state RUNNING"
    big = {"text": "x" * 200}
    pj.ok("job", "event", uuid, "update", "--data", json.dumps(big), "--token", token)
    refused = pj("job", "event", uuid, "run", "--token", "0" * 16)
    assert refused.returncode == CODE[ErrorKind.UNAUTHORIZED] and token not in refused.stderr
    wrong = pj("job", "event", uuid, "validated", "--token", token)
    assert wrong.returncode == CODE[ErrorKind.INVALID_TRANSITION]

    short = pj.ok("job", "show", uuid)
    assert "  session   s-1" in short and f"  child of  {parent}" in short and "x" * 200 not in short
    assert json.dumps(big, separators=(",", ":")) in pj.ok("job", "show", uuid, "--full")

    pj.ok("job", "delete", uuid, "--token", token)
    assert uuid not in pj.ok("job", "list")
    row = next(line for line in pj.ok("job", "list", "--all").splitlines() if uuid in line)
    assert row.endswith("(hidden)") and "RUNNING" in row

    pj.ok("job", "delete", uuid, "--force", "--token", token)
    assert uuid not in pj.ok("job", "list", "--all")
    trail = pj.ok("job", "audit", uuid).splitlines()
    assert [line.split()[2] for line in trail[1:]] == ["create", "update", "delete"]
    assert trail[-1].endswith("the whole job (tombstone)")
    missing = pj("job", "audit", "10700000-0000-5000-8000-00000000abcd")
    assert missing.returncode == CODE[ErrorKind.NOT_FOUND]


def test_job_list_into_a_closed_pipe_ends_quietly(pj: Cli, pipeline_file: Path) -> None:
    pj.ok("pipeline", "register", str(pipeline_file))
    settings = load_settings(pj.env)
    with open_job_store(settings, pj.env) as store:
        for i in range(60):  # well over a pipe's 64 KiB of JSON
            message = CreateMessage(EXAMPLE_PIPELINE_UUID, f"/p/{i}", {"i": i, "pad": "y" * 2000})
            service.handle(message, store=store, settings=settings, now=datetime.now(timezone.utc))
    command = f"{sys.executable} -m pipelinejobs.cli job list --json | head -c 100"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=pj.env, cwd=pj.home, capture_output=True, text=True, timeout=60
    )
    assert len(done.stdout) == 100 and done.stdout.startswith("[{")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.returncode == cli.BROKEN_PIPE


# -- nonces ---------------------------------------------------------------------------------------
def test_nonce_for_an_actor_serve_does_not_answer_for(pj: Cli) -> None:
    done = pj("nonce", "create", "--actor", "someoneelse", _REACTOR_SERVE_ACTORS="pjmanager0001,pjmanager0002")
    assert done.returncode == CODE[ErrorKind.NOT_FOUND]
    assert "actor someoneelse is not one of serve.actors (pjmanager0001, pjmanager0002)" in done.stderr
    unset = pj("nonce", "create", "--actor", "pjmanager0001")
    assert unset.returncode == 0 and "serve.actors is not set" in unset.stderr


# -- send and serve -------------------------------------------------------------------------------
def test_send_uses_serves_token_and_says_the_message_was_only_queued(
    live_server_sqlite: LiveServer, tmp_path: Path
) -> None:
    server = live_server_sqlite
    with server.open_store() as store:
        store.save_pipeline(
            {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "components": EXAMPLE_PIPELINE_COMPONENTS}
        )
    pj = Cli(tmp_path, PIPELINEJOBS_API_TOKENS=f"{server.api_token},another-token")
    create = json.dumps({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/p", "data": {}})
    created = json.loads(pj.ok("send", server.messages_url, create, "--sync", "--json"))
    assert created["status"] == "ok"
    bogus = json.dumps({"uuid": created["uuid"], "name": "validated", "token": created["token"]})
    done = pj("send", ACTOR_ID, bogus, "--api-server", server.url)
    assert done.returncode == 0
    first, second = done.stdout.splitlines()
    assert first.startswith("sent; execution ") and "queued" in first
    execution = first.split()[2]
    url = f"{server.url}/actors/v2/{ACTOR_ID}/executions/{execution}"
    assert second.startswith(f"its result: GET {url}") and "--sync" in second
    for _ in range(50):  # the record is written behind the answer
        answer = web.get(url, headers=server.auth)
        if answer.status_code == 200 and answer.json()["result"].get("status") == "COMPLETE":
            break
        time.sleep(0.1)
    assert answer.status_code == 200 and answer.json()["result"]["id"] == execution


def _serve(tmp_path: Path, *argv: str, port: int, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "serve.sqlite3"),
        **extra,
    }
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--actor", ACTOR_ID, *argv],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_serve_on_a_busy_port_says_so_before_anything_else(tmp_path: Path, workers: str, reuse_port: bool) -> None:
    """Also with --workers 2, whose sockets share the port among themselves (SO_REUSEPORT): a listener
    that allows sharing too (another serve --workers 2, say) must not end up sharing the traffic."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _serve(tmp_path, "--workers", workers, port=port)
        out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert proc.returncode == CODE[ErrorKind.CONFIGURATION]
    assert f"cannot listen on 127.0.0.1:{port}" in text and "listening" not in text and "Traceback" not in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_serve_speaks_https_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    proc = _serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), port=port)
    try:
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = web.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken on that port
            web.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        stop_process(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert f"listening on https://127.0.0.1:{port}" in out and "store: sqlite file" in out


def test_serve_refuses_a_key_that_is_not_one(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    proc = _serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(cert), port=free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == CODE[ErrorKind.CONFIGURATION]
    assert "cannot use the TLS certificate" in out.decode() and "Traceback" not in out.decode()


# -- the README's examples ------------------------------------------------------------------------
def test_the_readme_walkthrough_with_the_shipped_examples(pj: Cli) -> None:
    """examples/pipeline.json registers as the README's pipeline uuid; examples/agave-job.json is a valid callback."""
    registered = pj.ok("pipeline", "register", str(ROOT / "examples" / "pipeline.json"))
    assert registered.strip() == f"registered pipeline {EXAMPLE_PIPELINE_ID} as {EXAMPLE_PIPELINE_UUID}"
    assert EXAMPLE_PIPELINE_UUID in (ROOT / "README.md").read_text()
    job = _create(pj, ROOT / "examples" / "pipeline.json")
    # MSG=... python reactor.py, as the README shows it: the Agave record, the callback's URL parameters
    record = (ROOT / "examples" / "agave-job.json").read_text()
    env = {**pj.env, "MSG": record, "uuid": job["uuid"], "token": job["token"], "status": "RUNNING"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "reactor.py")], env=env, cwd=pj.home, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["status"] == "ok" and result["event"] == "run" and result["state"] == "RUNNING"
    shown = json.loads(pj.ok("--json", "job", "show", job["uuid"]))
    assert shown["history"][-1]["data"]["appId"] == "tacobot-0.1.0u1" and "_links" not in shown["history"][-1]["data"]


def test_cli_input_that_is_not_text_or_too_deep_is_a_clear_refusal(
    pj: Cli, pipeline_file: Path, tmp_path: Path
) -> None:
    pj.ok("pipeline", "register", str(pipeline_file))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    base = ["job", "create", "--pipeline", EXAMPLE_PIPELINE_UUID, "--archive-path", "/p", "--data"]
    for data, words in ((r'{"n": "\ud800"}', r"lone surrogate escape (\ud800)"), (f"@{deep}", "nested too deeply")):
        done = pj(*base, data)
        assert done.returncode == CODE[ErrorKind.BAD_MESSAGE], done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
    assert pj.ok("job", "list").strip() == "no jobs match"
