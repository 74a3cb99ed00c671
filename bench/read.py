"""Part `read` of `make bench`: the job list and ``/metrics`` over 100,000 jobs, on each store.

On each store (embedded SQLite, then MongoDB) two catalogs are filled in bulk the way bench/watch.py
fills one (a job made through the service, copied with fresh uuids and written straight into the
store's table or collection): 100,000 jobs and 1,000 jobs, spread over ten states (one job in ten
RUNNING), four pipelines, one job in a hundred hidden, created one second apart. Each catalog gets
its own `pipelinejobs serve`.

- metrics: ``GET /metrics`` on the 100,000-job server alternating with the 1,000-job one. A scrape
  reads the job counters the store keeps with every write (issue 20; ``metrics.jobs_refresh_seconds``
  is 0 here, so every scrape reads them); it must not count the jobs, so the two times must be about
  the same. Every scrape's ``pipelinejobs_jobs`` must add up to the catalog's visible jobs. The
  catalogs are written in bulk behind the counters' back (straight into the table or collection), so
  on MongoDB the counts appear once serve's recount at start has run; a recount of the big catalog
  is then timed in-process (what serve pays every ``metrics.recount_seconds``).
- state changes: what keeping the counters costs the event path, per state change: ``service.handle``
  in-process walking fresh jobs through six state changes (run, finish, validate, validated,
  finalize, retire), in interleaved batches on two stores of the same kind, one with the counters
  and one without (SQLite: the ``job_counts`` triggers dropped; MongoDB: ``count_move`` skipped). Events
  that keep the state (the common ``update``) do not touch the counters.
- list: ``GET /jobs?state=RUNNING&limit=50`` on the 100,000 jobs, alternating with the raw query that
  answers it, written here on its own (not by calling the store): pymongo ``find`` with the same
  filter (state, not hidden), projection, sort (created desc, uuid desc) and limit, or sqlite3's
  SELECT of the same columns with the same WHERE, ORDER BY and LIMIT on the same file. Also in the
  rounds: the store's ``query_jobs`` called in-process, which tells the store's cost from HTTP's.
  The order is shuffled each round; medians are compared. All three must list the same 50 jobs.
  The HTTP time is the round trip to the last byte of the answer (its JSON is parsed afterwards).

Usage (on its own): python bench/read.py [JOBS]   (default 100000; MONGODB_URI or secantusd-py)
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    HEADERS,
    PIPELINE,
    Backend,
    Ratio,
    drop_databases,
    embedded_backend,
    job_store,
    median,
    mongodb,
    mongodb_backend,
    serve,
    spread,
)

JOBS, SMALL_JOBS = 100_000, 1_000
LIMIT = 50
#: one job in ten in each state; RUNNING is one of the ten
STATES = (
    "CREATED",
    "RUNNING",
    "FINISHED",
    "VALIDATING",
    "VALIDATED",
    "FINALIZED",
    "FAILED",
    "REJECTED",
    "INDEXING",
    "RETIRED",
)
LAST_EVENT = dict(zip(STATES, ("create", "run", "finish", "validate", "validated", "finalize", "fail",
                               "reject", "index", "retire"), strict=True))  # fmt: skip
HIDDEN_EVERY = 100  # job i is hidden when i % 100 == 21 (a RUNNING job: the list's visibility filter matters)
PIPELINES = [PIPELINE["uuid"]] + [f"1065084{k}-1baa-55c5-a481-5e945b19c065" for k in (5, 6, 7)]
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)  # the first copy's creation time; each next one a second later
CHUNK = 5000
LIST_ROUNDS, LIST_CAP = 200, 25.0  # rounds of the list at most, seconds per store at most
SCRAPES, SCRAPE_CAP = 60, 15.0
MIN_ROUNDS = 20
LIST_PATH = f"/jobs?state=RUNNING&limit={LIMIT}"

# -- the raw yardsticks: the list's query written out here, independently of the stores' code -------
CREATED_KEY = "_properties.created_date"
RAW_MONGO_FILTER = {"state": "RUNNING", "_visible": {"$ne": False}}
RAW_MONGO_PROJECTION = {
    "_id": 0,
    **{key: 1 for key in ("uuid", "state", "pipeline_uuid", "archive_path", "archive_system", "session", "agent")},
    **{key: 1 for key in ("task", "child_of", "last_event", "updated", "_visible", CREATED_KEY)},
    "_properties.revision": 1,
}
RAW_MONGO_SORT = [(CREATED_KEY, -1), ("uuid", -1)]
_CREATED_SQL = """json_extract(doc, '$._properties.created_date."$date"')"""  # as the store's index has it
RAW_SQL = (
    "SELECT uuid, state, pipeline_uuid, visible, updated, last_event, revision,"
    " json_extract(doc, '$.archive_path'), json_extract(doc, '$.archive_system'), json_extract(doc, '$.session'),"
    " json_extract(doc, '$.agent'), json_extract(doc, '$.task'), json_extract(doc, '$.child_of'),"
    f" {_CREATED_SQL} FROM jobs WHERE state = 'RUNNING' AND visible = 1"
    f" ORDER BY {_CREATED_SQL} DESC, uuid DESC LIMIT {LIMIT}"
)


class RawMongoList:
    """pymongo ``find(...).sort(...).limit(50)`` on the catalog serve reads; returns the uuids listed."""

    what = "pymongo find(state RUNNING, not hidden).sort(created, uuid).limit(50), same projection"

    def __init__(self, uri: str, database: str) -> None:
        import pymongo

        self.client: pymongo.MongoClient = pymongo.MongoClient(uri, tz_aware=True)
        self.jobs = self.client[database].jobs

    def __call__(self) -> list[str]:
        found = self.jobs.find(RAW_MONGO_FILTER, RAW_MONGO_PROJECTION).sort(RAW_MONGO_SORT).limit(LIMIT)
        return [doc["uuid"] for doc in found]

    def close(self) -> None:
        self.client.close()


class RawSqliteList:
    """sqlite3 SELECT of the list's columns, same WHERE/ORDER BY/LIMIT, on serve's file; returns the uuids."""

    what = "sqlite3 SELECT the summary columns WHERE state, visible ORDER BY created, uuid LIMIT 50"

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False)

    def __call__(self) -> list[str]:
        return [row[0] for row in self.conn.execute(RAW_SQL).fetchall()]

    def plan(self) -> str:
        return "; ".join(row[-1] for row in self.conn.execute(f"EXPLAIN QUERY PLAN {RAW_SQL}"))

    def close(self) -> None:
        self.conn.close()


# -- the catalogs -------------------------------------------------------------------------------------
def _template(store: Any, settings: Any) -> dict[str, Any]:
    """The pipelines, and one job made through the service, whose document the copies take."""
    from pipelinejobs import service
    from pipelinejobs.messages import CreateMessage

    for k, uuid in enumerate(PIPELINES):
        store.save_pipeline({"uuid": uuid, "id": f"tacc/bench-read-{k}:1", "components": []})
    message = CreateMessage(pipeline_uuid=PIPELINES[0], archive_path="/products/bench/read", data={"n": "template"})
    outcome = service.handle(message, store=store, settings=settings, now=T0 - timedelta(days=1))
    job = store.find_job(outcome["uuid"])
    assert job is not None
    return job


def _copies(template: dict[str, Any], n: int) -> Iterator[list[dict[str, Any]]]:
    """The ``n`` job documents, CHUNK at a time (100,000 whole documents at once would take ~1 GB)."""
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        moment = T0 + timedelta(seconds=i)
        state = STATES[i % len(STATES)]
        doc = copy.deepcopy(template)
        doc.update(
            uuid="107" + uuidlib.uuid4().hex[3:8] + "-" + str(uuidlib.uuid4())[9:],
            state=state,
            pipeline_uuid=PIPELINES[(i // len(STATES)) % len(PIPELINES)],
            archive_path=f"/products/bench/read/{i}",
            last_event=LAST_EVENT[state],
            updated=moment,
            history=[],
            data={"n": i},
            _visible=i % HIDDEN_EVERY != 21,
        )
        doc["_properties"] = {**doc["_properties"], "created_date": moment, "modified_date": moment, "revision": 1}
        chunk.append(doc)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def visible_jobs(n: int) -> int:
    """Visible jobs in a catalog of ``n`` copies, plus the template (visible)."""
    return n - len(range(21, n, HIDDEN_EVERY)) + 1


def fill(backend: Backend, n: int) -> float:
    """Write ``n`` copies in bulk (plus the template through the service); returns the seconds it took."""
    from pipelinejobs.store.sqlite import _timestamp, dumps_document

    started = time.perf_counter()
    with job_store(backend) as store:
        template = _template(store, backend.settings())
        for chunk in _copies(template, n):
            if backend.uri:
                store.jobs.insert_many(chunk, ordered=False)
                continue
            rows = [
                (d["uuid"], d["state"], d["pipeline_uuid"], int(d["_visible"]), _timestamp(d["updated"]), *tail)
                for d in chunk
                for tail in [(d["last_event"], d["_properties"]["revision"], dumps_document(d))]
            ]
            with sqlite3.connect(store.path) as conn:
                conn.executemany(
                    "INSERT INTO jobs (uuid, state, pipeline_uuid, visible, updated, last_event, revision, logged, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    rows,
                )
    return time.perf_counter() - started


# -- HTTP -----------------------------------------------------------------------------------------------
class Reader:
    """GETs on one keep-alive connection (http.client: cheaper on the shared cores than httpx)."""

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)

    def get(self, path: str) -> tuple[float, int, bytes]:
        """(seconds to the answer's last byte, status, body).

        serve closes a keep-alive connection idle for 5 s (uvicorn's default), which the slow in-process
        sides of a round can leave it: such a request is sent again on a new connection, and timed anew.
        """
        try:
            return self._get(path)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            return self._get(path)

    def _get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        self.conn.request("GET", path, headers={**HEADERS, "Connection": "keep-alive"})
        answer = self.conn.getresponse()
        body = answer.read()
        return time.perf_counter() - started, answer.status, body

    def close(self) -> None:
        self.conn.close()


def scrape_totals(body: bytes) -> tuple[int, float]:
    """(sum of ``pipelinejobs_jobs``, ``pipelinejobs_jobs_snapshot_duration_seconds``) of a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    jobs, duration = 0, float("nan")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "pipelinejobs_jobs":
            jobs = int(sum(sample.value for sample in family.samples))
        elif family.name == "pipelinejobs_jobs_snapshot_duration_seconds":
            duration = family.samples[0].value
    return jobs, duration


def wait_for_totals(reader: Reader, expected: int, timeout: float = 300.0) -> None:
    """Until a scrape counts ``expected`` jobs (on MongoDB: once serve's recount at start has run)."""
    deadline = time.monotonic() + timeout
    while True:
        _, status, body = reader.get("/metrics")
        if status == 200 and scrape_totals(body)[0] == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"/metrics did not count {expected:,} jobs within {timeout:.0f} s")
        time.sleep(0.5)


def measure_scrapes(big: Reader, small: Reader, expected: tuple[int, int], problems: list[str]) -> list[list[float]]:
    """Scrapes alternating between the two servers (order swapped each round); every one's counts checked."""
    times: list[list[float]] = [[], []]
    durations: list[float] = [float("nan")] * 2
    for reader in (big, small):
        for _ in range(5):
            reader.get("/metrics")
    deadline = time.monotonic() + SCRAPE_CAP
    for r in range(SCRAPES):
        sides = [0, 1] if r % 2 == 0 else [1, 0]
        for side in sides:
            elapsed, status, body = (big, small)[side].get("/metrics")
            times[side].append(elapsed)
            counted, durations[side] = scrape_totals(body) if status == 200 else (-1, float("nan"))
            if counted != expected[side] and len(problems) < 20:
                problems.append(f"/metrics: HTTP {status}, counted {counted:,} jobs, not {expected[side]:,}")
        if r + 1 >= MIN_ROUNDS and time.monotonic() > deadline:
            break
    for side, n in enumerate(expected):
        print(f"  reading the counters behind it took {1000 * durations[side]:.2f} ms with {n:,} visible jobs")
    return times


def measure_list(reader: Reader, store: Any, raw: Callable[[], list[str]], problems: list[str]) -> list[list[float]]:
    """Rounds of GET /jobs, the store's query_jobs in-process, the raw query and GET /healthz (serve's floor),
    in a shuffled order each round; returns their times in that order."""
    from pipelinejobs.store.listing import JobFilter

    where = JobFilter(states=("RUNNING",))
    times: list[list[float]] = [[], [], [], []]

    def over_http() -> list[str]:
        elapsed, status, body = reader.get(LIST_PATH)
        times[0].append(elapsed)
        if status != 200:
            return [f"HTTP {status}"]
        return [job["uuid"] for job in json.loads(body)["result"]["jobs"] if job["state"] == "RUNNING"]

    def in_process() -> list[str]:
        started = time.perf_counter()
        page = store.query_jobs(where, limit=LIMIT)
        times[1].append(time.perf_counter() - started)
        return [job["uuid"] for job in page.jobs]

    def yardstick() -> list[str]:
        started = time.perf_counter()
        uuids = raw()
        times[2].append(time.perf_counter() - started)
        return uuids

    def floor() -> list[str]:
        elapsed, status, _ = reader.get("/healthz")
        times[3].append(elapsed)
        return [] if status == 200 else [f"HTTP {status}"]

    sides = [over_http, in_process, yardstick, floor]
    listed: list[list[str]] = [[] for _ in sides]
    for side in sides:  # warm up: connections, caches, the page cache
        for _ in range(3):
            side()
    for series in times:
        series.clear()
    deadline = time.monotonic() + LIST_CAP
    order = list(range(len(sides)))
    shuffle = random.Random(11).shuffle  # a fresh order each round: after a GET, serve still logs and counts it,
    for r in range(LIST_ROUNDS):  # which a fixed rotation would always charge to the same side
        shuffle(order)
        for side in order:
            listed[side] = sides[side]()
        same = listed[0] == listed[1] == listed[2] and len(listed[2]) == LIMIT and not listed[3]
        if not same and len(problems) < 20:
            problems.append(f"GET /jobs, query_jobs and the raw query differ: {[len(x) for x in listed[:3]]} jobs")
        if r + 1 >= MIN_ROUNDS and time.monotonic() > deadline:
            break
    return times


def start(stack: ExitStack, backend: Backend, visible: int) -> Reader:
    """Serve ``backend`` for the length of ``stack``; returns a reader once /metrics counts its jobs."""
    reader = Reader(stack.enter_context(serve(backend)).split("/actors/")[0])
    stack.callback(reader.close)
    wait_for_totals(reader, visible)
    return reader


def bench_read_store(backends: tuple[Backend, Backend], sizes: tuple[int, int]) -> tuple[list[Ratio], list[str]]:
    """One store: fill both catalogs, serve each, scrape both, then time the list on the big one."""
    big, small = backends
    print(f"\n{big.label}: job list and /metrics over {sizes[0]:,} jobs ({sizes[1]:,} for the small catalog)")
    for backend, n in zip(backends, sizes, strict=True):
        took = fill(backend, n)
        print(f"  wrote {n:,} jobs in bulk in {took:.0f} s")
    expected = (visible_jobs(sizes[0]), visible_jobs(sizes[1]))
    problems: list[str] = []
    with ExitStack() as stack:
        reader = start(stack, big, expected[0])
        with ExitStack() as small_stack:  # the small server only for the scrapes
            small_reader = start(small_stack, small, expected[1])
            big_times, small_times = measure_scrapes(reader, small_reader, expected, problems)
        print(spread(f"GET /metrics, {sizes[0]:,} jobs", big_times))
        print(spread(f"GET /metrics, {sizes[1]:,} jobs", small_times))
        store = stack.enter_context(job_store(big))
        if big.uri:
            raw: RawMongoList | RawSqliteList = RawMongoList(big.uri, str(big.database))
        else:
            raw = RawSqliteList(Path(big.env["_REACTOR_STORE_SQLITE_PATH"]))
            print(f"  raw query plan: {raw.plan()}")
        stack.callback(raw.close)
        http_times, store_times, raw_times, floor_times = measure_list(reader, store, raw, problems)
        recount = store.recount_jobs(settle=0)  # its cost (nothing writes meanwhile); last: see Reader.get
        print(
            f"  a recount of {expected[0]:,} visible jobs took {recount.seconds:.2f} s"
            f" (applied: {recount.applied}; corrections: {sum(abs(n) for n in recount.corrections.values())})"
        )
    print(spread(f"GET {LIST_PATH}", http_times))
    print(spread("store.query_jobs in-process", store_times))
    print(spread("raw query", raw_times) + f"  ({raw.what})")
    print(spread("GET /healthz (serve's floor, no store)", floor_times))
    name, us = big.name, 1e6  # microseconds: the embedded store's raw query takes a fraction of a millisecond
    http_us, store_us, raw_us = (median(times) * us for times in (http_times, store_times, raw_times))
    ratios = [
        Ratio(f"GET {LIST_PATH} / raw, {name}", http_us, raw_us, "us", 1.5, True),
        Ratio(f"  query_jobs in-process / raw, {name}", store_us, raw_us, "us", 1.5, True),
        Ratio(
            f"/metrics scrape {sizes[0]:,} / {sizes[1]:,} jobs, {name}",
            median(big_times) * us,
            median(small_times) * us,
            "us",
            1.5,
            True,
        ),
    ]
    return ratios, problems


# -- what the counters cost a state change --------------------------------------------------------------
PATH_EVENTS = ("run", "finish", "validate", "validated", "finalize", "retire")  # six state changes
CHANGE_JOBS, CHANGE_BATCH = 150, 25  # jobs per side; events per timed batch


def _without_counters(store: Any) -> None:
    """The yardstick: the same store with the counters' work taken out (a scratch catalog of its own)."""
    if store.backend == "sqlite":
        with store._transaction() as conn:
            for trigger in ("jobs_count_insert", "jobs_count_delete", "jobs_count_update"):
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    else:
        store.count_move = lambda *args: None  # what the event path calls after a state change


def bench_state_changes(backends: tuple[Backend, Backend]) -> tuple[Ratio, list[str]]:
    """Per state change, ``service.handle`` in-process with the counters (first backend) and without (second)."""
    from pipelinejobs import service
    from pipelinejobs.messages import CreateMessage, EventMessage

    problems: list[str] = []
    with ExitStack() as stack:
        sides = []
        for k, backend in enumerate(backends):
            store = stack.enter_context(job_store(backend))
            settings = backend.settings()
            store.save_pipeline(dict(PIPELINE))
            if k == 1:
                _without_counters(store)
            jobs = []
            for i in range(CHANGE_JOBS):
                message = CreateMessage(PIPELINE["uuid"], "/products/bench/changes", {"n": i, "side": k})
                made = service.handle(message, store=store, settings=settings, now=datetime.now(timezone.utc))
                jobs.append((made["uuid"], made["token"]))
            steps = [(job, name) for name in PATH_EVENTS for job in jobs]  # every job one step, then the next
            sides.append((store, settings, steps))
        times: list[list[float]] = [[], []]
        for start in range(0, len(sides[0][2]), CHANGE_BATCH):
            for k in [0, 1] if (start // CHANGE_BATCH) % 2 == 0 else [1, 0]:
                store, settings, steps = sides[k]
                batch = steps[start : start + CHANGE_BATCH]
                began = time.perf_counter()
                for (uuid, token), name in batch:
                    out = service.handle(
                        EventMessage(uuid, name, token), store=store, settings=settings, now=datetime.now(timezone.utc)
                    )
                    if out.get("status") != "ok" and len(problems) < 20:
                        problems.append(f"state change {name}: {out}")
                times[k].append((time.perf_counter() - began) / len(batch))
        counted = sides[0][0]
        if {key: n for key, n in counted.job_counts().items() if n} != counted.job_totals():
            problems.append("the job counters disagree with a count of the jobs after the state changes")
    name, us = backends[0].name, 1e6
    with_us, without_us = median(times[0]) * us, median(times[1]) * us
    print(
        f"  a state change (service.handle in-process): {with_us:.0f} us with the counters, {without_us:.0f} us"
        f" without; {with_us - without_us:+.0f} us each ({len(times[0]) * CHANGE_BATCH:,} state changes a side)"
    )
    return Ratio(f"state change with job counters / without, {name}", with_us, without_us, "us", 1.15, True), problems


def bench_read(workdir: Path, uri: str, sizes: tuple[int, int] = (JOBS, SMALL_JOBS)) -> tuple[list[Ratio], list[str]]:
    """Both stores, each with its own catalogs under ``workdir`` (SQLite files, MongoDB databases at ``uri``)."""
    ratios: list[Ratio] = []
    problems: list[str] = []
    for kind in ("embedded", "mongodb"):
        backends = []
        for size in sizes:
            where = workdir / f"read-{kind}-{size}"
            where.mkdir()
            backends.append(embedded_backend(where) if kind == "embedded" else mongodb_backend(where, uri))
            backends[-1].env["_REACTOR_METRICS_JOBS_REFRESH_SECONDS"] = "0"  # every scrape reads the counters
        changes = []
        for side in ("counted", "uncounted"):
            where = workdir / f"changes-{kind}-{side}"
            where.mkdir()
            changes.append(embedded_backend(where) if kind == "embedded" else mongodb_backend(where, uri))
        try:
            found, wrong = bench_read_store((backends[0], backends[1]), sizes)
            print(f"\n{changes[0].label}: what keeping the job counters costs a state change")
            ratio, wrong_changes = bench_state_changes((changes[0], changes[1]))
        finally:
            if kind == "mongodb":
                drop_databases(uri, [str(b.database) for b in [*backends, *changes]])
        ratios += [*found, ratio]
        problems += wrong + wrong_changes
    return ratios, problems


def main() -> int:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else JOBS
    with tempfile.TemporaryDirectory(prefix="pjbench-read-") as tmp, mongodb(Path(tmp)) as uri:
        ratios, problems = bench_read(Path(tmp), uri, (jobs, min(SMALL_JOBS, jobs)))
    print()
    for ratio in ratios:
        print(ratio.row())
    for problem in problems:
        print(f"BUG: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
