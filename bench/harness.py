"""What the benchmark runs on: the MongoDB-wire server, `pipelinejobs serve`, the job store, and the figures.

Every process started here is stopped by the context manager that started it,
and every answer from the server is checked (HTTP 200, exit code 0, status ok),
so a figure never counts a refused event as a fast one.
"""

from __future__ import annotations

import base64
import json as json_module
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

ACTOR = "pjbench0001"
PIPELINE = {
    "id": "tacc/tacobot:9000",
    "uuid": "10650844-1baa-55c5-a481-5e945b19c065",
    "name": "Tacobot pipeline",
    "components": [
        {"id": "eqMyqq4xB1Lqa", "image": "index.docker.io/tacc/tacbobot:latest", "options": {}},
        {"id": "bbq-brisket-0.5.0", "inputs": {}, "parameters": {"smoke": True}},
    ],
}
SYNC = {"_abaco_synchronous": "true"}  # the answer carries the exit code and the outcome
TOKEN = secrets.token_urlsafe(24)  # the bearer token this run's servers accept
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if ready():
                return
        except (OSError, httpx.TransportError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout}s")


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def stop(proc: subprocess.Popen) -> None:
    """Ask a process we started to stop; kill it if it has not within 10 s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def mongodb(workdir: Path) -> Iterator[str]:
    """MONGODB_URI, or a secantusd-py on a free loopback port for the length of the block."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    port = free_port()
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    storage = workdir / "secantus"
    storage.mkdir()
    with open(workdir / "secantusd.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: listening(port), proc, "secantusd-py")
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        stop(proc)


@dataclass
class Backend:
    """One store as `serve` and the bench both see it: the environment that selects it, and its settings."""

    name: str  # "embedded" | "mongodb"
    label: str
    workdir: Path
    env: dict[str, str]  # the whole environment of serve and reactor.py (no inherited variables)
    uri: str | None = None  # MongoDB only

    @property
    def database(self) -> str | None:
        return self.env.get("_REACTOR_MONGODB_DATABASE")

    def settings(self) -> Any:
        from pipelinejobs.settings import load_settings

        return load_settings(self.env)  # what `serve` reads: this environment and the checkout's config.yml


def base_env(workdir: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "USER": "bench"}


def embedded_backend(workdir: Path) -> Backend:
    env = {**base_env(workdir), "_REACTOR_STORE_SQLITE_PATH": str(workdir / "catalog.sqlite3")}
    return Backend("embedded", "embedded SQLite store", workdir, env)


def mongodb_backend(workdir: Path, uri: str) -> Backend:
    env = {
        **base_env(workdir),
        "_REACTOR_MONGODB_AUTHN": base64.urlsafe_b64encode(uri.encode()).decode(),
        "_REACTOR_MONGODB_DATABASE": "bench_" + secrets.token_hex(4),
    }
    where = "MONGODB_URI" if os.environ.get("MONGODB_URI") else "secantusd-py"
    return Backend("mongodb", f"MongoDB ({where})", workdir, env, uri)


@contextmanager
def job_store(backend: Backend) -> Iterator[Any]:
    """The job store, opened from the settings `serve` uses, with its indexes made; closed after the block.

    The one place the bench opens a store: through ``pipelinejobs.store.factory.open_job_store`` (a context
    manager) where the package has it, else through ``runtime.open_store``.
    """
    settings = backend.settings()
    try:
        from pipelinejobs.store.factory import open_job_store  # type: ignore[import-not-found]
    except ImportError:
        from pipelinejobs.runtime import open_store

        store = open_store(settings, backend.env)
        try:
            store.ensure_indexes()
            yield store
        finally:
            store.close()
        return
    with open_job_store(settings, backend.env) as store:
        store.ensure_indexes()  # serve makes them at start; the bench writes before serve starts
        yield store


def drop_databases(uri: str, names: list[str]) -> None:
    """Leave a MongoDB we did not start as we found it."""
    import pymongo

    with pymongo.MongoClient(uri) as client:
        for name in names:
            client.drop_database(name)


@contextmanager
def serve(backend: Backend, workers: int = 1) -> Iterator[str]:
    """`pipelinejobs serve --workers N` for ACTOR on a free loopback port; yields the actor's messages URL."""
    port = free_port()
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    env = {**backend.env, "PIPELINEJOBS_API_TOKENS": TOKEN}  # in the environment, not on the command line
    with open(backend.workdir / f"serve-{port}.log", "wb") as log:
        proc = subprocess.Popen([*command, "--actor", ACTOR], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200, proc, "pipelinejobs serve")
        yield f"{base}/actors/v2/{ACTOR}/messages"
    finally:
        stop(proc)


# -- jobs and events ------------------------------------------------------------------------------
def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Job:
    """A job the bench drives, and what the server answered for it."""

    uuid: str
    token: str
    revision: int | None = None  # the last revision answered; every accepted event must add exactly one
    last_event: str | None = None  # uuid of the last accepted event
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # what went wrong, by kind

    def note(self, outcome: dict[str, Any]) -> None:
        """Check an accepted outcome: an applied event with the next revision."""
        revision = outcome.get("revision")
        if outcome.get("status") != "ok" or outcome.get("applied") is False or not outcome.get("event_uuid"):
            self.refused[f"not applied: {outcome.get('status')}"] += 1
            return
        if self.revision is not None and revision != self.revision + 1:
            self.refused[f"revision {self.revision} -> {revision}"] += 1
        self.revision, self.last_event = revision, outcome["event_uuid"]
        self.accepted += 1


def new_job(store: Any, settings: Any, events: int) -> Job:
    """A RUNNING job whose history holds ``events`` events (create, run, then updates), made in-process."""
    from pipelinejobs import service
    from pipelinejobs.messages import CreateMessage, EventMessage

    create = CreateMessage(PIPELINE["uuid"], "/products/bench", {"n": secrets.token_hex(8)})
    outcome = service.handle(create, store=store, settings=settings, now=utc_now())
    job = Job(outcome["uuid"], outcome["token"])
    job.note(service.handle(EventMessage(job.uuid, "run", job.token), store=store, settings=settings, now=utc_now()))
    for i in range(events - 2):
        job.note(update_in_process(store, settings, job, i))
    return job


def update_in_process(store: Any, settings: Any, job: Job, i: int) -> dict[str, Any]:
    from pipelinejobs import service
    from pipelinejobs.messages import EventMessage

    message = EventMessage(job.uuid, "update", job.token, {"i": i})
    return service.handle(message, store=store, settings=settings, now=utc_now())


def timed_burst(ops: list[Callable[[int], None]], seconds: float) -> tuple[int, float]:
    """Each op in its own thread, called over and over for ``seconds``; returns (calls, all threads; seconds)."""
    counts = [0] * len(ops)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(ops) + 1)

    def worker(k: int) -> None:
        gate.wait()
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                ops[k](counts[k])
                counts[k] += 1
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(len(ops))]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


