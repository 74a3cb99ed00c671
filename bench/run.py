"""`make bench`: what an event costs, as ratios to a raw yardstick measured in the same run.

Prints figures and a final table of issue 8's acceptance ratios with PASS/MISS;
asserts nothing about speed (the machine is noisy: the compared runs are
interleaved and medians are compared). It does fail (exit 1) when an event was
refused, when an answer skipped a revision, or when a job's stored revision or
history lacks the last event it accepted.

1. Imports: a fresh interpreter importing the reactor's modules.
2. On each store (embedded SQLite in a temporary directory, then MongoDB:
   secantusd-py on a free loopback port, or MONGODB_URI), `pipelinejobs serve`:
   - throughput: bursts of 8 client threads on 8 jobs, alternating with bursts of
     8 threads of the raw loop (MongoDB: pymongo ``find_one_and_update`` pushing a
     history entry on the same server; embedded: ``BEGIN IMMEDIATE``, read, write,
     ``COMMIT`` on a WAL SQLite file in the same directory); every burst starts on
     fresh jobs;
   - latency: a history of 10,000 events built in-process through
     ``service.handle`` on the store serve uses (its per-event cost is printed too),
     then sequential ``update`` events over serve on one keep-alive connection,
     alternating between that job and jobs of 10 events. The build stops short
     (and the ratio is a MISS, with a note) after --build-budget seconds (240),
     or once the big job's events are --growth-stop times (3) as slow in-process
     as small jobs' events interleaved with them.
3. Cold `reactor.py`: one event in a fresh process as Abaco runs it, alternating
   with a fresh process that imports pymongo and pings the server.
4. read (issue 11, bench/read.py): ``GET /jobs?state=RUNNING&limit=50`` over 100,000 jobs on each
   store against the raw query, and the ``/metrics`` scrape with 100,000 jobs against 1,000.
5. watch (issue 10, bench/watch.py): a watchdog pass over 100,000 jobs of which 1,000 are overdue.
6. notify (issue 10, bench/notify.py): on each store, serve's events/s with one active webhook
   subscription (a receiver on loopback answering 204) over serve's events/s without, bursts of
   8 clients alternating between the two servers; target 0.7x since webhooks go through httpx.
7. snakemake (bench/engines.py): a Snakemake run of 200 trivial rules reporting to serve
   (on each store) over the same run without ``--logger``, wall time, interleaved.

    .venv/bin/python bench/run.py [--only imports,latency,throughput,cold,read,watch,notify,snakemake]
                                  [--history N] [--build-budget S] [--growth-stop X]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # bench/ is not a package: found through the path above
    HEADERS,
    PIPELINE,
    ROOT,
    Backend,
    Job,
    KeepAlive,
    Ratio,
    drop_databases,
    embedded_backend,
    job_store,
    median,
    mongodb,
    mongodb_backend,
    new_job,
    send_update,
    serve,
    spread,
    timed_burst,
    update_in_process,
    utc_now,
    verify,
)
from read import bench_read
from watch import bench_watch

PARTS = ("imports", "latency", "throughput", "cold", "read", "watch", "notify", "snakemake")
SMALL = 10  # events of history on the small jobs
SMALL_JOBS = 20  # the small side rotates over these, so none grows far past SMALL
CLIENTS = 8
WORKERS = os.cpu_count() or 1  # serve's worker processes, as the README advises deploying it
GROWTH_AFTER = 30.0  # seconds of building before --growth-stop is looked at
PROBE_EVERY, PROBE_JOBS, PROBE_WINDOW = 20, 50, 10  # small-job events while building: 1 per 20, on 50 jobs
LATENCY_ROUNDS = 100  # one event to each side per round
LATENCY_CAP = 30.0  # seconds of latency rounds per store at most (at least MIN_ROUNDS)
MIN_ROUNDS = 15
THROUGHPUT_ROUNDS = 7  # each: a burst of serve and a burst of the raw loop
BURST = 2.0  # seconds per burst
COLD_ROUNDS = 15
PING = "import os, pymongo; pymongo.MongoClient(os.environ['MONGODB_URI']).admin.command('ping'); os._exit(0)"
REACTOR_MODULES = "import pipelinejobs.runtime, pipelinejobs.messages, pipelinejobs.service, pipelinejobs.store.mongo"


# -- 1. imports -----------------------------------------------------------------------------------
def timed_run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, done


def bench_imports(rounds: int = 10) -> None:
    """Interpreter floor, pymongo, the reactor's modules: fresh processes, interleaved."""
    print("\nimports (fresh interpreter)")
    kinds = {
        "python -c pass": "pass",
        "import pymongo": "import pymongo",
        "import the reactor's modules": REACTOR_MODULES,
    }
    times: dict[str, list[float]] = {label: [] for label in kinds}
    for _ in range(rounds):
        for label, code in kinds.items():
            elapsed, done = timed_run([sys.executable, "-c", code])
            if done.returncode != 0:
                raise RuntimeError(f"{label} failed: {done.stderr[-500:]}")
            times[label].append(elapsed)
    for label, seconds in times.items():
        print(spread(label, seconds))


