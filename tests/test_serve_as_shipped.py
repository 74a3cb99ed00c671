"""`pipelinejobs serve` started as the README's first session starts it: no --actor, the shipped settings.

One serve per store for the whole module. It answers for its default actor; its messages endpoint has
Abaco's hypermedia; its /metrics counts jobs, and a change of state, within seconds (issue 20).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, authn_for
from tests.server_fixtures import LiveServer, register_example_pipeline, start_server
from tests.test_metrics import jobs_of, scrape

P = EXAMPLE_PIPELINE_UUID
WITHIN = 5.0  # seconds a change may take to show in /metrics (the "a few seconds")


def nonzero(counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in counts.items() if n}


@pytest.fixture(scope="module", params=["mongodb", "sqlite"])
def shipped_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One `pipelinejobs serve` per store for this module, started without --actor (as in the README)."""
    tmp_path = tmp_path_factory.mktemp(f"shipped-{request.param}")
    if request.param == "mongodb":
        uri = request.getfixturevalue("mongodb_uri")
        name = "t_shipped_" + uuidlib.uuid4().hex[:8]
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": name}
        options: dict[str, Any] = {"uri": uri, "database": name}
    else:
        path = tmp_path / "catalog.sqlite3"
        env, options = {"_REACTOR_STORE_SQLITE_PATH": str(path)}, {"path": path}
    running = start_server(tmp_path, request.param, env, options, actors=(), process=True)  # its start line
    try:
        yield next(running)
    finally:
        running.close()
        if request.param == "mongodb":
            with pymongo.MongoClient(options["uri"]) as client:
                client.drop_database(options["database"])


def post(server: LiveServer, message: dict[str, Any]) -> dict[str, Any]:
    response = web.post(
        server.messages_url, params={"_abaco_synchronous": "true"}, headers=server.auth, json=message, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def until_counted(server: LiveServer, expected: dict[tuple[str, str], int], since: float) -> float:
    """Scrape until the nonzero job counts are ``expected``; returns the seconds since ``since`` it took."""
    while True:
        counts = nonzero({key: int(n) for key, n in jobs_of(scrape(server)).items()})
        took = time.monotonic() - since
        if counts == expected:
            return took
        assert took < WITHIN, f"after {took:.1f} s /metrics still counts {counts}, not {expected}"
        time.sleep(0.1)


def test_serve_with_no_actor_answers_for_the_default_one(shipped_server: LiveServer) -> None:
    server = shipped_server
    assert server.actor_id == "pjmanager0001"  # what server_fixtures' URLs use, and the README's examples
    assert web.get(f"{server.url}/healthz").json()["actors"] == ["pjmanager0001"]
    assert "for actor(s) pjmanager0001 (the default: no --actor or serve.actors given)" in server.read_log()


def test_metrics_count_new_jobs_and_a_state_change_within_seconds(shipped_server: LiveServer) -> None:
    server = shipped_server
    register_example_pipeline(server)
    before = nonzero({key: int(n) for key, n in jobs_of(scrape(server)).items()})
    tag = uuidlib.uuid4().hex
    made = [
        post(server, {"pipeline_uuid": P, "archive_path": "/products/m", "data": {"t": tag, "i": i}}) for i in range(3)
    ]
    assert all(m["state"] == "CREATED" for m in made)
    created_at = time.monotonic()
    expected = {**before, ("CREATED", P): before.get(("CREATED", P), 0) + 3}
    took = until_counted(server, expected, created_at)
    assert took < WITHIN

    job = made[0]
    assert post(server, {"uuid": job["uuid"], "name": "run", "token": job["token"]})["state"] == "RUNNING"
    moved_at = time.monotonic()
    expected = {**expected, ("CREATED", P): expected[("CREATED", P)] - 1}
    expected[("RUNNING", P)] = before.get(("RUNNING", P), 0) + 1
    assert until_counted(server, expected, moved_at) < WITHIN
    store = server.open_store()
    try:
        assert store.job_totals() == expected  # the counters agree with a count of the jobs
    finally:
        store.close()


@pytest.mark.parametrize("v3", [False, True])
def test_the_messages_endpoint_has_abacos_hypermedia(shipped_server: LiveServer, v3: bool) -> None:
    """``get_messages_hypermedia`` (TACC/abaco actors/controllers.py): self is the messages URL, owner the
    actor owner's profile; v2 and v3 paths as upstream writes them. serve's owner is its user, here USER."""
    server = shipped_server
    actor = server.actor_id
    headers = {"X-Tapis-Token": server.api_token} if v3 else server.auth
    answer = web.get(f"{server.actor_url(v3=v3)}/messages", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success" and body["result"]["messages"] == 0
    if v3:
        links = {"self": f"{server.url}/v3/actors/{actor}/messages", "owner": f"{server.url}/v3/oauth2/profiles/tester"}
    else:
        links = {"self": f"{server.url}/actors/v2/{actor}/messages", "owner": f"{server.url}/profiles/v2/tester"}
    assert body["result"]["_links"] == links