class KeepAlive:
    """A keep-alive HTTP/1.1 client on a bare socket, for the throughput bursts.

    The clients share the server's two cores, so their own CPU shows up in the figure: this
    client costs about 0.04-0.08 ms of CPU per request where http.client cost 0.19 ms and
    httpx more, which leaves the cores to the server being measured. It still reads every
    answer whole (status, headers, body by Content-Length) for ``send_update`` to check.
    Same ``post(url, params=, json=)`` as httpx; it connects on the first request.
    """

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urllib.parse.urlsplit(base)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        fields = {"Host": f"{self._address[0]}:{self._address[1]}", **headers, "Content-Type": "application/json"}
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self._heads: dict[str, bytes] = {}  # request line and fields up to Content-Length, per path
        self._sock: socket.socket | None = None
        self._pending = b""  # bytes received past the last answer (none, as requests are not pipelined)

    def post(self, url: str, *, params: dict[str, str], json: Any) -> KeepAliveResponse:
        path = f"{urllib.parse.urlsplit(url).path}?{urllib.parse.urlencode(params)}"
        head = self._heads.get(path)
        if head is None:
            head = self._heads[path] = f"POST {path} HTTP/1.1\r\n{self._fields}Content-Length: ".encode()
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=300)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = json_module.dumps(json).encode()
        self._sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        return self._answer()

    def _answer(self) -> KeepAliveResponse:
        assert self._sock is not None
        received = self._pending
        while (end := received.find(b"\r\n\r\n")) < 0:
            received += self._receive()
        lines = received[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "-1"))
        if length < 0:
            raise RuntimeError(f"an answer without Content-Length: {lines[0]}")
        while len(received) < end + 4 + length:
            received += self._receive()
        self._pending = received[end + 4 + length :]
        return KeepAliveResponse(status, headers, received[end + 4 : end + 4 + length])

    def _receive(self) -> bytes:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass
class KeepAliveResponse:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    def json(self) -> Any:
        return json_module.loads(self.content)


def send_update(http: httpx.Client | KeepAlive, url: str, job: Job, i: int) -> float:
    """POST one update event and check the answer; returns the seconds it took."""
    body = {"uuid": job.uuid, "name": "update", "token": job.token, "data": {"i": i}}
    start = time.perf_counter()
    response = http.post(url, params=SYNC, json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200 or response.headers.get("x-abaco-exit-code") != "0":
        try:
            kind = response.json().get("kind")
        except ValueError:
            kind = None
        job.refused[str(kind or f"HTTP {response.status_code}")] += 1
    else:
        job.note(response.json())
    return elapsed


def verify(backend: Backend, jobs: list[Job]) -> list[str]:
    """Problems with the answers and with what is stored: refusals, skipped revisions, a lost last event."""
    problems = [f"{job.uuid}: {n} x {kind}" for job in jobs for kind, n in job.refused.items()]
    with job_store(backend) as store:
        for job in jobs:
            stored = store.find_job(job.uuid) or {}
            revision = (stored.get("_properties") or {}).get("revision")
            if revision != job.revision:
                problems.append(f"{job.uuid}: stored revision {revision}, last answered {job.revision}")
            if job.last_event not in {entry.get("uuid") for entry in stored.get("history") or []}:
                problems.append(f"{job.uuid}: the last accepted event is not in the job's history")
    return problems


# -- figures --------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(label: str, seconds: list[float]) -> str:
    """One line: count, median, p95 and min in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return f"  {label:<46} no samples"
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"  {label:<46} n={len(ms):<5} median {median(ms):8.1f} ms  p95 {p95:8.1f} ms  min {ms[0]:8.1f} ms"


@dataclass
class Ratio:
    """One acceptance ratio: numerator and denominator medians, and the bound it must meet."""

    label: str
    numerator: float
    denominator: float
    unit: str  # "ms" or "ev/s"
    target: float
    at_most: bool  # True: ratio <= target passes; False: ratio >= target passes
    note: str = ""  # why the figure is not the one asked for, if it is not

    @property
    def ratio(self) -> float:
        return self.numerator / self.denominator if self.denominator else float("nan")

    @property
    def verdict(self) -> str:
        met = self.ratio <= self.target if self.at_most else self.ratio >= self.target
        return "PASS" if met and not self.note else "MISS"

    def row(self) -> str:
        bound = f"{'<=' if self.at_most else '>='} {self.target:.2f}x"
        figures = f"{self.numerator:9.1f} {self.unit:<4} / {self.denominator:9.1f} {self.unit:<4}"
        return f"{self.label:<52} {figures} = {self.ratio:5.2f}x  target {bound:<9} {self.verdict}"
