"""`pipelinejobs serve --workers 2`: several processes on one port, as an operator runs it.

Every event sent by concurrent clients lands exactly once, the metrics add up across the
workers, execution records are readable from any worker once flushed, the watchdog runs
once (in the supervisor), and SIGTERM stops every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelinejobs.server import sessions
from tests import web
from tests.conftest import ROOT, stop_process
from tests.server_fixtures import ACTOR_ID, LiveServer, _wait_until_ready, free_port, new_job, start_server
from tests.test_server import job

CLIENTS, EVENTS = 8, 15


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[LiveServer]:
    env = {"_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "catalog.sqlite3")}
    yield from start_server(tmp_path, "sqlite", env, {"path": tmp_path / "catalog.sqlite3"}, args=("--workers", "2"))


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def counter(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


def test_concurrent_events_through_two_workers_all_land_once(workers_server: LiveServer) -> None:
    server = workers_server
    workers = [pid for pid in children(server.proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, "serve --workers 2 runs two worker processes under the supervisor"
    jobs = [new_job(server) for _ in range(CLIENTS)]

    def drive(uuid_token: tuple[str, str]) -> list[int]:
        uuid, token = uuid_token
        revisions = []
        with web.client(headers=server.auth, timeout=30) as client:
            for i in range(EVENTS):
                body = {"uuid": uuid, "name": "update", "token": token, "data": {"i": i}}
                answer = client.post(server.messages_url, params={"_abaco_synchronous": "true"}, json=body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == "ok", answer.text
                revisions.append(answer.json()["revision"])
        return revisions

    with ThreadPoolExecutor(CLIENTS) as pool:
        for revisions in pool.map(drive, jobs):
            assert revisions == sorted(revisions) and len(set(revisions)) == EVENTS
    for uuid, _ in jobs:
        found = job(server, uuid)
        assert found is not None
        assert [e["name"] for e in found["history"]].count("update") == EVENTS

    # the counters of both workers, summed by prometheus-client's multiprocess collector
    metrics = web.get(f"{server.url}/metrics").text
    assert counter(metrics, "pipelinejobs_events_accepted_total", 'event="update"') == CLIENTS * EVENTS
    assert counter(metrics, "pipelinejobs_events_accepted_total", 'event="create"') == CLIENTS
    # one access line per message, naming its execution and exit code; never the query string
    lines = [line for line in server.read_log().splitlines() if f"POST /actors/v2/{server.actor_id}/messages" in line]
    assert len(lines) == CLIENTS * (EVENTS + 1)
    assert all(re.search(r"messages 200 \(execution \w{13} exit code 0\)$", line) for line in lines), lines[:3]
    assert "_abaco_synchronous" not in server.read_log()


def _tcp_inodes_on_port(port: int, *, state: str) -> list[str]:
    """Socket inodes of /proc/net/tcp entries on 127.0.0.1:``port`` in ``state`` (0A: LISTEN, 01: ESTABLISHED)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == state:
            found.append(fields[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def test_each_worker_listens_on_a_socket_of_its_own_and_connections_spread(workers_server: LiveServer) -> None:
    """A socket per worker (SO_REUSEPORT) besides the shared one: new connections are spread by the kernel,
    not all taken by whichever worker wakes first (what 8 keep-alive clients mostly met before)."""
    server = workers_server
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30  # serve answers on the shared socket while a worker may still be starting
    while len(set(_tcp_inodes_on_port(port, state="0A"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [pid for pid in children(server.proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    listening = set(_tcp_inodes_on_port(port, state="0A"))
    assert len(listening) == 3, "the supervisor's socket and one per worker"
    own = [_socket_inodes(pid) & listening for pid in workers]
    assert all(len(inodes) == 2 for inodes in own), "each worker serves the shared socket and its own"
    assert len(own[0] & own[1]) == 1, "they share only the supervisor's"

    clients = [web.client(timeout=10) for _ in range(24)]
    try:
        for client in clients:
            assert client.get(f"{server.url}/healthz").status_code == 200  # each client keeps its connection
        established = set(_tcp_inodes_on_port(port, state="01"))
        served = [len(_socket_inodes(pid) & established) for pid in workers]
    finally:
        for client in clients:
            client.close()
    assert sum(served) == 24, served
    # all on one worker: under 2 in 10^4 even if the shared socket always gave its third to the same worker
    assert min(served) >= 1, f"24 connections all on one worker: {served}"


def test_an_execution_is_readable_from_every_worker(workers_server: LiveServer) -> None:
    server = workers_server
    uuid, token = new_job(server)
    posted = web.post(server.messages_url, headers=server.auth, json={"uuid": uuid, "name": "run", "token": token})
    execution_id = posted.json()["result"]["executionId"]
    time.sleep(0.3)  # a worker writes its execution records behind, every 50 ms
    for _ in range(8):  # fresh connections: the kernel hands them to either worker
        answer = web.get(f"{server.actor_url()}/executions/{execution_id}", headers=server.auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["status"] == "COMPLETE"


def test_sigterm_stops_the_supervisor_and_every_worker(workers_server: LiveServer) -> None:
    server = workers_server
    processes = [server.proc.pid, *children(server.proc.pid)]
    server.proc.terminate()
    assert server.proc.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in processes if alive(pid)]
    assert "Traceback" not in server.read_log()


def test_a_web_view_sign_in_holds_in_every_worker_with_token_digests_only(tmp_path: Path) -> None:
    """serve knows its token only as a sha256 digest: the supervisor gives its workers one cookie key."""
    token = "digest-only-token-0123456789"
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "catalog.sqlite3"),
        "_REACTOR_SERVE_API_TOKEN_SHA256": hashlib.sha256(token.encode()).hexdigest(),
    }
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--port", str(port), "--actor", ACTOR_ID]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, "--workers", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", "sqlite", log_path, proc, api_token=token)
    try:
        _wait_until_ready(server)
        signed_in = web.post(f"{server.url}/ui/signin", data={"token": token, "next": "/ui/jobs"})
        assert signed_in.status_code == 303, signed_in.text
        cookie = signed_in.cookies[sessions.COOKIE]
        for _ in range(12):  # fresh connections: the kernel hands them to either worker
            page = web.get(f"{server.url}/ui/jobs", cookies={sessions.COOKIE: cookie}, follow_redirects=False)
            assert page.status_code == 200, page.headers.get("location")
        assert token not in server.read_log()
    finally:
        stop_process(proc)
