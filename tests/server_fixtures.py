"""Live `pipelinejobs serve` for the HTTP tests, on the test MongoDB or on a SQLite file.

By default the server is serve's own app (``open_server`` + ``create_app``) run by uvicorn in a
thread of the test process, on a free loopback port: real HTTP, the same settings path, the
same background loops, without a process start (an import of everything, about a second of
CPU on these machines). Tests of what an operator sees of the process itself (signals, SIGKILL,
``--workers``, its start line) ask for a subprocess, started exactly as an operator starts it
(``process=True``, or any extra command-line ``args``). Either way the fixtures wait until
``/healthz`` answers and stop the server after the test; ``open_store()`` gives the test its own
view of the same data, so a test can check what was (or was not) written without going through HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import web
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
    proc: subprocess.Popen | None  # None: the server runs in this process (see InProcessServe)
    store_options: dict[str, Any] = field(default_factory=dict)
    actor_id: str = ACTOR_ID
    other_actor_id: str = OTHER_ACTOR_ID
    api_token: str = API_TOKEN
    stopper: Any = None  # stops the server (and flushes what it writes behind): an in-process server's own

    def stop(self) -> None:
        """Stop the server as SIGTERM stops serve: background loops stopped, executions flushed, store closed."""
        if self.proc is not None:
            stop_process(self.proc)
        elif self.stopper is not None:
            self.stopper()

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


class InProcessServe:
    """serve's app under uvicorn in a thread of this process, configured from ``env`` as the command would be."""

    def __init__(self, env: dict[str, str], log_path: Path, tokens: list[str], actors: tuple[str, ...] = ()) -> None:
        import uvicorn

        from pipelinejobs import logs
        from pipelinejobs.server.app import create_app
        from pipelinejobs.server.connections import connection_limits, uvicorn_options
        from pipelinejobs.server.execution import open_server, serve_config
        from pipelinejobs.settings import load_settings

        settings = load_settings(env)
        config, plain = serve_config(settings, actors=actors, api_tokens=tokens)
        limits = uvicorn_options(connection_limits(settings))
        self.handler = logging.FileHandler(log_path, encoding="utf-8")
        self.handler.setFormatter(logs.RedactingFormatter(secrets=[*settings.secrets, *plain]))
        package = logging.getLogger(logs.LOGGER_NAME)
        package.addHandler(self.handler)
        package.setLevel(logging.INFO)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        if not config.api_server:  # as the command does: links name the address serve listens on
            config = dataclasses.replace(config, api_server=f"http://127.0.0.1:{self.port}")
        server = open_server(settings, config, plain)
        uv_config = uvicorn.Config(create_app(server), log_config=None, access_log=False, lifespan="on", **limits)
        self.uvicorn = uvicorn.Server(uv_config)
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        from pipelinejobs import logs

        if not self.thread.is_alive() and self.sock.fileno() < 0:
            return  # stopped already
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        logging.getLogger(logs.LOGGER_NAME).removeHandler(self.handler)
        self.handler.close()


def _wait_until_ready(server: LiveServer, timeout: float = 30.0, inner: InProcessServe | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inner is not None and not inner.running():
            raise RuntimeError(f"in-process `pipelinejobs serve` stopped:\n{server.read_log()}")
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"`pipelinejobs serve` exited with {server.proc.returncode}:\n{server.read_log()}")
        try:
            if web.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
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
    process: bool = False,
    actors: tuple[str, ...] = (ACTOR_ID, OTHER_ACTOR_ID),
) -> Iterator[LiveServer]:
    """Start `pipelinejobs serve` (plus ``args``) with a clean environment plus ``env``; stop it afterwards.

    In this process unless ``process`` or ``args`` ask for the command itself. ``actors``: the actors it
    answers for (none: serve answers for its default actor, which is ``ACTOR_ID``).
    """
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "USER": "tester", **env}
    if not process and not args:
        log_path = tmp_path / f"serve-{uuid.uuid4().hex[:8]}.log"
        inner = InProcessServe(full_env, log_path, [API_TOKEN], actors)
        server = LiveServer(
            f"http://127.0.0.1:{inner.port}", backend, log_path, None, store_options, stopper=inner.stop
        )
        try:
            _wait_until_ready(server, inner=inner)
            yield server
        finally:
            inner.stop()
        return
    port = free_port()
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += [*(option for actor in actors for option in ("--actor", actor)), *args]
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


@pytest.fixture
def live_server_process(mongodb_uri: str, database_name: str, db: Any, tmp_path: Path) -> Iterator[LiveServer]:
    """The `pipelinejobs serve` command itself, as an operator starts it, on the test MongoDB."""
    env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": database_name}
    yield from start_server(tmp_path, "mongodb", env, {"uri": mongodb_uri, "database": database_name}, process=True)


@pytest.fixture
def live_server_sqlite_process(tmp_path: Path) -> Iterator[LiveServer]:
    """The `pipelinejobs serve` command itself on a SQLite file, its API token in the environment."""
    path = tmp_path / "catalog.sqlite3"
    env = {"_REACTOR_STORE_SQLITE_PATH": str(path)}
    yield from start_server(tmp_path, "sqlite", env, {"path": path}, token_via_env=True, process=True)


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
    response = web.post(server.messages_url, params={"_abaco_synchronous": "true"}, headers=server.auth, json=create)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "ok" and outcome["state"] == "CREATED", outcome
    return outcome["uuid"], outcome["token"]