# -- 2. one store -----------------------------------------------------------------------------
@dataclass
class Build:
    """The big job's history, built in-process, and what it cost."""

    job: Job
    times: list[float] = field(default_factory=list)  # seconds per big-job event
    probe_times: list[float] = field(default_factory=list)  # seconds per event on a small job, interleaved
    probes: list[Job] = field(default_factory=list)
    short: str = ""  # why the build stopped before the history asked for, if it did

    @property
    def events(self) -> int:
        return len(self.times) + 2  # create and run came first

    def history_cost(self) -> float:
        """Recent big-job events over recent small-job events: the in-process preview of the latency ratio."""
        return median(self.times[-PROBE_EVERY * PROBE_WINDOW :]) / median(self.probe_times[-PROBE_WINDOW:])


def build_history(store: Any, settings: Any, events: int, budget: float, growth_stop: float) -> Build:
    """A job with ``events`` events of history through service.handle, and every PROBE_EVERY events one event on
    a small job (rotating over PROBE_JOBS), so the cost of the job's own history is seen apart from the load
    of the machine and the size of the whole store.

    The build stops short after ``budget`` seconds, or once GROWTH_AFTER seconds have shown the big job's
    events ``growth_stop`` times as slow as the small jobs' (0: never): the 10,000 would then take many
    minutes, and the latency ratio is already answered.
    """
    build = Build(new_job(store, settings, 2), probes=[new_job(store, settings, 2) for _ in range(PROBE_JOBS)])
    start = time.monotonic()
    while build.events < events:
        began = time.perf_counter()
        build.job.note(update_in_process(store, settings, build.job, build.events))
        build.times.append(time.perf_counter() - began)
        if len(build.times) % PROBE_EVERY == 0:
            probe = build.probes[len(build.probe_times) % PROBE_JOBS]
            began = time.perf_counter()
            probe.note(update_in_process(store, settings, probe, build.events))
            build.probe_times.append(time.perf_counter() - began)
        elapsed = time.monotonic() - start
        if elapsed > budget:
            build.short = f"stopped at {build.events:,} of {events:,} events after {budget:.0f} s"
            break
        checked = len(build.times) % 100 == 0 and len(build.probe_times) >= 2 * PROBE_WINDOW
        if growth_stop and checked and elapsed > GROWTH_AFTER and build.history_cost() > growth_stop:
            build.short = (
                f"stopped at {build.events:,} of {events:,} events after {elapsed:.0f} s, its events"
                f" {build.history_cost():.1f}x as slow as a small job's in-process"
            )
            break
    return build


def measure_latency(url: str, small: list[Job], big: Job) -> tuple[list[float], list[float]]:
    """Sequential events on one keep-alive connection, alternating small and big (order swapped each round)."""
    small_times: list[float] = []
    big_times: list[float] = []
    with httpx.Client(headers=HEADERS, timeout=300) as http:
        for r in range(4):  # warm the connection and the server's caches
            send_update(http, url, small[r % len(small)], -1)
            send_update(http, url, big, -1)
        deadline = time.monotonic() + LATENCY_CAP
        for r in range(LATENCY_ROUNDS):
            sides = [(small[r % len(small)], small_times), (big, big_times)]
            for job, times in sides if r % 2 == 0 else reversed(sides):
                times.append(send_update(http, url, job, r))
            if r + 1 >= MIN_ROUNDS and time.monotonic() > deadline:
                break
    return small_times, big_times


def burst(ops: list[Callable[[int], None]], seconds: float) -> float:
    """Each op in its own thread, called over and over for ``seconds``; returns calls per second, all threads."""
    calls, elapsed = timed_burst(ops, seconds)
    return calls / elapsed


