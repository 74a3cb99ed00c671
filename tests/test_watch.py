"""Heartbeats, deadlines and the watchdog, on both stores, through the one business path.

The clock is injected (``now``): nothing here sleeps to make a job overdue.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs import deadlines, service, watch
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import CreateMessage, EventMessage
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.store.base import JobStore, iter_history
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.records import Outcome
from pipelinejobs.store.sqlite import SqliteJobStore
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT, authn_for, prepare_database

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
Factory = Callable[..., JobStore]
OTHER_PIPELINE = "10650844-1baa-55c5-a481-000000000001"


def configured(**deadlines: Any) -> Settings:
    return load_settings({}, ROOT / "config.yml").override("deadlines", **deadlines)


@pytest.fixture
def store_factory(store_factory: Factory) -> Factory:
    """conftest's stores, with this module's two pipelines registered."""
    first = store_factory()
    for uuid in (EXAMPLE_PIPELINE_UUID, OTHER_PIPELINE):
        first.save_pipeline({"uuid": uuid, "id": f"p-{uuid[-4:]}", "components": []})
    return store_factory


def create(
    store: JobStore, settings: Settings, n: int = 1, *, now: datetime = T0, deadlines: Any = None, pipeline: str = ""
) -> tuple[str, str]:
    message = CreateMessage(
        pipeline_uuid=pipeline or EXAMPLE_PIPELINE_UUID, archive_path="/p", data={"n": n}, deadlines=deadlines
    )
    outcome = service.handle(message, store=store, settings=settings, now=now)
    return outcome["uuid"], outcome["token"]


def send(store: JobStore, settings: Settings, uuid: str, token: str | None, name: str, now: datetime, **kw: Any) -> Any:
    return service.handle(
        EventMessage(uuid=uuid, name=name, token=token, **kw), store=store, settings=settings, now=now
    )


def fails_of(store: JobStore, uuid: str) -> list[Any]:
    return [r for r in iter_history(store, uuid) if r.name == "fail" and r.outcome is Outcome.APPLIED]


# -- pure decisions ---------------------------------------------------------------------------
def test_judge_picks_the_deadline_that_ran_out_first() -> None:
    limits = {"created_seconds": 100, "silent_seconds": 60, "running_seconds": 3600, "validating_seconds": 50}
    since, seen = T0, T0 + timedelta(seconds=30)
    assert deadlines.judge("RUNNING", since, seen, limits, T0 + timedelta(seconds=89)) is None
    late = deadlines.judge("RUNNING", since, seen, limits, T0 + timedelta(seconds=90))
    assert late is not None and (late.deadline, late.seconds, late.last_seen) == ("silent_seconds", 60, seen)
    total = deadlines.judge("RUNNING", since, T0 + timedelta(seconds=3599), limits, T0 + timedelta(seconds=3600))
    assert total is not None and total.deadline == "running_seconds"
    assert deadlines.judge("CREATED", since, seen, limits, T0 + timedelta(seconds=100)).deadline == "created_seconds"
    assert deadlines.judge("INDEXING", since, seen, limits, T0 + timedelta(seconds=50)).deadline == "validating_seconds"
    for state in ("FINISHED", "FAILED", "RETIRED", "VALIDATED"):
        assert deadlines.judge(state, since, seen, limits, T0 + timedelta(days=999)) is None
        assert deadlines.due_at(state, since, seen, limits) is None
    assert deadlines.due_at("RUNNING", since, seen, limits) == T0 + timedelta(seconds=90)
    assert deadlines.due_at("RUNNING", since, seen, dict(limits, silent_seconds=None)) == T0 + timedelta(hours=1)


def test_deadlines_layer_config_pipeline_and_job() -> None:
    settings = configured(created_seconds=10, pipelines={OTHER_PIPELINE: {"created_seconds": 20, "silent_seconds": 5}})
    assert deadlines.effective_deadlines(settings, EXAMPLE_PIPELINE_UUID, None)["created_seconds"] == 10
    layered = deadlines.effective_deadlines(settings, OTHER_PIPELINE, {"silent_seconds": None, "running_seconds": 7})
    assert layered == {"created_seconds": 20, "silent_seconds": None, "running_seconds": 7, "validating_seconds": 86400}


@pytest.mark.parametrize("bad", [[], {"nope": 1}, {"silent_seconds": -1}, {"silent_seconds": "5"}, {"x" * 500: 1}])
def test_a_bad_deadline_override_is_refused_and_creates_nothing(store: JobStore, bad: Any) -> None:
    with pytest.raises(PipelineJobsError) as err:
        create(store, configured(), deadlines=bad)
    assert err.value.kind is ErrorKind.BAD_MESSAGE and "deadlines" in err.value.message
    assert len(err.value.message) < 300
    assert store.list_jobs(include_hidden=True) == []


# -- heartbeats -------------------------------------------------------------------------------
def test_a_heartbeat_is_a_sign_of_life_not_a_history_entry(store: JobStore) -> None:
    settings = configured(heartbeat_log_interval_seconds=60)
    uuid, token = create(store, settings)
    send(store, settings, uuid, token, "run", T0)
    before = store.find_job(uuid)
    for wrong in (None, "0" * 16):
        with pytest.raises(PipelineJobsError) as err:
            send(store, settings, uuid, wrong, "heartbeat", T0 + timedelta(seconds=5))
        assert err.value.kind is ErrorKind.UNAUTHORIZED
    answers = [send(store, settings, uuid, token, "heartbeat", T0 + timedelta(seconds=10 * i)) for i in range(1, 13)]
    assert all(a["status"] == "ok" and a["action"] == "heartbeat" and a["state"] == "RUNNING" for a in answers)
    assert answers[-1]["last_seen"] == (T0 + timedelta(seconds=120)).isoformat()
    after = store.find_job(uuid)
    assert after == before  # no history entry, no revision, no `updated`
    # at most one log record per 60 s: the first beat (10 s) and the first 60 s after it (70 s)
    logged = [r for r in iter_history(store, uuid) if r.outcome is Outcome.HEARTBEAT]
    assert [a["logged"] for a in answers].count(True) == len(logged) == 2
    assert [r.date for r in logged] == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=70)]
    assert store.watch_record(uuid)["last_seen"] == T0 + timedelta(seconds=120)


def test_heartbeat_messages_are_classified_in_every_form() -> None:
    from pipelinejobs.intake import Intake
    from pipelinejobs.messages import classify

    uuid = "1073f4ff-c2b9-5570-87ad-4a7d33cb9a9c"
    by_url = classify(Intake(None, "", {"uuid": uuid, "name": "heartbeat", "token": "a" * 16}))
    assert (by_url.name, by_url.via) == ("heartbeat", "url")
    body = classify(Intake({"uuid": uuid, "name": "heartbeat", "token": "a" * 16}, "application/json"))
    assert (body.name, body.via) == ("heartbeat", "message")
    record = {
        "id": "6fe3fa6b-2e4a-4f3c-9a1d-1bb0f2d6c1f1-007",
        "appId": "bbq-brisket-0.5.0",
        "executionSystem": "hpc-tacc-maverick",
        "owner": "sd2eadm",
        "archivePath": "/archive/x",
        "archiveSystem": "data-sd2e-community",
        "status": "HEARTBEAT",
        "inputs": {},
        "parameters": {},
        "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/x"}},
    }
    agave = classify(Intake(record, "application/json", {"uuid": uuid, "status": "HEARTBEAT", "token": "a" * 16}))
    assert (agave.name, agave.via) == ("heartbeat", "agave")


def test_heartbeats_by_url_and_from_agave_and_in_a_finished_job(store: JobStore) -> None:
    settings = configured()
    uuid, token = create(store, settings)
    send(store, settings, uuid, token, "run", T0)
    beat = send(store, settings, uuid, token, "heartbeat", T0, via="url", data={"pct": 50})
    assert beat["recorded"] is True
    send(store, settings, uuid, token, "finish", T0)
    late = send(store, settings, uuid, token, "heartbeat", T0, via="agave")  # a late scheduler heartbeat
    assert late["recorded"] is False and late["state"] == "FINISHED"
    with pytest.raises(PipelineJobsError) as err:
        send(store, settings, uuid, token, "heartbeat", T0)
    assert err.value.kind is ErrorKind.INVALID_TRANSITION


def test_a_heartbeating_job_is_not_failed_and_a_silent_one_is(store: JobStore) -> None:
    settings = configured(silent_seconds=600, running_seconds=None)
    beating, token_b = create(store, settings, 1)
    silent, token_s = create(store, settings, 2)
    for uuid, token in ((beating, token_b), (silent, token_s)):
        send(store, settings, uuid, token, "run", T0)
    now = T0
    for _ in range(48):  # four hours, a beat and a pass every 5 minutes
        now += timedelta(minutes=5)
        send(store, settings, beating, token_b, "heartbeat", now)
        watch.watch_pass(store, settings, now)
    assert store.find_head(beating)["state"] == "RUNNING" and fails_of(store, beating) == []
    assert store.find_head(silent)["state"] == "FAILED"
    (fail,) = fails_of(store, silent)
    assert fail.via == "watchdog" and fail.date == T0 + timedelta(minutes=10)
    assert fail.data["watchdog"]["deadline"] == "silent_seconds" and fail.data["watchdog"]["seconds"] == 600
    assert fail.data["watchdog"]["last_seen"] == T0.isoformat()
    assert store.watch_record(silent)["due_at"] is None  # FAILED: nothing more to judge


def test_plain_events_count_as_signs_of_life(store: JobStore) -> None:
    settings = configured(silent_seconds=600, running_seconds=None)
    uuid, token = create(store, settings)
    send(store, settings, uuid, token, "run", T0)
    send(store, settings, uuid, token, "update", T0 + timedelta(seconds=500))
    report = watch.watch_pass(store, settings, T0 + timedelta(seconds=700))
    assert report.judged == 1 and report.failed == [] and report.rescheduled == 1
    assert store.watch_record(uuid)["due_at"] == T0 + timedelta(seconds=1100)
    assert watch.watch_pass(store, settings, T0 + timedelta(seconds=1099)).judged == 0  # not due: not even read
    assert len(watch.watch_pass(store, settings, T0 + timedelta(seconds=1100)).failed) == 1


def test_each_deadline_and_the_overrides(store: JobStore) -> None:
    settings = configured(
        created_seconds=100,
        running_seconds=1000,
        validating_seconds=50,
        silent_seconds=None,
        pipelines={OTHER_PIPELINE: {"created_seconds": 300}},
    )
    stuck, _ = create(store, settings, 1)
    other, _ = create(store, settings, 2, pipeline=OTHER_PIPELINE)
    own, _ = create(store, settings, 3, deadlines={"created_seconds": 30})
    long, tok = create(store, settings, 4)
    send(store, settings, long, tok, "run", T0 + timedelta(seconds=10))
    for i in range(1, 40):  # heartbeats do not extend the total
        send(store, settings, long, tok, "heartbeat", T0 + timedelta(seconds=10 + 25 * i))
    check, tok_v = create(store, settings, 5)
    for name in ("run", "finish", "validate"):
        send(store, settings, check, tok_v, name, T0 + timedelta(seconds=20))

    def failed_at(seconds: int) -> dict[str, str]:
        report = watch.watch_pass(store, settings, T0 + timedelta(seconds=seconds))
        return {f["uuid"]: f["deadline"] for f in report.failed}

    assert failed_at(29) == {}
    assert failed_at(30) == {own: "created_seconds"}
    assert failed_at(70) == {check: "validating_seconds"}
    assert failed_at(100) == {stuck: "created_seconds"}
    assert failed_at(300) == {other: "created_seconds"}
    assert failed_at(1009) == {}
    assert failed_at(1010) == {long: "running_seconds"}
    assert all(len(fails_of(store, u)) == 1 for u in (stuck, other, own, long, check))


def test_a_dry_run_lists_and_changes_nothing(store: JobStore) -> None:
    settings = configured(created_seconds=60)
    uuid, _ = create(store, settings)
    before = (store.find_job(uuid), store.watch_record(uuid))
    report = watch.watch_pass(store, settings, T0 + timedelta(hours=1), dry_run=True)
    assert [f["uuid"] for f in report.failed] == [uuid] and report.as_dict()["would_fail"][0]["seconds"] == 60
    assert (store.find_job(uuid), store.watch_record(uuid)) == before


def test_an_event_after_the_judgement_wins(store: JobStore) -> None:
    settings = configured(created_seconds=60)
    uuid, token = create(store, settings)
    head = store.find_head(uuid)
    send(store, settings, uuid, token, "run", T0 + timedelta(minutes=5))  # lands between judging and failing
    with pytest.raises(PipelineJobsError) as err:
        service.fail_overdue(
            store, settings, uuid=uuid, state="CREATED", expected_revision=0, data={}, now=T0 + timedelta(hours=1)
        )
    assert err.value.kind is ErrorKind.CONFLICT and head["_properties"]["revision"] == 0
    assert store.find_head(uuid)["state"] == "RUNNING" and fails_of(store, uuid) == []


def test_a_missing_transition_in_the_watch_record_is_put_right(store: JobStore) -> None:
    settings = configured(created_seconds=60, running_seconds=3600)
    uuid, token = create(store, settings)
    record = store.watch_record(uuid)
    send(store, settings, uuid, token, "run", T0 + timedelta(seconds=30))
    store.put_watch({**record, "revision": 5})  # a watch record that missed the transition (and looks newer)
    report = watch.watch_pass(store, settings, T0 + timedelta(seconds=90))
    assert report.failed == [] and report.rescheduled == 1  # judged as RUNNING since its last event
    assert store.watch_record(uuid)["due_at"] == T0 + timedelta(seconds=3630)


# -- races ------------------------------------------------------------------------------------
def test_failed_exactly_once_while_eight_threads_race_real_events(store_factory: Factory) -> None:
    settings = configured(silent_seconds=60, running_seconds=None)
    store = store_factory()
    jobs = [create(store, settings, n) for n in range(6)]
    for uuid, token in jobs:
        send(store, settings, uuid, token, "run", T0)
    fresh = T0 + timedelta(hours=1)  # the racing events' time
    judged = fresh + timedelta(seconds=30)  # overdue by the run at T0, not by an event at `fresh`
    start = threading.Barrier(10)
    errors: list[BaseException] = []

    def events(worker: int) -> None:
        mine = store_factory()
        start.wait()
        for i in range(15):
            uuid, token = jobs[(worker + i) % len(jobs)]
            name = ("update", "resource", "run")[i % 3]
            try:
                send(mine, settings, uuid, token, name, fresh, data={"w": worker, "i": i})
            except PipelineJobsError as exc:
                if exc.kind is not ErrorKind.INVALID_TRANSITION:  # FAILED refuses them: expected
                    errors.append(exc)

    def watchdog() -> None:
        mine = store_factory()
        start.wait()
        for _ in range(10):
            watch.watch_pass(mine, settings, judged)

    threads = [threading.Thread(target=events, args=(w,)) for w in range(8)]
    threads += [threading.Thread(target=watchdog) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for uuid, _ in jobs:
        history = list(iter_history(store, uuid))
        applied = [r for r in history if r.outcome is Outcome.APPLIED]
        assert [r.seq for r in applied] == list(range(len(applied)))  # one record per revision, none doubled
        fails = fails_of(store, uuid)
        assert len(fails) <= 1
        if fails:  # a fail only ever lands on the revision it was judged at: before any racing event
            assert fails[0].seq == 2 and fails[0].data["watchdog"]["last_seen"] == T0.isoformat()
            assert applied[-1].name == "fail"
        else:  # a racing event won: the job lives on until it falls silent again
            assert store.find_head(uuid)["state"] == "RUNNING"
    watch.watch_pass(store, settings, fresh + timedelta(hours=2))
    for uuid, _ in jobs:
        assert store.find_head(uuid)["state"] == "FAILED" and len(fails_of(store, uuid)) == 1


def test_two_watchdog_processes_fail_each_overdue_job_once(mongodb_uri: str, database_name: str, db: Any) -> None:
    prepare_database(mongodb_uri, database_name)
    settings = configured(created_seconds=60)
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.save_pipeline({"uuid": EXAMPLE_PIPELINE_UUID, "id": "p", "components": []})
        uuids = [create(store, settings, n)[0] for n in range(40)]
    config = ROOT / "config.yml"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri),
        "_REACTOR_MONGODB_DATABASE": database_name,
    }
    at = (T0 + timedelta(days=2)).isoformat()
    command = [sys.executable, "-m", "pipelinejobs.cli", "--json", "watch", "--at", at, "--config", str(config)]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode()[-500:] for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    failed = [f["uuid"] for report in reports for f in report["failed"]]
    assert sorted(failed) == sorted(uuids)  # each job failed by exactly one of the two
    with MongoJobStore(mongodb_uri, database_name) as store:
        for uuid in uuids:
            assert len(fails_of(store, uuid)) == 1 and store.find_head(uuid)["state"] == "FAILED"
    assert db.events.count_documents({"name": "fail"}) == 40


def test_the_watch_pass_reads_an_index_not_every_job(mongodb_uri: str, database_name: str, db: Any) -> None:
    prepare_database(mongodb_uri, database_name)
    names = {ix["name"] for ix in db["watch"].list_indexes()} | {ix["name"] for ix in db.jobs.list_indexes()}
    assert {"due_at", "uuid_unique", "state_updated", "hidden_updated"} <= names
    ttl = {ix["name"]: ix for ix in db.updates.list_indexes()}["expires_at_ttl"]
    assert ttl["expireAfterSeconds"] == 0 and dict(ttl["key"]) == {"expires_at": 1}  # tombstones expire natively


def test_the_embedded_watch_pass_uses_its_indexes(tmp_path: Path) -> None:
    import sqlite3

    SqliteJobStore(tmp_path / "j.sqlite3").close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as conn:
        due = conn.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM watch WHERE due_at IS NOT NULL AND due_at <= 1 ORDER BY due_at LIMIT 5"
        ).fetchall()
        kept = conn.execute(
            "EXPLAIN QUERY PLAN SELECT uuid FROM jobs WHERE state = 'RETIRED' AND updated < 1 ORDER BY updated LIMIT 5"
        ).fetchall()
        hidden = conn.execute(
            "EXPLAIN QUERY PLAN SELECT uuid FROM jobs WHERE visible = 0 AND updated < 1 ORDER BY updated LIMIT 5"
        ).fetchall()
    assert "watch_due_at" in str(due) and "jobs_state_updated" in str(kept) and "jobs_hidden_updated" in str(hidden)


# -- serve's watchdog ------------------------------------------------------------------------
def test_serve_runs_the_watchdog_when_enabled_and_heartbeats_reach_it(tmp_path: Path) -> None:
    import time

    from tests.server_fixtures import start_server

    path = tmp_path / "catalog.sqlite3"
    settings = configured(silent_seconds=None)
    real_now = datetime.now(timezone.utc)
    with SqliteJobStore(path) as store:
        store.ensure_indexes()
        store.save_pipeline({"uuid": EXAMPLE_PIPELINE_UUID, "id": "p", "components": []})
        stuck, _ = create(store, settings, 1, now=real_now - timedelta(days=2))  # CREATED for 2 days > 1 day
        alive, token = create(store, settings, 2, now=real_now)
    env = {"_REACTOR_STORE_SQLITE_PATH": str(path), "_REACTOR_DEADLINES_WATCH_EVERY_SECONDS": "0.2"}
    server = next(gen := start_server(tmp_path, "sqlite", env, {"path": path}, token_via_env=True))
    try:
        body = {"uuid": alive, "name": "heartbeat", "token": token}
        params = {"_abaco_synchronous": "true"}
        response = web.post(server.messages_url, params=params, headers=server.auth, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["action"] == "heartbeat"
        deadline = time.monotonic() + 20
        with SqliteJobStore(path) as store:
            while store.find_head(stuck)["state"] != "FAILED" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.find_head(stuck)["state"] == "FAILED" and len(fails_of(store, stuck)) == 1
            assert store.find_head(alive)["state"] == "CREATED"
            assert store.watch_record(alive)["logged_at"] is not None
    finally:
        gen.close()
    assert "watchdog started" in server.read_log() and token not in server.read_log()


def test_job_show_prints_the_deadlines_and_watch_lists_what_it_would_fail(tmp_path: Path) -> None:
    path = tmp_path / "cli.sqlite3"
    settings = configured()
    with SqliteJobStore(path) as store:
        store.save_pipeline({"uuid": EXAMPLE_PIPELINE_UUID, "id": "p", "components": []})
        uuid, token = create(store, settings, deadlines={"created_seconds": 30})
        send(store, settings, uuid, token, "heartbeat", T0 + timedelta(seconds=5))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "_REACTOR_STORE_SQLITE_PATH": str(path)}

    def pj(*args: str) -> str:
        command = [sys.executable, "-m", "pipelinejobs.cli", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = pj("job", "show", uuid)
    assert "deadlines created 30s, running 604800s, validating 86400s (own)" in shown
    assert "last seen 2026-11-28 12:00:05Z" in shown and "due 2026-11-28 12:00:30Z" in shown
    assert json.loads(pj("job", "show", uuid, "--json"))["watch"]["own"] == {"created_seconds": 30}
    assert "heartbeat" in pj("job", "history", uuid)
    dry = pj("watch", "--dry-run", "--at", "2026-11-28T12:01:00Z")
    assert f"would fail 1\n  {uuid}  CREATED: CREATED without run > 30s" in dry
    assert json.loads(pj("job", "show", uuid, "--json"))["state"] == "CREATED"
    assert "failed 1" in pj("watch", "--at", "2026-11-28T12:01:00Z")
    assert json.loads(pj("job", "show", uuid, "--json"))["state"] == "FAILED"


def test_a_heartbeat_after_the_judgement_spares_the_job(store: JobStore) -> None:
    settings = configured(silent_seconds=60, running_seconds=None)
    uuid, token = create(store, settings)
    send(store, settings, uuid, token, "run", T0)
    record = store.watch_record(uuid)
    send(store, settings, uuid, token, "heartbeat", T0 + timedelta(seconds=100))  # lands after the record was read
    report = watch.PassReport()
    watch._judge_one(store, settings, record, T0 + timedelta(seconds=90), report, False)
    assert report.failed == [] and report.lost_races == 1 and store.find_head(uuid)["state"] == "RUNNING"
