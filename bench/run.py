"""Benchmarks: what a message costs. Prints figures; asserts nothing about speed.

Abaco starts a fresh process per message, so the cost of one message is the
interpreter start, the imports, the MongoDB connection and the work. Measured:
1. the import time of the reactor's modules in a fresh interpreter;
2. the wall time of reactor.py per message (create, then events), end to end;
3. the in-process cost of service.handle for events (no process start).
Uses secantusd-py on a free loopback port (or MONGODB_URI).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PIPELINE = {"id": "tacc/tacobot:9000", "uuid": "10650844-1baa-55c5-a481-5e945b19c065"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server() -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("MONGODB_URI"):
        return os.environ["MONGODB_URI"], None
    port = _free_port()
    binary = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return f"mongodb://127.0.0.1:{port}", proc


def _summary(label: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(
        f"{label:<44} n={len(ms):<4} median {statistics.median(ms):8.1f} ms   p95 {p95:8.1f} ms   min {ms[0]:8.1f} ms"
    )


def bench_imports(n: int = 15) -> None:
    code = "import pipelinejobs.runtime, pipelinejobs.messages, pipelinejobs.service, pipelinejobs.store.mongo"
    for label, stmt in (("python -c pass (interpreter floor)", "pass"), ("import the reactor's modules", code)):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        _summary(label, times)


def bench_reactor(uri: str, n: int = 20) -> None:
    import json

    import pymongo

    database = "bench_" + os.urandom(4).hex()
    pymongo.MongoClient(uri)[database].pipelines.insert_one(dict(PIPELINE))
    env = dict(
        os.environ,
        _REACTOR_MONGODB_AUTHN=base64.urlsafe_b64encode(uri.encode()).decode(),
        _REACTOR_MONGODB_DATABASE=database,
        _abaco_Content_Type="application/json",
    )

    def run(msg: dict) -> dict:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(ROOT / "reactor.py")],
            env=dict(env, MSG=json.dumps(msg)),
            capture_output=True,
            text=True,
            check=True,
        )
        run.times.append(time.perf_counter() - start)  # type: ignore[attr-defined]
        return json.loads(out.stdout.splitlines()[-1])

    run.times = []  # type: ignore[attr-defined]
    creates = [run({"pipeline_uuid": PIPELINE["uuid"], "archive_path": "/b", "data": {"i": i}}) for i in range(n)]
    _summary("reactor.py create (process per message)", run.times)  # type: ignore[attr-defined]
    run.times = []  # type: ignore[attr-defined]
    job = creates[0]
    run({"uuid": job["uuid"], "name": "run", "token": job["token"]})
    for i in range(n):
        run({"uuid": job["uuid"], "name": "update", "token": job["token"], "data": {"i": i}})
    _summary("reactor.py event (process per message)", run.times)  # type: ignore[attr-defined]
    pymongo.MongoClient(uri).drop_database(database)


def bench_in_process(uri: str, n: int = 300) -> None:
    import pymongo

    from pipelinejobs import service
    from pipelinejobs.messages import CreateMessage, EventMessage
    from pipelinejobs.settings import ROOT_CONFIG, load_settings
    from pipelinejobs.store.mongo import MongoJobStore

    database = "bench_" + os.urandom(4).hex()
    settings = load_settings({}, ROOT_CONFIG)
    store = MongoJobStore(uri, database)
    store.ensure_indexes()
    store.save_pipeline(dict(PIPELINE))
    now = datetime.now(timezone.utc)
    job = service.handle(CreateMessage(PIPELINE["uuid"], "/b", {"x": 1}), store=store, settings=settings, now=now)
    service.handle(EventMessage(job["uuid"], "run", job["token"]), store=store, settings=settings, now=now)
    times = []
    for i in range(n):
        start = time.perf_counter()
        service.handle(
            EventMessage(job["uuid"], "update", job["token"], {"i": i}), store=store, settings=settings, now=now
        )
        times.append(time.perf_counter() - start)
    _summary("service.handle event (in-process)", times)
    print(f"{'':<44} => {n / sum(times):.0f} events/s on one connection")
    store.close()
    pymongo.MongoClient(uri).drop_database(database)


def main() -> None:
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cpus")
    bench_imports()
    uri, proc = _start_server()
    try:
        bench_reactor(uri)
        bench_in_process(uri)
    finally:
        if proc:
            proc.terminate()


if __name__ == "__main__":
    main()
