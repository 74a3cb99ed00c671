"""Benchmark of `pipelinejobs serve`: what an event costs over HTTP. Prints figures; asserts nothing about speed.

The server runs as a subprocess on a free loopback port, started as an operator
starts it, once on the embedded SQLite store (a temporary directory) and once on
a MongoDB-wire server (secantusd-py started here, or MONGODB_URI). Each time the
example pipeline is registered with `pipelinejobs pipeline register`, a job is
created over HTTP and `update` events are POSTed with httpx:
1. one after another on one keep-alive connection: latency;
2. from 8 client threads on the same job (every write contends for one document);
3. from 8 client threads with a job each.
Events are sent with ``_abaco_synchronous=true`` (the server does the same work
either way) so each answer carries the exit code and the event's uuid. At the
end every accepted event must be in its job's history, read from the store.

    .venv/bin/python bench/serve.py
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelinejobs.runtime import open_store  # noqa: E402 - after the path is set
from pipelinejobs.settings import ROOT_CONFIG, load_settings  # noqa: E402

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
SEQUENTIAL = 200
CLIENTS = 8
CONCURRENT = 400  # messages in all, shared among the clients
SYNC = {"_abaco_synchronous": "true"}
TOKEN = secrets.token_urlsafe(24)  # the bearer token the server accepts, fresh per run
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


@contextmanager
def serve(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """`pipelinejobs serve` for ACTOR on a free loopback port; yields the actor's messages URL."""
    port = free_port()
    command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, "--actor", ACTOR], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200, proc, "pipelinejobs serve")
        yield f"{base}/actors/v2/{ACTOR}/messages"
    finally:
        stop(proc)


def register_pipeline(workdir: Path, env: dict[str, str]) -> None:
    path = workdir / "pipeline.json"
    path.write_text(json.dumps(PIPELINE), encoding="utf-8")
    command = [sys.executable, "-m", "pipelinejobs.cli", "--json", "pipeline", "register", str(path)]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    stored = json.loads(out.stdout)["pipeline"]
    assert stored["uuid"] == PIPELINE["uuid"], stored


# -- messages -------------------------------------------------------------------------------------
@dataclass
class Job:
    uuid: str
    token: str
    accepted: list[str] = field(default_factory=list)  # event uuids the server answered with exit code 0
    refused: Counter[str] = field(default_factory=Counter)  # kind (or HTTP status) of every other answer


def create_job(http: httpx.Client, url: str) -> Job:
    body = {"pipeline_uuid": PIPELINE["uuid"], "archive_path": "/products/bench", "data": {"n": secrets.token_hex(8)}}
    outcome = http.post(url, params=SYNC, json=body).raise_for_status().json()
    job = Job(outcome["uuid"], outcome["token"])
    run = http.post(url, params=SYNC, json={"uuid": job.uuid, "name": "run", "token": job.token}).json()
    assert run.get("state") == "RUNNING", run
    return job


def send_update(http: httpx.Client, url: str, job: Job, i: int) -> float:
    """POST one update event, note whether it was accepted; returns the seconds it took."""
    body = {"uuid": job.uuid, "name": "update", "token": job.token, "data": {"i": i}}
    start = time.perf_counter()
    response = http.post(url, params=SYNC, json=body)
    elapsed = time.perf_counter() - start
    outcome = response.json()
    if response.status_code == 200 and response.headers.get("x-abaco-exit-code") == "0":
        job.accepted.append(outcome["event_uuid"])
    else:
        job.refused[str(outcome.get("kind") or response.status_code)] += 1
    return elapsed


def clients(url: str, jobs: list[Job], total: int) -> tuple[float, list[float]]:
    """CLIENTS threads, each with its own connection, client k sending to ``jobs[k % len(jobs)]``."""

    def client(k: int) -> list[float]:
        with httpx.Client(headers=HEADERS, timeout=120) as http:
            return [send_update(http, url, jobs[k % len(jobs)], i) for i in range(k, total, CLIENTS)]

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        times = [t for per_client in pool.map(client, range(CLIENTS)) for t in per_client]
    return time.perf_counter() - start, times


