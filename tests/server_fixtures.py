"""Live `pipelinejobs serve` processes for the HTTP tests, on the test MongoDB or on a SQLite file.

The server runs as a subprocess, exactly as an operator starts it, on a free
loopback port; the fixtures wait until ``/healthz`` answers and stop it after
the test. ``open_store()`` gives the test its own view of the same data, so a
test can check what was (or was not) written without going through HTTP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    EXAMPLE_PIPELINE_COMPONENTS,
    EXAMPLE_PIPELINE_ID,
    EXAMPLE_PIPELINE_UUID,
    ROOT,
    authn_for,
    stop_process,
)

ACTOR_ID = "pjmanager0001"
OTHER_ACTOR_ID = "pjmanager0002"  # a second actor the server answers for (nonces must not cross over)
API_TOKEN = "test-api-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    backend: str
    log_path: Path
    proc: subprocess.Popen
    store_options: dict[str, Any] = field(default_factory=dict)
    actor_id: str = ACTOR_ID
    other_actor_id: str = OTHER_ACTOR_ID
    api_token: str = API_TOKEN

    @property
    def messages_url(self) -> str:
        return f"{self.url}/actors/v2/{self.actor_id}/messages"

    def actor_url(self, actor: str | None = None, *, v3: bool = False) -> str:
        actor = actor or self.actor_id
        return f"{self.url}/v3/actors/{actor}" if v3 else f"{self.url}/actors/v2/{actor}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def read_log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def open_store(self) -> Any:
        """The server's job store, opened by the test itself."""
        if self.backend == "mongodb":
            from pipelinejobs.store.mongo import MongoJobStore

            return MongoJobStore(self.store_options["uri"], self.store_options["database"])
        from pipelinejobs.store.sqlite import SqliteJobStore

        return SqliteJobStore(self.store_options["path"])


def _wait_until_ready(server: LiveServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"`pipelinejobs serve` exited with {server.proc.returncode}:\n{server.read_log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"`pipelinejobs serve` did not answer within {timeout}s:\n{server.read_log()}")


def start_server(
    tmp_path: Path,
    backend: str,
    env: dict[str, str],
    store_options: dict[str, Any],
    *,
    token_via_env: bool = False,
    args: tuple[str, ...] = (),
    actors: tuple[str, ...] = (ACTOR_ID, OTHER_ACTOR_ID),
) -> Iterator[LiveServer]:
    """Start `pipelinejobs serve` (plus ``args``) with a clean environment plus ``env``; stop it afterwards.

    ``actors``: the ``--actor`` options (none: serve answers for its default actor, which is ``ACTOR_ID``).
    """
    port = free_port()
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += [*(option for actor in actors for option in ("--actor", actor)), *args]
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "USER": "tester", **env}
    if token_via_env:  # keeps the token out of the process list
        full_env["PIPELINEJOBS_API_TOKENS"] = API_TOKEN
    else:
        command += ["--api-token", API_TOKEN]
    log_path = tmp_path / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", backend, log_path, proc, store_options)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        stop_process(proc)


@pytest.fixture
def live_server(mongodb_uri: str, database_name: str, db: Any, tmp_path: Path) -> Iterator[LiveServer]:
    """`pipelinejobs serve` on the test MongoDB (a fresh database per test)."""
    env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": database_name}
    yield from start_server(tmp_path, "mongodb", env, {"uri": mongodb_uri, "database": database_name})


@pytest.fixture
def live_server_sqlite(tmp_path: Path) -> Iterator[LiveServer]:
    """`pipelinejobs serve` on a SQLite file in the test's temporary directory, no MongoDB at all."""
    path = tmp_path / "catalog.sqlite3"
    env = {"_REACTOR_STORE_SQLITE_PATH": str(path)}
    yield from start_server(tmp_path, "sqlite", env, {"path": path}, token_via_env=True)


def register_example_pipeline(server: LiveServer, **fields: Any) -> None:
    """Put the example pipeline in the server's store (``fields`` add to or replace its own)."""
    store = server.open_store()
    try:
        pipeline = {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "components": EXAMPLE_PIPELINE_COMPONENTS}
        store.save_pipeline({**pipeline, **fields})
    finally:
        store.close()


def new_job(server: LiveServer) -> tuple[str, str]:
    """Register the example pipeline and create a job through the server; returns (uuid, token)."""
    register_example_pipeline(server)
    create = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/t", "data": {"n": uuid.uuid4().hex}}
    response = httpx.post(server.messages_url, params={"_abaco_synchronous": "true"}, headers=server.auth, json=create)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "ok" and outcome["state"] == "CREATED", outcome
    return outcome["uuid"], outcome["token"]
