"""Notifications end to end: `pipelinejobs serve` processes, a real HTTP receiver, SIGKILL and restart.

The dispatcher runs as serve runs it (a thread in the process); the receiver checks
nothing itself, the tests verify what it got with the Standard Webhooks reference library.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web
from tests.conftest import (
    EXAMPLE_PIPELINE_UUID,
    authn_for,
)
from tests.notify_fixtures import Receiver, verify_with_library
from tests.server_fixtures import LiveServer, new_job, start_server

FAST = {
    "_REACTOR_NOTIFICATIONS_EVERY_SECONDS": "0.2",
    "_REACTOR_NOTIFICATIONS_BACKOFF_BASE_SECONDS": "0.05",
    "_REACTOR_NOTIFICATIONS_BACKOFF_CAP_SECONDS": "0.1",
    "_REACTOR_NOTIFICATIONS_LEASE_SECONDS": "2",
    "_REACTOR_NOTIFICATIONS_TIMEOUT_SECONDS": "30",
    "_REACTOR_NOTIFICATIONS_REFRESH_SECONDS": "0.5",
    "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS": "127.0.0.0/8",  # the receivers listen on this host (issue 18)
}


class Serve:
    """Start, SIGKILL and restart `pipelinejobs serve` on one store, with ``settings`` (notification
    timings) in its environment. A process by default: kill() sends it SIGKILL, as a crash would end it."""

    def __init__(
        self,
        tmp_path: Path,
        backend: str,
        env: dict[str, str],
        options: dict[str, Any],
        *,
        settings: dict[str, str] = FAST,
        process: bool = True,
    ) -> None:
        self.tmp_path, self.backend, self.env, self.options = tmp_path, backend, env, options
        self.settings, self.process = settings, process
        self._running: Iterator[LiveServer] | None = None
        self.server: LiveServer | None = None

    def start(self, **env: str) -> LiveServer:
        """Start serve; ``env``: more variables for this start only (e.g. an allowance)."""
        full = {**self.env, **self.settings, **env}
        self._running = start_server(self.tmp_path, self.backend, full, self.options, process=self.process)
        self.server = next(self._running)
        return self.server

    def kill(self) -> None:
        assert self.server is not None and self.server.proc is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(10)
        self.stop()

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()  # runs start_server's finally: stops the process if it still runs
            self._running = None


def serve_on(request: pytest.FixtureRequest, tmp_path: Path, **options: Any) -> Serve:
    """A :class:`Serve` on the store the test is parametrised with (a fresh database or SQLite file)."""
    if request.param == "mongodb":
        uri, name = request.getfixturevalue("mongodb_uri"), request.getfixturevalue("database_name")
        request.getfixturevalue("db")
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": name}
        return Serve(tmp_path, "mongodb", env, {"uri": uri, "database": name}, **options)
    path = tmp_path / "catalog.sqlite3"
    return Serve(tmp_path, "sqlite", {"_REACTOR_STORE_SQLITE_PATH": str(path)}, {"path": path}, **options)


@pytest.fixture(params=["mongodb", "sqlite"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serve]:
    runner = serve_on(request, tmp_path)
    yield runner
    runner.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def event(server: LiveServer, uuid: str, token: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"uuid": uuid, "name": name, "token": token, **extra}
    response = web.post(server.messages_url, params={"_abaco_synchronous": "true"}, headers=server.auth, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def subscribe(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = web.post(f"{server.url}/subscriptions", headers=server.auth, json=body)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def deliveries(server: LiveServer, path: str) -> list[dict[str, Any]]:
    response = web.get(f"{server.url}{path}", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def wait_until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_serve_signs_delivers_records_and_masks(serve: Serve, receiver: Receiver) -> None:
    server = serve.start()
    uuid, token = new_job(server)
    # the API takes bearer tokens only: a nonce, or nothing, is refused and nothing is created
    nonce = web.post(f"{server.actor_url()}/nonces", headers=server.auth, json={"level": "UPDATE"}).json()
    refused = web.post(
        f"{server.url}/subscriptions", params={"x-nonce": nonce["result"]["id"]}, json={"job": uuid, "url": "http://x/"}
    )
    assert refused.status_code == 401 and web.get(f"{server.url}/subscriptions").status_code == 401
    bad = web.post(f"{server.url}/subscriptions", headers=server.auth, json={"job": uuid, "url": "ftp://x/"})
    assert bad.status_code == 400 and "http" in bad.json()["message"]
    sub = subscribe(server, job=uuid, url=receiver.url + "?key=k3y-in-query", events=["finish"])
    assert sub["secret"].startswith("whsec_")
    listed = deliveries(server, "/subscriptions")
    assert listed[0]["secret"] == "*****" and "k3y" not in str(listed)
    event(server, uuid, token, "run")
    finished = event(server, uuid, token, "finish", data={"out": 1})
    got = receiver.wait_for(1)[0]
    body = verify_with_library(sub["secret"], got)
    assert (body["job_uuid"], body["event"], body["state"], body["data"]) == (uuid, "finish", "FINISHED", {"out": 1})
    assert body["event_uuid"] == finished["event_uuid"] and token not in got.body.decode()
    rows = wait_until(lambda: deliveries(server, f"/jobs/{uuid}/deliveries"))
    assert [(r["outcome"], r["status"], r["webhook_id"]) for r in rows] == [
        ("delivered", 204, got.headers["webhook-id"])
    ]
    assert deliveries(server, f"/subscriptions/{sub['id']}/deliveries") == rows
    tested = web.post(f"{server.url}/subscriptions/{sub['id']}/test", headers=server.auth).json()["result"]
    assert (
        tested["ok"] is True
        and verify_with_library(sub["secret"], receiver.wait_for(2)[1])["type"] == "pipelinejob.test"
    )
    assert web.delete(f"{server.url}/subscriptions/{sub['id']}", headers=server.auth).status_code == 200
    assert web.delete(f"{server.url}/subscriptions/{sub['id']}", headers=server.auth).status_code == 404
    log = server.read_log()
    assert token not in log and sub["secret"] not in log and "k3y-in-query" not in log


def test_a_delivery_cut_by_sigkill_is_delivered_after_restart_with_the_same_id(serve: Serve) -> None:
    receiver = Receiver(hang_first=True).start()
    try:
        server = serve.start()
        uuid, token = new_job(server)
        sub = subscribe(server, job=uuid, url=receiver.url)
        event(server, uuid, token, "run")
        first = receiver.wait_for(1)[0]  # the receiver holds the first attempt open...
        serve.kill()  # ...and serve dies mid-delivery
        receiver.release()
        server = serve.start()  # the lease (2 s here) runs out and the restarted dispatcher delivers
        second = receiver.wait_for(2, timeout=60)[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert verify_with_library(sub["secret"], second) == first.json()
        rows = wait_until(lambda: deliveries(server, f"/jobs/{uuid}/deliveries"))
        assert [r["outcome"] for r in rows] == ["delivered"] and rows[0]["webhook_id"] == first.headers["webhook-id"]
    finally:
        receiver.stop()


def test_a_receiver_failing_twice_sees_three_attempts_through_serve(serve: Serve) -> None:
    receiver = Receiver(fail_first=2).start()
    try:
        server = serve.start()
        uuid, token = new_job(server)
        subscribe(server, job=uuid, url=receiver.url)
        event(server, uuid, token, "run")
        got = receiver.wait_for(3)
        assert len({r.headers["webhook-id"] for r in got}) == 1
        rows = wait_until(lambda: [r for r in deliveries(server, f"/jobs/{uuid}/deliveries") if r["attempt"] == 3])
        rows = deliveries(server, f"/jobs/{uuid}/deliveries")
        assert [(r["attempt"], r["outcome"], r["status"]) for r in reversed(rows)] == [
            (1, "failed", 500),
            (2, "failed", 500),
            (3, "delivered", 204),
        ]
        # the web view's job page lists the same attempts, newest first
        page = web.get(f"{server.url}/ui/jobs/{uuid}", headers=server.auth)
        assert page.status_code == 200, page.text
        section = page.text.split('id="deliveries"', 1)[1].split("</section>", 1)[0]
        cells = re.findall(
            r"<tr><td>.*?</td><td>(\w+)</td><td[^>]*>([^<]*)</td><td>(\d)</td><td>(\w+)</td><td>(\d+)</td>", section
        )
        assert cells == [
            ("run", receiver.url, "3", "delivered", "204"),
            ("run", receiver.url, "2", "failed", "500"),
            ("run", receiver.url, "1", "failed", "500"),
        ]
    finally:
        receiver.stop()


def test_serve_can_be_the_next_actor(serve: Serve) -> None:
    """A pipeline's `finish` messages an actor: here serve's second actor id, through its nonce."""
    server = serve.start()
    uuid, token = new_job(server)
    made = web.post(f"{server.actor_url(server.other_actor_id)}/nonces", headers=server.auth, json={})
    nonce = made.json()["result"]["id"]
    actor = f"{server.actor_url(server.other_actor_id)}/messages"
    sub = subscribe(server, pipeline=EXAMPLE_PIPELINE_UUID, actor=actor, nonce=nonce, states=["FINISHED"])
    assert sub["nonce"] == "*****"
    event(server, uuid, token, "run")
    event(server, uuid, token, "finish")

    def executions() -> list[dict[str, Any]]:
        url = f"{server.actor_url(server.other_actor_id)}/executions"
        return web.get(url, headers=server.auth).json()["result"]["executions"]

    ran = wait_until(executions)
    assert len(ran) == 1
    rows = wait_until(lambda: deliveries(server, f"/jobs/{uuid}/deliveries"))
    assert [(r["outcome"], r["status"]) for r in rows] == [("delivered", 200)]
    assert nonce not in server.read_log() and nonce not in str(rows)


def test_under_workers_an_event_wakes_the_supervisors_dispatcher(tmp_path: Path, receiver: Receiver) -> None:
    """`serve --workers 2`: the dispatcher runs in the supervisor, the events arrive in the workers. A worker's
    outbox item wakes it at once (a datagram), so notifications do not wait for its poll, set to a minute here."""
    path = tmp_path / "catalog.sqlite3"
    env = {"_REACTOR_STORE_SQLITE_PATH": str(path), **FAST, "_REACTOR_NOTIFICATIONS_EVERY_SECONDS": "60"}
    running = start_server(tmp_path, "sqlite", env, {"path": path}, args=("--workers", "2"))
    server = next(running)
    try:
        uuid, token = new_job(server)
        sub = subscribe(server, job=uuid, url=receiver.url, events=["run", "update"])
        time.sleep(1.5)  # the supervisor's dispatcher and the other worker reread the list every 0.5 s (FAST)
        event(server, uuid, token, "run")
        for i in range(5):
            event(server, uuid, token, "update", data={"i": i})
        got = receiver.wait_for(6, timeout=20)  # the poll alone would take up to 60 s
        events = sorted(verify_with_library(sub["secret"], one)["event"] for one in got)
        assert events == ["run", "update", "update", "update", "update", "update"]
    finally:
        running.close()
