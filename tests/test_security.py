"""Issue 18 as an attacker tries it: each test holds a credential a deployment hands out (none, a READ or
EXECUTE nonce of some served actor, an API token) and checks, against a real `pipelinejobs serve`, what it
must NOT reach.

One serve process per store for the whole module (SQLite, and MongoDB on secantusd-py), started on a store
left world-readable by an earlier version; tests that need another configuration start their own. The
connection limits of the SQLite server are short (1.5 s) so that slow clients are cut off quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from pipelinejobs import identifiers, queries
from pipelinejobs.server import sessions
from pipelinejobs.settings import DEFAULT_ADMIN_KEY
from pipelinejobs.store.registry import MongoRegistry, SqliteRegistry
from pipelinejobs.store.sqlite import SqliteJobStore
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT, Reactor, authn_for
from tests.notify_fixtures import Receiver
from tests.server_fixtures import (
    ACTOR_ID,
    OTHER_ACTOR_ID,
    LiveServer,
    free_port,
    register_example_pipeline,
    start_server,
)

HEAD_TIMEOUT = 1.5  # the SQLite server's head and body deadlines, seconds
CONCURRENCY = 10  # and its limit_concurrency
PAGE_BUDGET = 4 * 1024 * 1024  # what an events page may weigh (issue 18: 4 MiB)
NOTIFY_FAST = {
    "_REACTOR_NOTIFICATIONS_EVERY_SECONDS": "0.2",
    "_REACTOR_NOTIFICATIONS_REFRESH_SECONDS": "0.3",
    "_REACTOR_NOTIFICATIONS_BACKOFF_BASE_SECONDS": "0.05",
    "_REACTOR_NOTIFICATIONS_BACKOFF_CAP_SECONDS": "0.1",
    # the outbound address policy (issue 18, finding 4) refuses loopback by default; the receiver is on it
    "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
}


# -- one server per store for the module ---------------------------------------------------------
def _world_readable_store(directory: Path) -> Path:
    """A store and registry as an earlier version left them: files 0644 in a 0755 directory."""
    directory.mkdir(mode=0o755)
    path = directory / "catalog.sqlite3"
    SqliteJobStore(path).close()
    registry = SqliteRegistry(directory / "catalog.abaco.sqlite")
    registry.close()
    for entry in directory.iterdir():
        entry.chmod(0o644)
    directory.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("serve-sqlite")
    path = _world_readable_store(home / "store")
    env = {
        "_REACTOR_STORE_SQLITE_PATH": str(path),
        "_REACTOR_SERVE_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "_REACTOR_SERVE_BODY_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "_REACTOR_SERVE_LIMIT_CONCURRENCY": str(CONCURRENCY),
        **NOTIFY_FAST,
    }
    yield from start_server(home, "sqlite", env, {"path": path, "env": env}, process=True)


@pytest.fixture(scope="module")
def mongo_server(
    tmp_path_factory: pytest.TempPathFactory, mongodb_uri: str, mongo_client: pymongo.MongoClient
) -> Iterator[LiveServer]:
    name = "t_" + uuidlib.uuid4().hex[:12]
    env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": name, **NOTIFY_FAST}
    try:
        yield from start_server(
            tmp_path_factory.mktemp("serve-mongo"),
            "mongodb",
            env,
            {"uri": mongodb_uri, "database": name, "env": env},
            process=True,
        )
    finally:
        mongo_client.drop_database(name)


@pytest.fixture(params=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue("mongo_server" if request.param == "mongodb" else "sqlite_server")


def create_job(server: LiveServer, **data: Any) -> dict[str, Any]:
    """A job created by the operator (API token), as a pipeline's launcher does; the answer has its token."""
    register_example_pipeline(server)
    create = {
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "archive_path": "/products/sec",
        "data": {"n": uuidlib.uuid4().hex},
    }
    create["data"].update(data)
    answer = post(server, create, auth=server.auth)
    assert answer["status"] == "ok" and answer["created"] is True and answer["token"], answer
    return answer


