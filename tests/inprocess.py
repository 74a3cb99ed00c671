"""`pipelinejobs serve`'s app in this process, on a real store, for route tests that need no server process.

The app is the one `serve` runs (``create_app``), driven by Starlette's TestClient (httpx over the
ASGI interface, no socket). Without the lifespan, no background loop runs; the fixture closes the
server. One app per store per test module (``serve_app``): each test makes its own jobs and nonces.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import EXAMPLE_PIPELINE_COMPONENTS, EXAMPLE_PIPELINE_ID, EXAMPLE_PIPELINE_UUID, authn_for
from tests.server_fixtures import ACTOR_ID, API_TOKEN, OTHER_ACTOR_ID


@dataclass
class Served:
    """The app, its server state and helpers to make what a test needs through the app itself."""

    client: TestClient
    server: Any  # pipelinejobs.server.execution.Server
    backend: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    def nonce(self, level: str = "EXECUTE", actor: str = ACTOR_ID) -> str:
        """A nonce with unlimited uses, made through Abaco's nonce API."""
        answer = self.client.post(f"/actors/v2/{actor}/nonces", headers=self.auth, json={"level": level})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["result"]["id"])

    def new_job(self, **data: Any) -> tuple[str, str]:
        """A new CREATED job of the example pipeline, made by a create message; returns (uuid, token)."""
        self.server.store.save_pipeline(
            {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "components": EXAMPLE_PIPELINE_COMPONENTS}
        )
        create = {
            "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
            "archive_path": "/products/t",
            "data": data or {"n": uuidlib.uuid4().hex},
        }
        answer = self.client.post(
            f"/actors/v2/{ACTOR_ID}/messages", params={"_abaco_synchronous": "true"}, headers=self.auth, json=create
        )
        assert answer.status_code == 200 and answer.json()["state"] == "CREATED", answer.text
        return answer.json()["uuid"], answer.json()["token"]

    def job(self, uuid: str) -> dict[str, Any]:
        answer = self.client.get(f"/jobs/{uuid}", headers=self.auth)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["result"])

    def events(self, uuid: str) -> list[dict[str, Any]]:
        answer = self.client.get(f"/jobs/{uuid}/events", params={"limit": 1000}, headers=self.auth)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["result"]["events"])


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def serve_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """serve's app on a fresh SQLite file or MongoDB database, for the whole test module."""
    from pipelinejobs.server.app import create_app
    from pipelinejobs.server.execution import open_server, serve_config
    from pipelinejobs.settings import load_settings

    database = "t_" + uuidlib.uuid4().hex[:12]
    if request.param == "sqlite":
        env = {"_REACTOR_STORE_SQLITE_PATH": str(Path(tmp_path_factory.mktemp("served")) / "catalog.sqlite3")}
    else:
        uri = request.getfixturevalue("mongodb_uri")
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": database}
    settings = load_settings(env)
    config, plain = serve_config(settings, actors=[ACTOR_ID, OTHER_ACTOR_ID], api_tokens=[API_TOKEN])
    server = open_server(settings, config, plain)
    client = TestClient(create_app(server, background=False), raise_server_exceptions=True)
    try:
        yield Served(client, server, request.param)
    finally:
        client.close()
        server.close()
        if request.param == "mongodb":
            import pymongo

            with pymongo.MongoClient(request.getfixturevalue("mongodb_uri")) as mongo:
                mongo.drop_database(database)


def basic(user: str, password: str) -> httpx.BasicAuth:
    return httpx.BasicAuth(user, password)
