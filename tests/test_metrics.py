"""`/metrics` and `/readyz` of a live `pipelinejobs serve`, on MongoDB and on SQLite.

The exposition is read with prometheus_client's own parser; the expected numbers
come from the messages and jobs this test sent or wrote.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import web
from tests.conftest import (
    EXAMPLE_PIPELINE_UUID,
    _free_port,
    _wait_for_port,
    authn_for,
    stop_process,
)
from tests.server_fixtures import LiveServer, register_example_pipeline, start_server
from tests.test_read_api import OTHER_PIPELINE, T0, seed

FAST_REFRESH = {"_REACTOR_METRICS_JOBS_REFRESH_SECONDS": "1"}


@contextmanager
def serving(tmp_path: Path, backend: str, env: dict[str, str], options: dict[str, Any]) -> Iterator[LiveServer]:
    running = start_server(tmp_path, backend, env, options)
    try:
        yield next(running)
    finally:
        running.close()


@pytest.fixture(params=["mongodb", "sqlite"])
def fast_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose job counts may be refreshed every second."""
    if request.param == "mongodb":
        uri, name = request.getfixturevalue("mongodb_uri"), request.getfixturevalue("database_name")
        request.getfixturevalue("db")  # drops the database afterwards
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": name, **FAST_REFRESH}
        options: dict[str, Any] = {"uri": uri, "database": name}
    else:
        path = tmp_path / "catalog.sqlite3"
        env, options = {"_REACTOR_STORE_SQLITE_PATH": str(path), **FAST_REFRESH}, {"path": path}
    with serving(tmp_path, request.param, env, options) as server:
        yield server


def scrape(server: LiveServer) -> dict[str, list[Any]]:
    """Samples by metric family name, parsed by prometheus_client."""
    response = web.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, list[Any]], sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    found = [s.value for s in families.get(family, []) if s.name == sample and s.labels == labels]
    return sum(found)


def post(server: LiveServer, message: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = web.post(
        server.messages_url, params={"_abaco_synchronous": "true", **params}, headers=server.auth, json=message
    )
    assert response.status_code == 200, response.text
    return response.json()


AGAVE_RECORD = {
    "id": "2190129393029402138-242ac11b-0001-007",
    "appId": "bbq-brisket-0.5.0",
    "executionSystem": "hpc-tacc-stampede2",
    "owner": "sd2eadm",
    "archivePath": "/products/v2/tacobot",
    "archiveSystem": "data-sd2e-community",
    "status": "RUNNING",
    "inputs": {},
    "parameters": {},
    "retries": 0,
    "localId": "8675309",
    "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/2190129393029402138-242ac11b-0001-007"}},
}


