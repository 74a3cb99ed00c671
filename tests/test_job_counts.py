"""Job counts that follow the jobs (issue 20), on both stores, in-process: the counters kept with every
write that moves a job, and their recount. tests/test_serve_as_shipped.py scrapes them from a live serve.

The expected counts come from the jobs each test made and moved, and from the store's own aggregate
(``job_totals``: a GROUP BY / $group over the jobs, a separate path from the counters).
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pipelinejobs import documents, retention, service
from pipelinejobs.errors import PipelineJobsError
from pipelinejobs.messages import CreateMessage, DeleteMessage, EventMessage
from pipelinejobs.server import metrics
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.records import Append, EventRecord
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT

P = EXAMPLE_PIPELINE_UUID
OTHER = "10650844-1baa-55c5-a481-0000000000c0"
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings({}, ROOT / "config.yml")


@pytest.fixture
def store(store: JobStore) -> JobStore:
    for uuid in (P, OTHER):
        store.save_pipeline({"uuid": uuid, "id": f"p-{uuid[-4:]}", "components": []})
    return store


def create(store: JobStore, settings: Settings, n: int, pipeline: str = P) -> tuple[str, str]:
    message = CreateMessage(pipeline_uuid=pipeline, archive_path="/products/c", data={"n": n})
    out = service.handle(message, store=store, settings=settings, now=T0)
    return out["uuid"], out["token"]


def event(store: JobStore, settings: Settings, job: tuple[str, str], name: str, **fields: Any) -> dict[str, Any]:
    message = EventMessage(uuid=job[0], name=name, token=job[1], **fields)
    return service.handle(message, store=store, settings=settings, now=fields.pop("now", T0))


def nonzero(counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in counts.items() if n}


# -- the counters, in-process ----------------------------------------------------------------------
def test_counts_follow_creates_transitions_hides_and_deletes(store: JobStore, settings: Settings) -> None:
    a, b, c, d = (create(store, settings, n) for n in range(4))
    other = create(store, settings, 9, pipeline=OTHER)
    assert nonzero(store.job_counts()) == {("CREATED", P): 4, ("CREATED", OTHER): 1}
    event(store, settings, a, "run")
    event(store, settings, a, "update", data={"still": "running"})  # no state change: counts unchanged
    event(store, settings, b, "run")
    event(store, settings, b, "finish")
    event(store, settings, other, "fail")
    assert nonzero(store.job_counts()) == {
        ("CREATED", P): 2,
        ("RUNNING", P): 1,
        ("FINISHED", P): 1,
        ("FAILED", OTHER): 1,
    }
    service.handle(DeleteMessage(uuid=c[0], token=c[1], force=False), store=store, settings=settings, now=T0)
    service.handle(DeleteMessage(uuid=d[0], token=d[1], force=True), store=store, settings=settings, now=T0)
    service.handle(DeleteMessage(uuid=b[0], token=b[1], force=True), store=store, settings=settings, now=T0)
    counts = store.job_counts()
    assert nonzero(counts) == {("RUNNING", P): 1, ("FAILED", OTHER): 1} == store.job_totals()
    assert counts[("CREATED", P)] == 0 and counts[("FINISHED", P)] == 0  # a series that emptied reads 0
    assert store.recount_jobs(settle=0.1).corrections == {}  # nothing to repair


def test_a_replayed_delivery_and_a_refused_event_move_nothing(store: JobStore, settings: Settings) -> None:
    job = create(store, settings, 1)
    for _ in range(3):
        event(store, settings, job, "run", event_id="callback-1")
    with pytest.raises(PipelineJobsError):
        event(store, settings, job, "validated")  # not allowed while RUNNING
    assert nonzero(store.job_counts()) == {("RUNNING", P): 1} == store.job_totals()


def test_the_watchdog_and_retention_move_the_counts(store: JobStore, settings: Settings) -> None:
    from pipelinejobs import watch

    late = settings.override("deadlines", created_seconds=60)
    create(store, late, 1)
    retired = create(store, late, 2)
    for name in ("run", "finish", "retire"):
        event(store, late, retired, name)
    report = watch.watch_pass(store, late, T0 + timedelta(minutes=5))
    assert len(report.failed) == 1
    assert nonzero(store.job_counts()) == {("FAILED", P): 1, ("RETIRED", P): 1}
    kept = late.override("retention", days=1)
    purged = retention.retention_pass(store, kept, T0 + timedelta(days=2))
    assert purged.purged == [retired[0]]
    assert nonzero(store.job_counts()) == {("FAILED", P): 1} == store.job_totals()


def test_a_recount_takes_in_jobs_the_counters_never_saw(store: JobStore, settings: Settings) -> None:
    """A job written straight to the catalog (python-datacatalog's way, or a writer that died between its
    job update and the counters') is counted by the next recount, which says what it corrected."""
    create(store, settings, 1)
    foreign = documents.new_job(
        uuid=str(uuidlib.uuid4()),
        pipeline_uuid=OTHER,
        archive_path="/products/foreign",
        archive_system=None,
        data={"by": "datacatalog"},
        session=None,
        child_of=[],
        identity=settings.identity,
        now=T0,
    )
    if isinstance(store, MongoJobStore):
        store.jobs.insert_one(dict(foreign, state="RUNNING"))  # no counter moves
        assert nonzero(store.job_counts()) == {("CREATED", P): 1}
    else:  # the triggers count any row, whoever writes it: lose the counts themselves instead
        store.insert_job(dict(foreign, state="RUNNING"), {"uuid": foreign["uuid"], "action": "create"})
        with store._transaction() as conn:
            conn.execute("DELETE FROM job_counts")
        assert store.job_counts() == {}
    done = metrics.recount(store, settle=0.1)  # nothing moves meanwhile here
    assert done.applied
    expected = {("CREATED", P): 1, ("RUNNING", OTHER): 1}
    assert nonzero(store.job_counts()) == expected == store.job_totals()
    corrected = expected if not isinstance(store, MongoJobStore) else {("RUNNING", OTHER): 1}
    assert done.corrections == corrected
    assert store.recount_jobs(settle=0.1).corrections == {}


def test_serves_recount_loop_repairs_the_counts(store: JobStore, settings: Settings) -> None:
    create(store, settings, 1)
    if isinstance(store, MongoJobStore):
        store._counts.delete_many({})
    else:
        with store._transaction() as conn:
            conn.execute("DELETE FROM job_counts")
    stop = metrics.start_recounting(store, 0.2)
    try:
        deadline = time.monotonic() + 10
        while nonzero(store.job_counts()) != {("CREATED", P): 1} and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop()
    assert nonzero(store.job_counts()) == {("CREATED", P): 1}


@pytest.fixture
def mongo_stores(mongodb_uri: str, database_name: str, db: Any) -> Iterator[list[MongoJobStore]]:
    """Two MongoDB stores on one fresh catalog, as two processes have them (the embedded store recounts
    inside its write lock, and its counter keys are plain columns: these cases are MongoDB's alone)."""
    stores = [MongoJobStore(mongodb_uri, database_name) for _ in range(2)]
    stores[0].ensure_indexes()
    stores[0].save_pipeline({"uuid": P, "id": "p", "components": []})
    yield stores
    for store in stores:
        store.close()


def test_a_mongodb_recount_the_jobs_moved_under_changes_nothing(
    mongo_stores: list[MongoJobStore], settings: Settings
) -> None:
    """The compare-and-set: a job that moves while the recount counts must not be lost or counted twice."""
    store, writer = mongo_stores  # the writer: another process's store, moving the job during the count
    job = create(store, settings, 1)
    aggregate = store.job_totals

    def count_while_a_job_moves() -> dict[tuple[str, str], int]:
        counted = aggregate()
        event(writer, settings, job, "run")
        return counted

    store.job_totals = count_while_a_job_moves  # type: ignore[method-assign]
    try:
        raced = store.recount_jobs(settle=0.1)
    finally:
        del store.job_totals
    assert raced.applied is False and raced.corrections == {}
    assert nonzero(store.job_counts()) == {("RUNNING", P): 1} == store.job_totals()
    assert store.recount_jobs(settle=0.1).applied is True


def test_a_mongodb_recount_waits_for_a_move_whose_job_it_already_counted(
    mongo_stores: list[MongoJobStore], settings: Settings
) -> None:
    """A job updated before the count saw it, its counters' move landing just after the count: without the
    settle time the recount would set a count that includes the move, and the move would add it again."""
    store, writer = mongo_stores
    uuid, _ = create(store, settings, 1)
    aggregate = store.job_totals
    late: list[threading.Thread] = []

    def count_between_a_jobs_update_and_its_move() -> dict[tuple[str, str], int]:
        record = EventRecord(uuid=uuid, seq=1, event_uuid=str(uuidlib.uuid4()), name="run", date=T0, data=None,
                             state="RUNNING")  # fmt: skip
        assert writer.append_event(record, expected_revision=0).status is Append.APPLIED  # the job's own update
        counted = aggregate()  # sees the job RUNNING
        move = threading.Timer(0.2, writer.count_move, (P, "CREATED", "RUNNING"))  # lands during the settle time
        move.start()
        late.append(move)
        return counted

    store.job_totals = count_between_a_jobs_update_and_its_move  # type: ignore[method-assign]
    try:
        raced = store.recount_jobs(settle=1.0)
    finally:
        del store.job_totals
        for move in late:
            move.join()
    assert raced.applied is False
    assert nonzero(store.job_counts()) == {("RUNNING", P): 1} == store.job_totals()


def test_a_mongodb_recount_interrupted_in_its_settle_time_changes_nothing(
    mongo_stores: list[MongoJobStore], settings: Settings
) -> None:
    """A stopping serve ends its recount's wait (``wait`` answers True, as a set ``Event.wait`` does): the
    recount is abandoned, not applied with a settle time that was cut short."""
    store = mongo_stores[0]
    create(store, settings, 1)
    store._counts.delete_many({})  # counters off: a recount would correct them
    waited: list[float] = []

    def stopped(seconds: float) -> bool:
        waited.append(seconds)
        return True

    abandoned = store.recount_jobs(settle=3600, wait=stopped)
    assert waited == [3600] and abandoned.applied is False and abandoned.corrections == {}
    assert nonzero(store.job_counts()) == {}  # nothing was set
    assert nonzero(store.recount_jobs(settle=0).corrections) == {("CREATED", P): 1}


def test_mongodb_counter_keys_survive_any_state_or_pipeline_name(mongo_stores: list[MongoJobStore]) -> None:
    store = mongo_stores[0]
    odd = "pipe.line$with.dots"
    store._count_moves(None, {"state": "CREATED", "pipeline_uuid": odd})
    store._count_moves(None, {"state": None, "pipeline_uuid": None})
    store.count_move(odd, "CREATED", "RUNNING")
    assert nonzero(store.job_counts()) == {("RUNNING", odd): 1, ("None", "None"): 1}


def test_concurrent_transitions_keep_exact_counts(store_factory: Any, settings: Settings) -> None:
    first = store_factory()
    first.save_pipeline({"uuid": P, "id": "p", "components": []})
    jobs = [create(first, settings, n) for n in range(16)]
    stores = [store_factory() for _ in range(4)]

    def walk(k: int) -> None:
        for job in jobs[k::4]:
            for name in ("run", "finish"):
                event(stores[k], settings, job, name)

    threads = [threading.Thread(target=walk, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert nonzero(first.job_counts()) == {("FINISHED", P): 16} == first.job_totals()