# -- report ---------------------------------------------------------------------------------------
def summary(label: str, seconds: list[float], wall: float | None = None) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    rate = len(ms) / (wall if wall is not None else sum(seconds))
    print(f"  {label:<34} n={len(ms):<4} median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  {rate:6.0f} msg/s")


def check_history(env: dict[str, str], label: str, jobs: list[Job]) -> bool:
    """Every accepted event is in its job's history, exactly once. Prints the counts."""
    accepted = in_history = lost = 0
    refused: Counter[str] = Counter()
    store = open_store(load_settings(env, ROOT_CONFIG), env)
    try:
        for job in jobs:
            history = (store.find_job(job.uuid) or {}).get("history", [])
            updates = Counter(entry["uuid"] for entry in history if entry["name"] == "update")
            accepted += len(job.accepted)
            in_history += sum(updates.values())
            lost += sum(updates[event] != 1 for event in job.accepted)
            refused += job.refused
    finally:
        store.close()
    refusals = ", ".join(f"{n} {kind}" for kind, n in refused.items()) or "none"
    print(f"  {label:<34} {accepted} accepted, {in_history} update entries in history; refused: {refusals}")
    if lost or in_history != accepted:
        print(f"    BUG: {lost} accepted event(s) missing or repeated; history holds {in_history - accepted} more")
        return False
    return True


def bench(name: str, workdir: Path, backend_env: dict[str, str]) -> bool:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "USER": "bench", **backend_env}
    env["PIPELINEJOBS_API_TOKENS"] = TOKEN  # in the environment, not on the command line
    print(f"\n{name}")
    register_pipeline(workdir, env)
    with serve(workdir, env) as url, httpx.Client(headers=HEADERS, timeout=120) as http:
        first = create_job(http, url)
        times = [send_update(http, url, first, i) for i in range(SEQUENTIAL)]
        summary("sequential, one connection", times)
        wall, times = clients(url, [first], CONCURRENT)
        summary(f"{CLIENTS} clients, one job", times, wall)
        own = [create_job(http, url) for _ in range(CLIENTS)]
        wall, times = clients(url, own, CONCURRENT)
        summary(f"{CLIENTS} clients, a job each", times, wall)
    complete = check_history(env, "history of the shared job", [first])
    return check_history(env, f"history of the {CLIENTS} own jobs", own) and complete


def main() -> int:
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cpus; httpx {httpx.__version__}")
    complete = True
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        sqlite_dir, mongo_dir = Path(tmp, "sqlite"), Path(tmp, "mongodb")
        sqlite_dir.mkdir()
        mongo_dir.mkdir()
        sqlite_env = {"_REACTOR_STORE_SQLITE_PATH": str(sqlite_dir / "catalog.sqlite3")}
        complete &= bench("embedded SQLite store", sqlite_dir, sqlite_env)
        with mongodb(mongo_dir) as uri:
            mongo_env = {
                "_REACTOR_MONGODB_AUTHN": base64.urlsafe_b64encode(uri.encode()).decode(),
                "_REACTOR_MONGODB_DATABASE": "bench_" + secrets.token_hex(4),
            }
            label = "MongoDB (MONGODB_URI)" if os.environ.get("MONGODB_URI") else "MongoDB wire (secantusd-py)"
            complete &= bench(label, mongo_dir, mongo_env)
            if os.environ.get("MONGODB_URI"):  # leave a server we did not start as we found it
                import pymongo

                with pymongo.MongoClient(uri) as client:
                    client.drop_database(mongo_env["_REACTOR_MONGODB_DATABASE"])
    if not complete:
        print("\nBUG: an accepted event is missing from its job's history (see above)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
