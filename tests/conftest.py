"""Test session fixtures: a real MongoDB-wire server and helpers to run reactor.py like Abaco.

The server is ``secantusd-py`` (SecantusDB, from PyPI) started on a free loopback
port with a temporary storage directory, unless ``MONGODB_URI`` names one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymongo
import pytest
from hypothesis import settings as hypothesis_settings

if TYPE_CHECKING:
    from pipelinejobs.store.base import JobStore

# CI (CI=true) draws a fixed, reproducible set of examples for every property test, so a failure there
# repeats on a rerun with the same message; local runs draw new ones and remember no failures on disk.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("local", database=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "local")

# live `pipelinejobs serve` processes (live_server, live_server_sqlite); serve's app in this process (serve_app)
pytest_plugins = ["tests.server_fixtures", "tests.inprocess"]
ROOT = Path(__file__).resolve().parent.parent
REACTOR = ROOT / "reactor.py"

EXAMPLE_PIPELINE_ID = "tacc/tacobot:9000"
EXAMPLE_PIPELINE_COMPONENTS = [
    {"id": "eqMyqq4xB1Lqa", "image": "index.docker.io/tacc/tacbobot:latest", "options": {}},
    {"id": "bbq-brisket-0.5.0", "inputs": {}, "parameters": {"smoke": True}},
]
EXAMPLE_PIPELINE_UUID = "10650844-1baa-55c5-a481-5e945b19c065"
#: The keys of a job document, in the order python-datacatalog writes them (compat §4).
DATACATALOG_JOB_KEYS = [
    "pipeline_uuid",
    "archive_path",
    "archive_system",
    "archive_patterns",
    "product_patterns",
    "data",
    "session",
    "agent",
    "task",
    "generated_by",
    "child_of",
    "acted_on",
    "acted_using",
    "uuid",
    "state",
    "last_event",
    "updated",
    "history",
    "_visible",
    "_properties",
    "_admin",
    "_salt",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"secantusd-py exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"secantusd-py did not listen on port {port} within {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    """Ask a server process to stop; kill it if it has not within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _sendable(value: Any) -> Any:
    """``value`` with every string encodable as UTF-8: a lone surrogate becomes its ``\\udXXX`` escape."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_sendable(key): _sendable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_sendable(item) for item in value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config, report: Any) -> Iterator[Any]:
    """A test's report as pytest-xdist sends it from a worker: its text may hold the lone surrogates the
    hostile-input tests send (captured logs, a failure's message), which execnet cannot encode."""
    serialized = yield
    return _sendable(serialized)


@pytest.fixture(autouse=True)
def _package_logging_restored() -> Iterator[None]:
    """What a test does to the package's logger (``logs.configure`` in an in-process CLI run points it at the
    test's captured stderr, closed after the test) is undone afterwards, so servers running in this
    process for the whole module never write to a closed stream."""
    import logging

    from pipelinejobs import logs

    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-wire server for the whole session: MONGODB_URI, or a fresh secantusd-py."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    port = _free_port()
    storage = tmp_path_factory.mktemp("secantus")
    log = open(storage.parent / "secantusd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def database_name() -> str:
    """A fresh database per test, so tests never see each other's jobs."""
    return "t_" + uuidlib.uuid4().hex[:12]


@pytest.fixture
def db(mongo_client: pymongo.MongoClient, database_name: str) -> Iterator[Any]:
    database = mongo_client[database_name]
    yield database
    mongo_client.drop_database(database_name)


#: opens a job store on this test's catalog (options go to the store's constructor)
StoreFactory = Callable[..., "JobStore"]


@pytest.fixture(params=["mongodb", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Job stores on both backends: a fresh MongoDB database or SQLite file per test, indexes made; closed after.

    Each call opens another store object (its own connections) on the same data, as another process would.
    """
    from pipelinejobs.store.mongo import MongoJobStore
    from pipelinejobs.store.sqlite import SqliteJobStore

    opened: list[JobStore] = []
    if request.param == "mongodb":
        uri, name = request.getfixturevalue("mongodb_uri"), request.getfixturevalue("database_name")
        request.getfixturevalue("db")

        def factory(**options: Any) -> JobStore:
            opened.append(MongoJobStore(uri, name, **options))
            return opened[-1]
    else:
        path = tmp_path / "jobs.sqlite3"

        def factory(**options: Any) -> JobStore:
            opened.append(SqliteJobStore(path, **options))
            return opened[-1]

    factory().ensure_indexes()
    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> JobStore:
    return store_factory()


def authn_for(uri: str) -> str:
    return base64.urlsafe_b64encode(uri.encode()).decode()


@dataclass
class ReactorResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no stdout; stderr was:\n{self.stderr}"
        return json.loads(lines[-1])


@dataclass
class Reactor:
    """Runs reactor.py's message path as Abaco would: the message and its context in an environment.

    In this process by default (``runtime.run_message``, the one call reactor.py makes, with its stdout
    and stderr captured as the process would print them); ``process=True`` starts reactor.py itself, a
    fresh process per message, for the few tests that check the process (exit codes, imports, races).
    """

    mongodb_uri: str
    database: str
    process: bool = False

    def env(
        self,
        msg: Any,
        *,
        as_repr: bool = False,
        params: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "_REACTOR_MONGODB_AUTHN": authn_for(self.mongodb_uri),
            "_REACTOR_MONGODB_DATABASE": self.database,
            "_abaco_actor_id": "pjmanager0001",
            "_abaco_execution_id": "exec" + uuidlib.uuid4().hex[:9],
            "_abaco_api_server": "https://api.example.org",
            "_abaco_username": "tester",
            "_abaco_access_token": "abaco-access-token-secret-value",
        }
        if msg is not None:
            if isinstance(msg, str):
                env["MSG"], env["_abaco_Content_Type"] = msg, "str"
            elif as_repr:
                env["MSG"], env["_abaco_Content_Type"] = repr(msg), "str"
            else:
                env["MSG"], env["_abaco_Content_Type"] = json.dumps(msg), "application/json"
        env.update(params or {})
        env.update(extra or {})
        return env

    def run(self, msg: Any, **kwargs: Any) -> ReactorResult:
        env = self.env(msg, **kwargs)
        if self.process:
            proc = subprocess.run([sys.executable, str(REACTOR)], env=env, capture_output=True, text=True, timeout=120)
            return ReactorResult(proc.returncode, proc.stdout, proc.stderr)
        return run_in_process(env)

    def start(self, msg: Any, **kwargs: Any) -> subprocess.Popen:
        """reactor.py as a process that runs while the test goes on (racing writers)."""
        return subprocess.Popen(
            [sys.executable, str(REACTOR)],
            env=self.env(msg, **kwargs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def run_in_process(env: dict[str, str], config: Path | None = None) -> ReactorResult:
    """What reactor.py does with ``env``, in this process: its exit code, its stdout line, its stderr.

    ``run_message`` points the package's log at stderr, as the process's would be; the test's own
    logging is put back afterwards.
    """
    import contextlib
    import io
    import logging

    from pipelinejobs import logs
    from pipelinejobs.runtime import dumps, run_message

    package = logging.getLogger(logs.LOGGER_NAME)
    saved = (package.handlers[:], package.level, package.propagate)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code, result = run_message(env, config_path=config or ROOT / "config.yml")
    finally:
        package.handlers[:], package.level, package.propagate = saved
    return ReactorResult(code, dumps(result) + "\n", err.getvalue())


def prepare_database(mongodb_uri: str, database_name: str) -> None:
    """What `pipelinejobs db init` does once per deployment: the catalog's indexes."""
    from pipelinejobs.store.mongo import MongoJobStore

    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()


@pytest.fixture
def reactor(mongodb_uri: str, database_name: str, db: Any) -> Reactor:
    """reactor.py's path in this process (see :class:`Reactor`), on a prepared catalog database."""
    prepare_database(mongodb_uri, database_name)
    return Reactor(mongodb_uri, database_name)


@pytest.fixture
def reactor_process(mongodb_uri: str, database_name: str, db: Any) -> Reactor:
    """reactor.py itself, a process per message, as Abaco runs it."""
    prepare_database(mongodb_uri, database_name)
    return Reactor(mongodb_uri, database_name, process=True)


@pytest.fixture
def example_pipeline(db: Any) -> dict[str, Any]:
    """The compat page's example pipeline, registered as datacatalog would store it."""
    doc = {
        "id": EXAMPLE_PIPELINE_ID,
        "uuid": EXAMPLE_PIPELINE_UUID,
        "name": "Tacobot pipeline",
        "components": EXAMPLE_PIPELINE_COMPONENTS,
    }
    db.pipelines.insert_one(dict(doc))
    return doc