class RawMongo:
    """The MongoDB yardstick: per thread, pymongo ``find_one_and_update`` pushing a history entry onto its job.

    It writes with the write concern the job store is configured with (``settings.write_concern`` where the
    package has one, else the server's default, as the store then does), so the ratio weighs the work serve
    adds, not a durability the yardstick skips.
    """

    def __init__(
        self, uri: str, database: str, write_concern: dict[str, Any] | None, *, catalog_indexes: bool = False
    ) -> None:
        import pymongo
        from pymongo.write_concern import WriteConcern

        self.client: pymongo.MongoClient = pymongo.MongoClient(uri, tz_aware=True)
        concern = WriteConcern(**write_concern) if write_concern else None
        self.jobs = self.client.get_database(database, write_concern=concern).jobs
        self.jobs.create_index("uuid", unique=True)
        if catalog_indexes:  # what the store's jobs collection carries (`db init`): the read API's, the watch's
            from pipelinejobs.store.mongo import INDEXES

            for name, (collection, keys, options) in INDEXES.items():
                if collection == "jobs" and name != "jobs.uuid_unique":
                    self.jobs.create_index(keys, name=name.split(".", 1)[1], **options)
        options = ", ".join(f"{k}={v}" for k, v in (write_concern or {}).items()) or "default write concern"
        self.what = f"pymongo find_one_and_update ({options})"

    def fresh(self) -> list[Callable[[int], None]]:
        """New jobs, one per thread, so every burst starts from an empty history (as serve's side does);
        the last burst's are removed, so the yardstick's collection stays small."""
        self.jobs.delete_many({})
        uuids = [str(uuidlib.uuid4()) for _ in range(CLIENTS)]
        self.jobs.insert_many([raw_job(u, utc_now()) for u in uuids])
        return [self._op(u) for u in uuids]

    def _op(self, uuid: str) -> Callable[[int], None]:
        from pymongo import ReturnDocument

        def op(i: int) -> None:
            now = utc_now()
            entry = {"date": now, "data": {"i": i}, "name": "update", "uuid": str(uuidlib.uuid4())}
            found = self.jobs.find_one_and_update(
                {"uuid": uuid, "state": {"$in": ["RUNNING"]}},
                {
                    "$push": {"history": entry},
                    "$set": {"state": "RUNNING", "last_event": "update", "updated": now},
                    "$inc": {"_properties.revision": 1},
                },
                projection={"_id": False, "state": True, "_properties.revision": True},
                return_document=ReturnDocument.AFTER,
            )
            if found is None:
                raise RuntimeError(f"raw find_one_and_update matched no job {uuid}")

        return op

    def close(self) -> None:
        self.client.close()


