"""Benchmark: one watchdog pass over many jobs of which a few are overdue. Prints figures; asserts nothing.

The jobs are copies of one job made through the service (same document, fresh uuids),
written in bulk. Measured on each store:
- the pass that fails the overdue jobs (each: one index read, a head read, a log append);
- an idle pass right after (nothing due: one empty index range);
- the yardstick: reading every job's (uuid, state, updated), what a pass without the index would do.

Part `watch` of `make bench` (``bench/run.py --only watch``), or on its own:
    python bench/watch.py [JOBS] [OVERDUE]   (defaults 100000 and 1000; MONGODB_URI or secantusd-py)
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import sys
import tempfile
import time
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PIPELINE, ROOT, drop_databases, mongodb

from pipelinejobs import service, watch
from pipelinejobs.messages import CreateMessage
from pipelinejobs.settings import load_settings
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.sqlite import SqliteJobStore, _timestamp, dumps_document

T0 = datetime(2026, 11, 28, tzinfo=timezone.utc)
SETTINGS = load_settings({}, ROOT / "config.yml")  # created_seconds: 86400


def _job_uuid() -> str:
    return "107" + uuidlib.uuid4().hex[3:8] + "-" + str(uuidlib.uuid4())[9:]


def _template(store: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    store.save_pipeline({"uuid": PIPELINE["uuid"], "id": PIPELINE["id"], "components": []})
    message = CreateMessage(pipeline_uuid=PIPELINE["uuid"], archive_path="/p", data={"n": "template"})
    uuid = service.handle(message, store=store, settings=SETTINGS, now=T0)["uuid"]
    job, record = store.find_job(uuid), store.watch_record(uuid)
    return job, record


def _copies(job: dict[str, Any], record: dict[str, Any], n: int, overdue: int) -> list[tuple[dict, dict]]:
    out = []
    for i in range(n):
        uuid = _job_uuid()
        moment = T0 - timedelta(days=2) if i < overdue else T0  # overdue ones were created two days earlier
        doc = copy.deepcopy(job)
        doc.update(uuid=uuid, updated=moment, data={"n": i})
        doc["_properties"] = {**doc["_properties"], "created_date": moment, "modified_date": moment}
        rec = {**record, "uuid": uuid, "since": moment, "last_seen": moment}
        rec["due_at"] = moment + timedelta(days=1)
        out.append((doc, rec))
    return out


def _fill_sqlite(store: SqliteJobStore, rows: list[tuple[dict, dict]]) -> None:
    with sqlite3.connect(store.path) as conn:
        conn.executemany(
            "INSERT INTO jobs (uuid, state, pipeline_uuid, visible, updated, last_event, revision, logged, doc)"
            " VALUES (?, 'CREATED', ?, 1, ?, 'create', 0, 1, ?)",
            [
                (d["uuid"], d["pipeline_uuid"], _timestamp(d["updated"]), dumps_document({**d, "history": []}))
                for d, _ in rows
            ],
        )
        conn.executemany(
            "INSERT INTO watch (uuid, revision, due_at, logged_at, doc) VALUES (?, 0, ?, NULL, ?)",
            [(r["uuid"], _timestamp(r["due_at"]), dumps_document(r)) for _, r in rows],
        )


def _fill_mongo(store: MongoJobStore, rows: list[tuple[dict, dict]]) -> None:
    for start in range(0, len(rows), 5000):
        chunk = rows[start : start + 5000]
        store.jobs.insert_many([dict(d) for d, _ in chunk], ordered=False)
        store.watch.insert_many([dict(r) for _, r in chunk], ordered=False)


def _measure(store: Any, scan: Any, jobs: int, overdue: int) -> dict[str, Any]:
    now = T0 + timedelta(hours=1)  # the overdue ones ran out 23 h ago; the rest are due tomorrow
    started = time.perf_counter()
    report = watch.watch_pass(store, SETTINGS, now)
    busy = time.perf_counter() - started
    started = time.perf_counter()
    idle_report = watch.watch_pass(store, SETTINGS, now)
    idle = time.perf_counter() - started
    started = time.perf_counter()
    scanned = scan()
    yardstick = time.perf_counter() - started
    assert len(report.failed) == overdue and idle_report.judged == 0 and scanned == jobs + 1
    return {
        "jobs": jobs,
        "overdue": overdue,
        "pass_s": round(busy, 3),
        "per_failed_job_ms": round(1000 * busy / max(overdue, 1), 3),
        "idle_pass_ms": round(1000 * idle, 3),
        "full_scan_s (yardstick)": round(yardstick, 3),
        "idle_pass / full_scan": round(idle / yardstick, 5),
    }


def bench_watch(workdir: Path, uri: str, jobs: int = 100_000, overdue: int = 1000) -> list[str]:
    """Both stores (SQLite under ``workdir``, MongoDB at ``uri``); prints the figures, returns summary lines."""
    print(f"\nwatchdog pass over {jobs:,} jobs, {overdue:,} overdue")
    watch.log.setLevel(logging.ERROR)  # not the expected warning per failed job
    results = {}
    with SqliteJobStore(workdir / "watch.sqlite3") as store:
        job, record = _template(store)
        _fill_sqlite(store, _copies(job, record, jobs, overdue))

        def scan_sqlite() -> int:
            with sqlite3.connect(store.path) as conn:
                return len(conn.execute("SELECT uuid, state, updated FROM jobs").fetchall())

        results["embedded"] = _measure(store, scan_sqlite, jobs, overdue)
    name = f"bench_watch_{uuidlib.uuid4().hex[:8]}"
    try:
        with MongoJobStore(uri, name) as store:
            store.ensure_indexes()
            job, record = _template(store)
            _fill_mongo(store, _copies(job, record, jobs, overdue))

            def scan_mongo() -> int:
                return len(list(store.jobs.find({}, {"_id": 0, "uuid": 1, "state": 1, "updated": 1})))

            results["mongodb"] = _measure(store, scan_mongo, jobs, overdue)
    finally:
        drop_databases(uri, [name])
    print(json.dumps(results, indent=2))
    return [
        f"watchdog pass, {overdue:,} overdue of {jobs:,} jobs, {store_name}: {r['pass_s']:.2f} s"
        f" ({r['per_failed_job_ms']:.1f} ms per failed job); idle pass {r['idle_pass_ms']:.2f} ms"
        f" vs full scan {r['full_scan_s (yardstick)'] * 1000:.0f} ms"
        for store_name, r in results.items()
    ]


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    overdue = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp, mongodb(Path(tmp)) as uri:
        bench_watch(Path(tmp), uri, jobs, overdue)


if __name__ == "__main__":
    main()