def test_metrics_count_outcomes_jobs_and_requests(fast_server: LiveServer) -> None:
    server = fast_server
    register_example_pipeline(server)
    store = server.open_store()
    try:
        for i in range(3):
            seed(store, i, state="RUNNING")
        seed(store, 10, state="FAILED", pipeline_uuid=OTHER_PIPELINE)
    finally:
        store.close()
    created = post(server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/m", "data": {"m": 1}})
    uuid, token = created["uuid"], created["token"]
    run = {"uuid": uuid, "name": "run", "token": token, "data": {"k": 1}}
    assert post(server, run)["applied"] is True
    assert post(server, {"uuid": uuid, "name": "finish", "token": token})["state"] == "FINISHED"
    late = post(server, AGAVE_RECORD, status="RUNNING", uuid=uuid, token=token)  # a callback the job is past
    assert late.get("stale") is True, late
    refused = post(server, {"uuid": uuid, "name": "run", "token": "0" * 16})
    assert refused["status"] == "error"
    web.get(f"{server.url}/jobs/{uuid}", headers=server.auth)

    expected = {
        ("RUNNING", EXAMPLE_PIPELINE_UUID): 3,
        ("FAILED", OTHER_PIPELINE): 1,
        ("FINISHED", EXAMPLE_PIPELINE_UUID): 1,
    }
    families = until_jobs(server, expected)  # the counters, read again at most every second
    for name, samples in families.items():
        assert name.startswith("pipelinejobs_"), name
        assert all(s.name.startswith("pipelinejobs_") for s in samples)
    assert value(families, "pipelinejobs_events_accepted_total", event="create") == 1
    assert value(families, "pipelinejobs_events_accepted_total", event="run") == 1
    assert value(families, "pipelinejobs_events_accepted_total", event="finish") == 1
    assert value(families, "pipelinejobs_replays_total") == 0  # messages carry no delivery id yet
    assert value(families, "pipelinejobs_stale_callbacks_total") == 1
    assert value(families, "pipelinejobs_refusals_total", kind=refused["kind"]) == 1
    assert value(families, "pipelinejobs_store_errors_total") == 0
    messages = "/actors/v2/{actor_id}/messages"
    assert value(families, "pipelinejobs_http_request_duration_seconds_count", method="POST", route=messages) == 5
    assert value(families, "pipelinejobs_http_requests_total", method="GET", route="/jobs/{uuid}", status="200") == 1
    assert not any(uuid in str(s.labels) for samples in families.values() for s in samples)  # no per-job series

    assert value(families, "pipelinejobs_jobs_snapshot_age_seconds") < 5


def jobs_of(families: dict[str, list[Any]]) -> dict[tuple[str, str], float]:
    return {(s.labels["state"], s.labels["pipeline"]): s.value for s in families.get("pipelinejobs_jobs", [])}


def until_jobs(server: LiveServer, expected: dict[tuple[str, str], float]) -> dict[str, list[Any]]:
    """Scrapes until the job counts (those above 0: a state a job left reads 0) are ``expected``."""
    deadline = time.monotonic() + 15
    while True:
        families = scrape(server)
        counts = {key: n for key, n in jobs_of(families).items() if n}
        if counts == expected or time.monotonic() > deadline:
            assert counts == expected
            return families
        time.sleep(0.3)


# -- readiness -----------------------------------------------------------------------------------
def test_readyz_is_503_when_the_sqlite_file_is_gone(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    ready = web.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "store": "sqlite"}
    Path(server.store_options["path"]).unlink()
    gone = web.get(f"{server.url}/readyz")
    assert gone.status_code == 503
    assert gone.json()["status"] == "unavailable" and "is gone" in gone.json()["reason"]
    assert web.get(f"{server.url}/healthz").status_code == 200  # the process itself is fine


def test_readyz_is_503_when_mongodb_is_killed(tmp_path: Path) -> None:
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    port = _free_port()
    storage = tmp_path / "mongo"
    storage.mkdir()
    mongo = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, mongo)
        uri = f"mongodb://127.0.0.1:{port}"
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": "readyz"}
        with serving(tmp_path, "mongodb", env, {"uri": uri, "database": "readyz"}) as server:
            assert web.get(f"{server.url}/readyz").status_code == 200
            scrape(server)  # the job counts' first snapshot
            mongo.kill()
            mongo.wait()
            started = time.monotonic()
            down = web.get(f"{server.url}/readyz", timeout=30)
            assert time.monotonic() - started < 8  # a short ping, not the 10 s server selection
            assert down.status_code == 503, down.text
            body = down.json()
            assert body["status"] == "unavailable" and body["store"] == "mongodb"
            assert "unreachable" in body["reason"] and "nothing was changed" in body["reason"]
            assert web.get(f"{server.url}/healthz").status_code == 200
            families = scrape(server)  # still answers from the last snapshot
            assert value(families, "pipelinejobs_store_errors_total") >= 1
            # the database comes back before serve stops: its stop (the dispatcher's last pass, the execution
            # records' last flush) would otherwise wait out server selection after server selection
            mongo = subprocess.Popen(
                [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for_port(port, mongo)
            assert web.get(f"{server.url}/readyz", timeout=30).status_code == 200  # and serve sees it again
    finally:
        stop_process(mongo) if mongo.poll() is None else None


def test_observe_counts_a_replayed_delivery_from_the_service(tmp_path: Path) -> None:
    """A repeated delivery (a delivery id messages cannot carry yet) counted from service.handle's real answer."""
    from pipelinejobs import service
    from pipelinejobs.messages import EventMessage
    from pipelinejobs.server.metrics import Metrics
    from pipelinejobs.settings import load_settings
    from pipelinejobs.store.sqlite import SqliteJobStore
    from tests.test_event_log import new_job

    settings = load_settings({"HOME": str(tmp_path)})
    with SqliteJobStore(tmp_path / "s.sqlite3") as store:
        metrics = Metrics(store, 30)
        uuid, token = new_job(store)
        for _ in range(2):
            message = EventMessage(uuid=uuid, name="run", token=token, data={"k": 1}, event_id="delivery-1")
            metrics.observe(service.handle(message, store=store, settings=settings, now=T0))
        families = {f.name: f.samples for f in text_string_to_metric_families(metrics.render().decode())}
    assert value(families, "pipelinejobs_events_accepted_total", event="run") == 1
    assert value(families, "pipelinejobs_replays_total") == 1