class RawSqlite:
    """The embedded yardstick: per thread, a connection doing BEGIN IMMEDIATE; SELECT doc; UPDATE; COMMIT (WAL).

    The threads take turns at one lock, as an in-process store does: SQLite admits one writer at a time anyway,
    and without the lock a thread that finds the file busy sleeps in SQLite's busy handler (1 ms, 2 ms, 5 ms ...
    up to 100 ms), which on a loaded machine cut this loop to a fifth of its speed and made the ratio flatter serve.
    """

    what = "sqlite3 BEGIN IMMEDIATE; SELECT; UPDATE; COMMIT"

    def __init__(self, path: Path) -> None:
        self.connections = [
            sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False) for _ in range(CLIENTS)
        ]
        self.lock = threading.Lock()
        self.connections[0].execute("PRAGMA journal_mode=WAL")
        self.connections[0].execute("CREATE TABLE IF NOT EXISTS jobs (uuid TEXT PRIMARY KEY, doc TEXT NOT NULL)")

    def fresh(self) -> list[Callable[[int], None]]:
        uuids = [str(uuidlib.uuid4()) for _ in range(CLIENTS)]
        rows = [(u, json.dumps(raw_job(u, utc_now()), default=str)) for u in uuids]
        self.connections[0].execute("DELETE FROM jobs")
        self.connections[0].executemany("INSERT INTO jobs VALUES (?, ?)", rows)
        return [self._op(conn, u) for conn, u in zip(self.connections, uuids, strict=True)]

    def _op(self, conn: sqlite3.Connection, uuid: str) -> Callable[[int], None]:
        def op(i: int) -> None:
            with self.lock:
                conn.execute("BEGIN IMMEDIATE")
                (text,) = conn.execute("SELECT doc FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
                doc = json.loads(text)
                doc["last_event"], doc["updated"] = "update", utc_now().isoformat()
                doc["_properties"]["revision"] += 1
                changed = conn.execute("UPDATE jobs SET doc = ? WHERE uuid = ?", (json.dumps(doc), uuid)).rowcount
                conn.execute("COMMIT")
            if changed != 1:
                raise RuntimeError(f"raw UPDATE changed {changed} rows of job {uuid}")

        return op

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def raw_job(uuid: str, now: Any) -> dict[str, Any]:
    """A RUNNING job document of the usual shape, for the raw loops."""
    return {
        "pipeline_uuid": PIPELINE["uuid"],
        "archive_path": "/products/bench",
        "archive_system": "data-sd2e-community",
        "data": {"n": uuid[:8]},
        "generated_by": [PIPELINE["uuid"]],
        "uuid": uuid,
        "state": "RUNNING",
        "last_event": "run",
        "updated": now,
        "history": [],
        "_visible": True,
        "_properties": {"created_date": now, "modified_date": now, "revision": 1, "source": "bench"},
        "_admin": {"owner": "bench", "project": "bench", "tenant": "bench"},
    }


def measure_throughput(
    url: str, job_sets: list[list[Job]], raw: RawMongo | RawSqlite
) -> tuple[list[float], list[float]]:
    """Rounds of a serve burst (8 clients, a job each) and a raw burst, the order swapped each round.

    Each burst starts on fresh jobs (``job_sets[r]``; the first set warms up) and fresh raw documents,
    so a round's figures do not depend on how much earlier rounds wrote. Each serve burst also opens
    fresh keep-alive connections: with ``--workers``, where a connection lands (which worker accepts
    it) is a draw made once per connection, and 8 long-lived connections split 8/0 or 4/4 change
    the figure by a third; new connections per round make the median a median of draws.
    """
    clients: list[KeepAlive] = []

    def serve_ops(jobs: list[Job]) -> list[Callable[[int], None]]:
        for http in clients:
            http.close()
        clients[:] = [KeepAlive(url, HEADERS) for _ in range(CLIENTS)]
        return [
            (lambda i, http=http, job=job: send_update(http, url, job, i))
            for http, job in zip(clients, jobs, strict=True)
        ]

    try:
        burst(serve_ops(job_sets[0]), 0.5)  # warm up: threads, caches
        burst(raw.fresh(), 0.5)
        serve_rates: list[float] = []
        raw_rates: list[float] = []
        for r in range(THROUGHPUT_ROUNDS):
            sides = [(lambda r=r: serve_ops(job_sets[r + 1]), serve_rates), (raw.fresh, raw_rates)]
            for ops, rates in sides if r % 2 == 0 else reversed(sides):
                rates.append(burst(ops(), BURST))
        return serve_rates, raw_rates
    finally:
        for http in clients:
            http.close()


def throughput_ratio(backend: Backend, url: str, job_sets: list[list[Job]]) -> Ratio:
    """Serve, 8 clients on 8 jobs, against this store's raw loop on the same server or directory."""
    if backend.uri:
        raw_db = f"{backend.database}_raw"
        raw: RawMongo | RawSqlite = RawMongo(backend.uri, raw_db, getattr(backend.settings(), "write_concern", None))
        target = 0.6
    else:
        raw, target = RawSqlite(backend.workdir / "raw.sqlite3"), 0.3
    try:
        serve_rates, raw_rates = measure_throughput(url, job_sets, raw)
    finally:
        raw.close()
        if backend.uri:
            drop_databases(backend.uri, [raw_db])
    print(f"  serve, {CLIENTS} clients on {CLIENTS} jobs, events/s per burst: {per_burst(serve_rates)}")
    print(f"  raw {raw.what}, {CLIENTS} threads: {per_burst(raw_rates)}")
    if backend.uri:
        indexed_raw(backend, median(raw_rates))
    label = f"serve {CLIENTS} clients / raw loop, {backend.name}"
    return Ratio(label, median(serve_rates), median(raw_rates), "ev/s", target, False)


def indexed_raw(backend: Backend, bare: float) -> None:
    """For reading the MongoDB figure: the same raw loop on a collection with the store's jobs indexes.

    The yardstick's collection has one index; the catalog's jobs carry the read API's and the watch's
    as well, and some servers rewrite every index entry of a document on each update (secantusd-py
    does), so this line shows what those indexes alone cost the raw loop on this server.
    """
    raw_db = f"{backend.database}_raw_indexed"
    raw = RawMongo(backend.uri or "", raw_db, getattr(backend.settings(), "write_concern", None), catalog_indexes=True)
    try:
        burst(raw.fresh(), 0.5)
        rates = [burst(raw.fresh(), BURST) for _ in range(3)]
    finally:
        raw.close()
        drop_databases(backend.uri or "", [raw_db])
    print(
        f"  the same raw loop on a collection with the store's jobs indexes: {per_burst(rates)}"
        f" = {median(rates) / bare:.2f}x the one-index loop (not a target: where the server's own cost lies)"
    )


def per_burst(rates: list[float]) -> str:
    return ", ".join(f"{rate:.0f}" for rate in rates)


def latency_ratio(backend: Backend, url: str, small: list[Job], args: argparse.Namespace) -> tuple[Ratio, list[Job]]:
    """Build the big history in-process (serve waits idle), then time serve on it against the small jobs.

    Returns the ratio and the jobs written, for the check."""
    with job_store(backend) as store:
        start = time.perf_counter()
        build = build_history(store, backend.settings(), args.history, args.build_budget, args.growth_stop)
        took = time.perf_counter() - start
    print(f"  built a history of {build.events:,} events in-process in {took:.0f} s ({build.events / took:.0f} ev/s)")
    print(spread("service.handle, first 200 events (in-process)", build.times[:200]))
    print(spread(f"service.handle, last 200 events (to {build.events:,})", build.times[-200:]))
    print(spread("service.handle, small jobs meanwhile", build.probe_times))
    small_times, big_times = measure_latency(url, small, build.job)
    print(spread(f"serve, job with {SMALL} events", small_times))
    print(spread(f"serve, job with {build.events:,} events", big_times))
    label = f"latency {build.events:,} / {SMALL} events, {backend.name}"
    ratio = Ratio(label, median(big_times) * 1e3, median(small_times) * 1e3, "ms", 1.25, True, build.short)
    return ratio, [build.job, *build.probes]


def bench_store(backend: Backend, parts: set[str], args: argparse.Namespace) -> tuple[list[Ratio], list[str]]:
    """Serve on one store: throughput first (on a store without the big history), then latency.

    Returns the ratios and the problems found with accepted events.
    """
    print(f"\n{backend.label}")
    ratios: list[Ratio] = []
    settings = backend.settings()
    with job_store(backend) as store:
        store.save_pipeline(dict(PIPELINE))
        small = [new_job(store, settings, SMALL) for _ in range(SMALL_JOBS)] if "latency" in parts else []
        sets = THROUGHPUT_ROUNDS + 1 if "throughput" in parts else 0
        job_sets = [[new_job(store, settings, 2) for _ in range(CLIENTS)] for _ in range(sets)]
    jobs = [*small, *(job for jobs_of_a_round in job_sets for job in jobs_of_a_round)]
    print(f"  serve --workers {WORKERS} (one per core)")
    with serve(backend, WORKERS) as url:
        if "throughput" in parts:
            ratios.append(throughput_ratio(backend, url, job_sets))
        if "latency" in parts:
            ratio, built = latency_ratio(backend, url, small, args)
            ratios.append(ratio)
            jobs += built
    problems = verify(backend, jobs)
    print(f"  checked: {sum(job.accepted for job in jobs):,} events accepted, {len(problems)} problem(s)")
    return ratios, problems


# -- 3. cold reactor.py ---------------------------------------------------------------------------
def bench_cold(backend: Backend) -> tuple[list[Ratio], list[str]]:
    """One update event per fresh reactor.py process vs a fresh process that pings MongoDB, interleaved."""
    print("\ncold reactor.py event (MongoDB)")
    assert backend.uri is not None
    with job_store(backend) as store:
        store.save_pipeline(dict(PIPELINE))
        job = new_job(store, backend.settings(), 2)

    def reactor_env(i: int) -> dict[str, str]:  # as Abaco sets it (tests/conftest.py Reactor)
        return {
            **backend.env,
            "_abaco_actor_id": "pjbench0001",
            "_abaco_execution_id": "exec" + uuidlib.uuid4().hex[:9],
            "_abaco_api_server": "https://api.example.org",
            "_abaco_username": "bench",
            "_abaco_access_token": "abaco-access-token-bench",
            "_abaco_Content_Type": "application/json",
            "MSG": json.dumps({"uuid": job.uuid, "name": "update", "token": job.token, "data": {"i": i}}),
        }

    def reactor(i: int) -> float:
        elapsed, done = timed_run([sys.executable, str(ROOT / "reactor.py")], reactor_env(i))
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            job.refused[f"reactor.py exit {done.returncode}"] += 1
        else:
            job.note(json.loads(lines[-1]))
        return elapsed

    def ping(i: int) -> float:
        elapsed, done = timed_run([sys.executable, "-c", PING], {**backend.env, "MONGODB_URI": backend.uri or ""})
        if done.returncode != 0:
            raise RuntimeError(f"the ping process failed: {done.stderr[-500:]}")
        return elapsed

    reactor(-1), ping(-1)  # warm the page cache
    reactor_times: list[float] = []
    ping_times: list[float] = []
    for r in range(COLD_ROUNDS):
        sides = [(reactor, reactor_times), (ping, ping_times)]
        for run, times in sides if r % 2 == 0 else reversed(sides):
            times.append(run(r))
    print(spread("reactor.py, one update event", reactor_times))
    print(spread("python: import pymongo; ping", ping_times))
    problems = verify(backend, [job])
    label = "cold reactor.py event / pymongo ping process"
    ratio = Ratio(label, median(reactor_times) * 1e3, median(ping_times) * 1e3, "ms", 1.25, True)
    return [ratio], problems


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--history", type=int, default=10_000, help="events of history on the big job")
    parser.add_argument(
        "--build-budget", type=float, default=240.0, help="seconds per store to build that history at most"
    )
    parser.add_argument(
        "--growth-stop",
        type=float,
        default=3.0,
        help="stop building once the big job's events are this many times as slow as a small job's (0: never)",
    )
    args = parser.parse_args()
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if parts - set(PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(parts - set(PARTS)))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    started = time.monotonic()
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cpus; httpx {httpx.__version__}")
    ratios: list[Ratio] = []
    problems: list[str] = []
    if "imports" in parts:
        bench_imports()
    with tempfile.TemporaryDirectory(prefix="pjbench-") as tmp, ExitStack() as stack:
        embedded_dir, mongo_dir = Path(tmp, "embedded"), Path(tmp, "mongodb")
        embedded_dir.mkdir()
        mongo_dir.mkdir()
        backends = []
        if parts & {"latency", "throughput"}:
            backends.append(embedded_backend(embedded_dir))
        if parts & {"latency", "throughput", "cold", "read", "watch", "notify", "snakemake"}:
            uri = stack.enter_context(mongodb(mongo_dir))
            mongo = mongodb_backend(mongo_dir, uri)
            if os.environ.get("MONGODB_URI"):
                stack.callback(drop_databases, uri, [str(mongo.database)])
            if parts & {"latency", "throughput"}:
                backends.append(mongo)
        for backend in backends:
            found, wrong = bench_store(backend, parts, args)
            ratios += found
            problems += wrong
        if "cold" in parts:
            found, wrong = bench_cold(mongo)
            ratios += found
            problems += wrong
        if "read" in parts:
            found, wrong = bench_read(Path(tmp), uri)
            ratios += found
            problems += wrong
        if "notify" in parts:
            from notify import backends_for, bench_notify  # bench/notify.py

            for kind in ("embedded", "mongodb"):
                plain, notified = backends_for(kind, Path(tmp), uri)
                found, jobs = bench_notify(plain, notified)
                ratios += found
                problems += verify(plain, jobs["plain"]) + verify(notified, jobs["notified"])
                if os.environ.get("MONGODB_URI") and kind == "mongodb":
                    drop_databases(uri, [str(plain.database), str(notified.database)])
        if "snakemake" in parts:
            from engines import bench_snakemake  # bench/engines.py

            found, wrong = bench_snakemake(Path(tmp), uri)
            ratios += found
            problems += wrong
        figures = bench_watch(Path(tmp), uri) if "watch" in parts else []

    print(f"\nsummary ({time.monotonic() - started:.0f} s; medians of interleaved runs; not asserted)")
    for ratio in ratios:
        print(ratio.row())
    for figure in figures:
        print(figure)
    for ratio in ratios:
        if ratio.note:
            print(f"  note: {ratio.label}: {ratio.note}")
    if problems:
        print(f"\nBUG: {len(problems)} problem(s) with accepted events:")
        for problem in problems[:20]:
            print(f"  {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
