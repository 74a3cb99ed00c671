"""Retention on both stores: exactly the jobs past their retention go, with their log, leaving tombstones."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs import retention, service
from pipelinejobs.messages import CreateMessage, DeleteMessage, EventMessage
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.store.base import JobStore, iter_history
from pipelinejobs.store.sqlite import SqliteJobStore
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
KEEPER = "10650844-1baa-55c5-a481-00000000beef"  # a pipeline whose jobs are kept longer


def configured(**retention: Any) -> Settings:
    return load_settings({}, ROOT / "config.yml").override("retention", **retention)


@pytest.fixture
def store(store: JobStore) -> JobStore:
    """conftest's store on both backends, with this module's two pipelines registered."""
    for uuid in (EXAMPLE_PIPELINE_UUID, KEEPER):
        store.save_pipeline({"uuid": uuid, "id": f"p-{uuid[-4:]}", "components": []})
    return store


def job(store: JobStore, settings: Settings, n: int, events: list[str], *, at: datetime, pipeline: str = "") -> str:
    """A job walked through ``events`` at time ``at``."""
    message = CreateMessage(pipeline_uuid=pipeline or EXAMPLE_PIPELINE_UUID, archive_path="/p", data={"n": n})
    created = service.handle(message, store=store, settings=settings, now=at)
    for name in events:
        event = EventMessage(uuid=created["uuid"], name=name, token=created["token"])
        service.handle(event, store=store, settings=settings, now=at)
    return created["uuid"]


RETIRE = ["run", "finish", "validate", "validated", "finalize", "retire"]


@pytest.fixture
def population(store: JobStore) -> dict[str, str]:
    settings = configured()
    old, recent = T0, T0 + timedelta(days=25)
    jobs = {
        "retired_old": job(store, settings, 1, RETIRE, at=old),
        "retired_recent": job(store, settings, 2, RETIRE, at=recent),
        "failed_old": job(store, settings, 3, ["run", "fail"], at=old),
        "running_old": job(store, settings, 4, ["run"], at=old),
        "kept_pipeline": job(store, settings, 5, RETIRE, at=old, pipeline=KEEPER),
    }
    hidden = job(store, settings, 6, ["run"], at=old)
    service.handle(_hide(store, hidden), store=store, settings=settings, now=old)
    jobs["hidden_old"] = hidden
    return jobs


def _hide(store: JobStore, uuid: str) -> DeleteMessage:
    from pipelinejobs import identifiers

    head = store.find_head(uuid)
    assert head is not None
    return DeleteMessage(uuid=uuid, token=identifiers.job_token(head["_salt"], uuid, head["_admin"]))


NOW = T0 + timedelta(days=30)
POLICY = {"days": 20, "pipelines": {KEEPER: {"days": 60}}, "tombstone_days": 10}


def test_retention_purges_exactly_the_jobs_it_should(store: JobStore, population: dict[str, str]) -> None:
    settings = configured(**POLICY)
    before = {name: store.find_job(uuid) for name, uuid in population.items()}
    dry = retention.retention_pass(store, settings, NOW, dry_run=True)
    expected = {population["retired_old"], population["hidden_old"]}
    assert set(dry.purged) == expected and dry.as_dict()["would_purge"] == 2
    assert {name: store.find_job(uuid) for name, uuid in population.items()} == before  # a dry run changes nothing

    report = retention.retention_pass(store, settings, NOW)
    assert set(report.purged) == expected
    for name, uuid in population.items():
        if uuid in expected:
            assert store.find_job(uuid) is None and store.watch_record(uuid) is None, name
            assert list(iter_history(store, uuid)) == []  # the log went with it
            (tombstone,) = [u for u in store.audit_trail(uuid) if u["action"] == "purge"]
            assert tombstone["expires_at"] == NOW + timedelta(days=10)
            assert tombstone["diff"]["purged"]["state"] in ("RETIRED", "RUNNING") and "_salt" not in json.dumps(
                tombstone, default=str
            )
        else:
            assert store.find_job(uuid) == before[name], name
    assert retention.retention_pass(store, settings, NOW).purged == []  # nothing left to do


def test_failed_jobs_go_too_when_chosen(store: JobStore, population: dict[str, str]) -> None:
    settings = configured(**POLICY, states=["RETIRED", "FAILED"], hidden=False)
    report = retention.retention_pass(store, settings, NOW)
    assert set(report.purged) == {population["retired_old"], population["failed_old"]}
    assert store.find_job(population["hidden_old"]) is not None


def test_tombstones_expire_after_their_days(store: JobStore, population: dict[str, str]) -> None:
    settings = configured(**POLICY)
    retention.retention_pass(store, settings, NOW)
    later = NOW + timedelta(days=10)
    assert retention.retention_pass(store, settings, later - timedelta(seconds=1), dry_run=True).tombstones_expired == 0
    assert retention.retention_pass(store, settings, later, dry_run=True).tombstones_expired == 2
    assert retention.retention_pass(store, settings, later).tombstones_expired == 2
    for name in ("retired_old", "hidden_old"):
        actions = [u["action"] for u in store.audit_trail(population[name])]
        assert "purge" not in actions
    assert "create" in [u["action"] for u in store.audit_trail(population["retired_recent"])]  # others stay


def test_a_job_that_changed_since_it_was_judged_is_kept(store: JobStore, population: dict[str, str]) -> None:
    uuid = population["retired_old"]
    head = store.find_head(uuid)
    assert head is not None
    stale = head["_properties"]["revision"] - 1
    assert store.purge_job(uuid, expected_revision=stale, tombstone={"uuid": uuid, "action": "purge"}) is False
    assert store.find_job(uuid) is not None and [u["action"] for u in store.audit_trail(uuid)] == ["create"]


def test_no_retention_configured_purges_nothing(store: JobStore, population: dict[str, str]) -> None:
    report = retention.retention_pass(store, configured(), NOW + timedelta(days=3650))
    assert report.purged == [] and all(store.find_head(u) is not None for u in population.values())


def test_the_retention_command_counts_first(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    with SqliteJobStore(db) as store:
        store.save_pipeline({"uuid": EXAMPLE_PIPELINE_UUID, "id": "p", "components": []})
        uuid = job(store, configured(), 1, RETIRE, at=T0)
    config = tmp_path / "config.yml"
    text = (ROOT / "config.yml").read_text()
    config.write_text(text.replace("sqlite_path: ~", f"sqlite_path: {db}").replace("  days: ~", "  days: 20", 1))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    base = [
        sys.executable,
        "-m",
        "pipelinejobs.cli",
        "--json",
        "retention",
        "--config",
        str(config),
        "--at",
        NOW.isoformat(),
    ]
    dry = subprocess.run([*base, "--dry-run"], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(dry.stdout)["would_purge"] == 1
    with SqliteJobStore(db) as store:
        assert store.find_head(uuid) is not None
    done = subprocess.run(base, env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(done.stdout)["jobs"] == [uuid]
    with SqliteJobStore(db) as store:
        assert store.find_head(uuid) is None
