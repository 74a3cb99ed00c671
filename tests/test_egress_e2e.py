"""The outbound policy as an API-token holder meets it: `pipelinejobs serve` on both stores (issue 18, finding 4).

Subscribing cloud metadata, private, unique-local, a decimal-encoded address, a metadata host name
or a loopback port is a clear 400 that stores nothing. A subscription made while loopback was
allowed is refused at send time once serve restarts without the allowance: the receiver hears
nothing and the delivery record says why. And ``subscriptions/{id}/test`` answers a refused
address in the same words whether or not something listens on the port: it scans nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import web
from tests.notify_fixtures import Receiver
from tests.server_fixtures import LiveServer, free_port, new_job
from tests.test_notify_e2e import FAST, Serve, deliveries, event, serve_on, subscribe, wait_until

ALLOWANCE = "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS"
QUICK = {name: value for name, value in FAST.items() if name != ALLOWANCE}  # nothing allowed unless a test says so
INSIDE = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/",
    "http://[fd00::1]/",
    "http://2852039166/",
    "http://metadata.google.internal/",
    "http://127.0.0.1:6379/",
]


@pytest.fixture(params=["mongodb", "sqlite"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serve]:
    """serve's app in this process, with nothing allowed unless a start says so."""
    runner = serve_on(request, tmp_path, settings=QUICK, process=False)
    yield runner
    runner.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def _stored_subscriptions(server: LiveServer) -> list[Any]:
    store = server.open_store()
    try:
        return list(store.list_subscriptions())
    finally:
        store.close()


def test_subscribing_inside_addresses_is_a_clear_400_that_stores_nothing(serve: Serve) -> None:
    server = serve.start()
    uuid, _ = new_job(server)
    bodies: list[dict[str, Any]] = [{"job": uuid, "url": url} for url in INSIDE]
    bodies += [
        {"job": uuid, "actor": "http://169.254.169.254/actors/v2/x/messages", "nonce": "SD2E_n0nce-value"},
        {"job": uuid, "actor": "pjmanager0009", "api_server": "http://10.0.0.5", "nonce": "SD2E_n0nce-value"},
    ]
    for body in bodies:
        response = web.post(f"{server.url}/subscriptions", headers=server.auth, json=body)
        answer = response.json()
        assert response.status_code == 400 and answer["status"] == "error", (body, response.text)
        assert "refused by policy" in answer["message"] and "n0nce" not in response.text, (body, answer)
    assert deliveries(server, "/subscriptions") == [] and _stored_subscriptions(server) == []
    assert "Traceback" not in server.read_log()


def test_a_subscription_allowed_once_is_refused_at_send_time_after_a_restart_without_the_allowance(
    serve: Serve, receiver: Receiver
) -> None:
    server = serve.start(**{ALLOWANCE: "127.0.0.0/8"})
    uuid, token = new_job(server)
    sub = subscribe(server, job=uuid, url=receiver.url)
    closed = subscribe(server, job=uuid, url=f"http://127.0.0.1:{free_port()}/hook", events=["finish"])
    tested = web.post(f"{server.url}/subscriptions/{sub['id']}/test", headers=server.auth).json()["result"]
    assert tested["ok"] is True and len(receiver.wait_for(1)) == 1  # the receiver does answer
    serve.stop()

    server = serve.start()  # no allowance now
    event(server, uuid, token, "run")
    rows = wait_until(
        lambda: [r for r in deliveries(server, f"/subscriptions/{sub['id']}/deliveries") if r["outcome"] != "test"]
    )
    [row] = rows
    assert row["outcome"] == "refused" and row["status"] is None
    assert row["error"] == "refused by policy: 127.0.0.1 is a loopback address; see notifications.allowed_networks"
    assert len(receiver.received) == 1  # only the test sent while it was allowed

    answers = []
    for subscription in (sub, closed):  # something listens on the first port, nothing on the second
        response = web.post(f"{server.url}/subscriptions/{subscription['id']}/test", headers=server.auth)
        assert response.status_code == 200, response.text
        answer = response.json()
        answers.append((answer["message"], {k: v for k, v in answer["result"].items() if k != "webhook_id"}))
    assert answers[0] == answers[1], answers
    message, result = answers[0]
    assert message == "Test notification refused by policy." and result["outcome"] == "refused by policy"
    assert len(receiver.received) == 1