def post(
    server: LiveServer,
    message: dict[str, Any],
    *,
    actor: str | None = None,
    auth: dict[str, str] | None = None,
    **params: str,
) -> dict[str, Any]:
    response = web.post(
        f"{server.actor_url(actor)}/messages",
        params={"_abaco_synchronous": "true", **params},
        headers=auth or {},
        json=message,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def make_nonce(server: LiveServer, level: str, actor: str | None = None) -> str:
    response = web.post(f"{server.actor_url(actor)}/nonces", headers=server.auth, json={"level": level, "maxUses": -1})
    assert response.status_code == 200, response.text
    return response.json()["result"]["id"]


def read_job(server: LiveServer, uuid: str) -> dict[str, Any]:
    response = web.get(f"{server.url}/jobs/{uuid}", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json()["result"]


# -- finding 1: a callback nonce never yields a job's token -----------------------------------------
def test_a_callback_nonce_cannot_take_a_job_over(server: LiveServer) -> None:
    """Read a job with a READ nonce, repeat its create with another actor's EXECUTE nonce: no token, no control."""
    job = create_job(server)
    uuid, token = job["uuid"], job["token"]
    reader, executor = make_nonce(server, "READ"), make_nonce(server, "EXECUTE", OTHER_ACTOR_ID)

    seen = web.get(f"{server.url}/jobs/{uuid}", params={"x-nonce": reader})
    assert seen.status_code == 200 and token not in seen.text
    shown = seen.json()["result"]
    replay = {k: shown[k] for k in ("pipeline_uuid", "archive_path", "data", "child_of")}
    answer = post(server, replay, actor=OTHER_ACTOR_ID, **{"x-nonce": executor})
    assert (answer["status"], answer["uuid"], answer["created"]) == ("ok", uuid, False)
    assert "token" not in answer and token not in json.dumps(answer)

    for attempt in (
        {"uuid": uuid, "name": "fail"},
        {"uuid": uuid, "name": "fail", "token": "0" * 16},
        {"uuid": uuid, "action": "delete", "force": True},
        {"uuid": uuid, "action": "delete", "force": True, "token": "0" * 16},
    ):
        refused = post(server, attempt, actor=OTHER_ACTOR_ID, **{"x-nonce": executor})
        assert refused["status"] == "error" and refused["kind"] == "unauthorized", (attempt, refused)
    after = read_job(server, uuid)
    assert after["state"] == "CREATED" and after.get("_visible", True) is not False
    executions = web.get(f"{server.actor_url(OTHER_ACTOR_ID)}/executions", params={"x-nonce": executor})
    for execution in executions.json()["result"]["executions"]:
        logs = web.get(f"{server.actor_url(OTHER_ACTOR_ID)}/executions/{execution['id']}/logs", headers=server.auth)
        assert token not in logs.text


# -- finding 5: slow clients are cut off -----------------------------------------------------------
def _connect(server: LiveServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT + 5)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the server sends before it closes the connection (a timeout here fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_half_a_request_head_is_cut_off_and_the_server_keeps_answering(sqlite_server: LiveServer) -> None:
    held = [_connect(sqlite_server) for _ in range(60)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        for sock in held:
            assert _answer(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < HEAD_TIMEOUT + 4
    finally:
        for sock in held:
            sock.close()
    assert web.get(f"{sqlite_server.url}/healthz").status_code == 200


def test_a_body_that_stops_arriving_is_cut_off_and_runs_nothing(sqlite_server: LiveServer) -> None:
    before = web.get(f"{sqlite_server.actor_url()}/executions", headers=sqlite_server.auth).json()["result"]
    with _connect(sqlite_server) as sock:
        sock.sendall(
            b"POST /actors/v2/" + ACTOR_ID.encode() + b"/messages HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + sqlite_server.api_token.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"uuid": '
        )
        assert _answer(sock).startswith(b"HTTP/1.1 408 ")
    after = web.get(f"{sqlite_server.actor_url()}/executions", headers=sqlite_server.auth).json()["result"]
    assert after["totalExecutions"] == before["totalExecutions"]
    assert "Traceback" not in sqlite_server.read_log()


def test_a_head_without_end_is_refused_before_it_fills_memory(sqlite_server: LiveServer) -> None:
    with _connect(sqlite_server) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(40):  # 2.6 MB of one header, unless the server hangs up first
                sock.sendall(b"a" * 65536)
            answer = _answer(sock)
        except (ConnectionResetError, BrokenPipeError):  # it closed with our bytes unread: the kernel resets
            answer = b"reset"
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"reset"
    assert web.get(f"{sqlite_server.url}/healthz").status_code == 200


def test_connections_past_the_limit_get_503_until_slow_ones_are_cut_off(sqlite_server: LiveServer) -> None:
    idle = [_connect(sqlite_server) for _ in range(CONCURRENCY - 1)]
    try:
        time.sleep(0.3)  # accepted by now
        assert web.get(f"{sqlite_server.url}/healthz").status_code == 503
        for sock in idle:
            assert _answer(sock).startswith(b"HTTP/1.1 408 ")  # nothing sent: cut off at the head deadline
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert web.get(f"{sqlite_server.url}/healthz").status_code == 200


# -- finding 6: the Host header never reaches a stored link ------------------------------------------
def test_a_forged_host_header_reaches_no_stored_link(server: LiveServer) -> None:
    evil = {**server.auth, "Host": "evil.example"}
    register_example_pipeline(server)
    create = {
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "archive_path": "/products/host",
        "data": {"n": uuidlib.uuid4().hex},
    }
    sync = post(server, create, auth=evil)
    queued = web.post(
        f"{server.messages_url}", headers=evil, json={"uuid": sync["uuid"], "name": "run", "token": sync["token"]}
    )
    nonce = web.post(f"{server.actor_url()}/nonces", headers=evil, json={"level": "READ"})
    execution = web.get(f"{server.actor_url()}/executions/{queued.json()['result']['executionId']}", headers=evil)
    job = read_job(server, sync["uuid"])
    stored = [json.dumps(job), queued.text, nonce.text, execution.text]
    for text in stored:
        assert "evil.example" not in text
    assert job["agent"] == f"{server.url}/actors/v2/{ACTOR_ID}"  # the address serve listens on
    assert job["task"].startswith(f"{server.url}/actors/v2/{ACTOR_ID}/executions/")
    assert nonce.json()["result"]["apiServer"] == server.url


def test_serving_beyond_loopback_needs_the_public_address(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "s" / "c.sqlite3"),
    }
    proc = subprocess.Popen(
        [*command, "--actor", ACTOR_ID], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 9, output
    assert "--api-server" in output and "Traceback" not in output


# -- finding 7: secrets at rest are the owner's -----------------------------------------------------
def _modes(directory: Path) -> dict[str, int]:
    return {entry.name: stat.S_IMODE(entry.stat().st_mode) for entry in directory.iterdir()}


def test_store_files_are_private_existing_and_new(sqlite_server: LiveServer, tmp_path: Path) -> None:
    create_job(sqlite_server)  # the server writes its store and its registry (nonces, executions)
    make_nonce(sqlite_server, "READ")
    directory = Path(sqlite_server.store_options["path"]).parent
    found = _modes(directory)
    assert {"catalog.sqlite3", "catalog.sqlite3-wal", "catalog.abaco.sqlite", "catalog.sqlite3-lock"} <= set(found)
    assert found == dict.fromkeys(found, 0o600), found  # 0644 before the server opened them
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    fresh = tmp_path / "fresh" / "deeper"  # new: made private from the start, whatever the umask
    old_umask = os.umask(0o022)
    try:
        SqliteJobStore(fresh / "jobs.sqlite3").close()
        SqliteRegistry(fresh / "jobs.abaco.sqlite").close()
    finally:
        os.umask(old_umask)
    assert set(_modes(fresh).values()) == {0o600} and stat.S_IMODE(fresh.stat().st_mode) == 0o700

    shared = tmp_path / "shared"  # a directory holding other things keeps its mode; the store's files do not
    shared.mkdir(mode=0o755)
    (shared / "notes.txt").write_text("someone else's")
    SqliteJobStore(shared / "jobs.sqlite3").close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "jobs.sqlite3").stat().st_mode) == 0o600


# -- finding 8: the smaller points ----------------------------------------------------------------
def test_an_events_page_stays_under_its_byte_budget_and_pages_on(server: LiveServer) -> None:
    job = create_job(server)
    uuid, token = job["uuid"], job["token"]
    blob = "x" * 200_000
    for n in range(24):  # 24 x 200 KB: 4.8 MB of events, past the 4 MiB a page may hold
        sent = post(
            server, {"uuid": uuid, "name": "update", "token": token, "data": {"n": n, "blob": blob}}, auth=server.auth
        )
        assert sent["status"] == "ok", sent
    seqs: list[int] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "1000", **({"after": after} if after else {})}
        response = web.get(f"{server.url}/jobs/{uuid}/events", params=params, headers=server.auth, timeout=30)
        assert response.status_code == 200
        assert len(response.content) <= PAGE_BUDGET + 4096
        page = response.json()["result"]
        assert page["events"]
        seqs += [event["seq"] for event in page["events"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert pages >= 2 and seqs == sorted(set(seqs)) and len(seqs) == 25  # the create and 24 updates, once each
    store = server.open_store()
    try:  # however small the budget, a page holds one event and says where to go on
        tiny = queries.job_events(store, uuid, limit=1000, max_bytes=10)
    finally:
        store.close()
    assert tiny is not None and len(tiny["events"]) == 1 and tiny["next"] == tiny["events"][0]["cursor"]


def _sign_in(server: LiveServer) -> httpx.Response:
    answer = web.post(f"{server.url}/ui/signin", data={"token": server.api_token, "next": "/ui/jobs"})
    assert answer.status_code == 303, answer.text
    return answer


def _cookie(answer: httpx.Response) -> str:
    return answer.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def _with_cookie(server: LiveServer, value: str) -> int:
    return web.get(f"{server.url}/ui/jobs", headers={"Cookie": f"{sessions.COOKIE}={value}"}).status_code


def test_behind_a_tls_proxy_the_cookie_is_secure_and_hsts_is_sent(sqlite_server: LiveServer, tmp_path: Path) -> None:
    """The proxy terminates TLS and sends no X-Forwarded-Proto: serve still knows from api_server."""
    assert "strict-transport-security" not in web.get(f"{sqlite_server.url}/healthz").headers  # plain HTTP
    store = tmp_path / "store" / "catalog.sqlite3"
    env = {"_REACTOR_STORE_SQLITE_PATH": str(store), "_REACTOR_SERVE_API_SERVER": "https://jobs.example.org/"}
    running = start_server(tmp_path, "sqlite", env, {"path": store}, process=True)
    server = next(running)
    try:
        answer = _sign_in(server)
        attributes = {part.strip().lower() for part in answer.headers["set-cookie"].split(";")[1:]}
        assert "secure" in attributes
        for response in (answer, web.get(f"{server.url}/healthz"), web.get(f"{server.url}/ui/signin")):
            assert response.headers["strict-transport-security"].startswith("max-age=")
        job = create_job(server)
        assert read_job(server, job["uuid"])["agent"] == f"https://jobs.example.org/actors/v2/{ACTOR_ID}"
    finally:
        running.close()


def test_a_read_nonce_viewer_sees_no_delivery_details(server: LiveServer) -> None:
    receiver = Receiver(fail_first=1, fail_status=502).start()
    try:
        job = create_job(server)
        hook = receiver.url + "/team-secret-path"
        subscribed = web.post(
            f"{server.url}/subscriptions", headers=server.auth, json={"job": job["uuid"], "url": hook}
        )
        assert subscribed.status_code == 200, subscribed.text
        post(server, {"uuid": job["uuid"], "name": "run", "token": job["token"]}, auth=server.auth)
        receiver.wait_for(2)
        deadline = time.monotonic() + 30
        while len(web.get(f"{server.url}/jobs/{job['uuid']}/deliveries", headers=server.auth).json()["result"]) < 2:
            assert time.monotonic() < deadline, "no delivery records"
            time.sleep(0.1)
        operator = web.get(f"{server.url}/ui/jobs/{job['uuid']}", headers=server.auth)
        assert operator.status_code == 200 and "team-secret-path" in operator.text and ">502<" in operator.text
        nonce = make_nonce(server, "READ")
        assert web.get(f"{server.url}/jobs/{job['uuid']}/deliveries", params={"x-nonce": nonce}).status_code == 401
        viewer = web.get(f"{server.url}/ui/jobs/{job['uuid']}", params={"x-nonce": nonce})
        assert viewer.status_code == 200 and job["uuid"] in viewer.text
        port = receiver.url.split(":")[2].split("/")[0]
        assert "team-secret-path" not in viewer.text and f":{port}" not in viewer.text
        assert "Notification deliveries" not in viewer.text
    finally:
        receiver.stop()


def test_signing_out_holds_in_other_processes_and_after_a_restart(server: LiveServer, tmp_path: Path) -> None:
    signed_out, kept = _cookie(_sign_in(server)), _cookie(_sign_in(server))
    assert _with_cookie(server, signed_out) == 200
    out = web.post(f"{server.url}/ui/signout", headers={"Cookie": f"{sessions.COOKIE}={signed_out}"})
    assert out.status_code == 303
    assert _with_cookie(server, signed_out) == 303  # the thief's copy of the cookie, here...
    options = server.store_options
    restarted = start_server(
        tmp_path, server.backend, options["env"], options, process=True
    )  # ...and in a process started after
    other = next(restarted)
    try:
        assert _with_cookie(other, kept) == 200  # same tokens, same key: its cookies hold there
        assert _with_cookie(other, signed_out) == 303
    finally:
        restarted.close()


@pytest.mark.parametrize("backend", ["mongodb", "sqlite"])
def test_revocations_expire_with_their_cookie(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "mongodb":
        client: pymongo.MongoClient = request.getfixturevalue("mongo_client")
        name = "t_" + uuidlib.uuid4().hex[:12]
        registry: Any = MongoRegistry(client[name])
    else:
        registry = SqliteRegistry(tmp_path / "r" / "catalog.abaco.sqlite")
    try:
        registry.ensure_indexes()
        now = datetime(2030, 1, 1, tzinfo=timezone.utc)
        registry.revoke_session("old", now + timedelta(hours=1), now)
        registry.revoke_session("live", now + timedelta(hours=12), now)
        assert registry.session_revoked("old", now) and not registry.session_revoked("other", now)
        later = now + timedelta(hours=2)
        assert not registry.session_revoked("old", later) and registry.session_revoked("live", later)
        registry.revoke_session("new", later + timedelta(hours=1), later)  # forgets the ones past their expiry
        if backend == "mongodb":
            left = sorted(d["_id"] for d in client[name]["ui_revoked_sessions"].find())
        else:
            import sqlite3

            with sqlite3.connect(registry.path) as conn:
                left = sorted(r[0] for r in conn.execute("SELECT id FROM ui_revoked_sessions"))
        assert left == ["live", "new"]
    finally:
        registry.close()
        if backend == "mongodb":
            client.drop_database(name)


def test_under_abaco_url_parameters_cannot_set_the_admin_token_lifetime(
    reactor: Reactor, example_pipeline: dict, tmp_path: Path
) -> None:
    """A lifetime of 3601 instead of 3600 would make an admin token that leaked ~5.7 days ago valid again."""
    secret = "admin-secret-for-tests"
    created = reactor.run({"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/x", "data": {"n": 1}})
    uuid = created.result["uuid"]
    now = int(time.time())
    window = now // 3601  # the window the attacker's lifetime puts "now" in
    leaked = identifiers.admin_token(secret, DEFAULT_ADMIN_KEY, 3600, window * 3600)  # valid ~5.7 days ago
    assert leaked != identifiers.admin_token(secret, DEFAULT_ADMIN_KEY, 3600, now)
    pinned = _pinned_reactor(tmp_path, secret, lifetime=7200)
    base = {"CATALOG_ADMIN_TOKEN_SECRET": secret}  # the actor's own environment
    attack = reactor.env(
        {"uuid": uuid, "name": "reset", "token": leaked}, extra={**base, "CATALOG_ADMIN_TOKEN_LIFETIME": "3601"}
    )
    refused = subprocess.run([sys.executable, str(pinned)], env=attack, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and json.loads(refused.stdout.splitlines()[-1])["kind"] == "unauthorized"
    # the lifetime in config.yml is the one that counts
    admin = identifiers.admin_token(secret, DEFAULT_ADMIN_KEY, 7200, time.time())
    env = reactor.env(
        {"uuid": uuid, "name": "reset", "token": admin}, extra={**base, "CATALOG_ADMIN_TOKEN_LIFETIME": "60"}
    )
    accepted = subprocess.run([sys.executable, str(pinned)], env=env, capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert json.loads(accepted.stdout.splitlines()[-1])["state"] == "RESET"


def _pinned_reactor(directory: Path, secret: str, *, lifetime: int) -> Path:
    """reactor.py beside a config.yml that pins the admin secret and sets the admin token lifetime."""
    shutil.copy(ROOT / "reactor.py", directory / "reactor.py")
    text = (ROOT / "config.yml").read_text()
    text = text.replace("secret_sha256: ~", f"secret_sha256: {hashlib.sha256(secret.encode()).hexdigest()}")
    text = text.replace("token_lifetime: ~", f"token_lifetime: {lifetime}")
    (directory / "config.yml").write_text(text)
    return directory / "reactor.py"


# -- point 8: SECURITY.md names every route ---------------------------------------------------------
def test_security_md_tables_every_route() -> None:
    from pipelinejobs.server.app import _routes

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    tabled = {path for row in rows for path in re.findall(r"`(?:[A-Z]+(?:/[A-Z]+)* )?(/[^`]*)`", row.split("|")[1])}
    for route in _routes():
        path = re.sub(r"^/v3(?=/(jobs|pipelines|schemas|state-machine|subscriptions))", "", route.path)
        path = path.replace("/v3/actors/{actor_id}", "/actors/v2/{actor_id}")
        assert path in tabled, f"SECURITY.md's table has no row for {route.path}"
