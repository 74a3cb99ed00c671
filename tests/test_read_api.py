"""The read API of `pipelinejobs serve` over real HTTP, on MongoDB and on SQLite.

Jobs are written through the store API (as reactor.py processes would write them)
and read back through a live server subprocess. Every expectation is computed here
from the jobs the test wrote, never from the code under test.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelinejobs import documents, fsm
from pipelinejobs.settings import Identity
from pipelinejobs.store.listing import JobFilter
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.sqlite import SqliteJobStore, list_sql
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_COMPONENTS, EXAMPLE_PIPELINE_ID, EXAMPLE_PIPELINE_UUID, ROOT
from tests.server_fixtures import LiveServer, register_example_pipeline

IDENTITY = Identity("tester", "SD2E-Community", "sd2e", "sd2e.org")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
OTHER_PIPELINE = "106c46ff-8186-5756-a934-071f4497b58d"
PARENT = "1073f4ff-c2b9-5190-bd9a-e6a406d9796a"


@pytest.fixture(params=["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


# -- helpers -------------------------------------------------------------------------------------
def seed(store: Any, n: int, *, state: str = "CREATED", created: datetime = T0, **fields: Any) -> dict[str, Any]:
    """Write a job through the store API; ``n`` makes its uuid and data unique."""
    job = documents.new_job(
        uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"job-{n}-{uuidlib.uuid4()}")),
        pipeline_uuid=fields.get("pipeline_uuid", EXAMPLE_PIPELINE_UUID),
        archive_path=fields.get("archive_path", f"/products/v2/run-{n}"),
        archive_system=None,
        data={"n": n},
        session=fields.get("session"),
        child_of=fields.get("child_of", []),
        identity=IDENTITY,
        now=created,
    )
    job["state"] = state
    if "updated" in fields:
        job["updated"] = fields["updated"]
    store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], created))
    return job


def get(server: LiveServer, path: str, **params: Any) -> httpx.Response:
    return web.get(f"{server.url}{path}", params=params, headers=server.auth, timeout=30)


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["result"]


def listed(server: LiveServer, **params: Any) -> list[str]:
    """Every uuid the list gives for ``params``, following ``next`` to the end."""
    uuids: list[str] = []
    after: str | None = None
    while True:
        page = result(get(server, "/jobs", **params, **({"after": after} if after else {})))
        uuids += [job["uuid"] for job in page["jobs"]]
        after = page["next"]
        if after is None:
            return uuids


def post(server: LiveServer, message: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = web.post(
        server.messages_url, params={"_abaco_synchronous": "true", **params}, headers=server.auth, json=message
    )
    assert response.status_code == 200, response.text
    return response.json()


def make_nonce(server: LiveServer, level: str, max_uses: int = -1) -> str:
    response = web.post(f"{server.actor_url()}/nonces", headers=server.auth, json={"level": level, "maxUses": max_uses})
    assert response.status_code == 200, response.text
    return response.json()["result"]["id"]


# -- filters -------------------------------------------------------------------------------------
def test_every_filter_selects_exactly_the_matching_jobs(server: LiveServer) -> None:
    store = server.open_store()
    try:
        specs: list[dict[str, Any]] = [
            {"state": "RUNNING", "session": "brave-otter"},
            {"state": "RUNNING", "pipeline_uuid": OTHER_PIPELINE, "archive_path": "/products/v2/special/a"},
            {"state": "FINISHED", "child_of": [PARENT], "session": "brave-otter"},
            {"state": "FAILED", "child_of": [PARENT, OTHER_PIPELINE]},
            {"state": "CREATED", "archive_path": "/uploads/special/b"},
            {"state": "CREATED", "pipeline_uuid": OTHER_PIPELINE},
            {"state": "FINISHED"},
            {"state": "RUNNING"},
        ]
        jobs = []
        for i, spec in enumerate(specs):
            created = T0 + timedelta(hours=i)
            jobs.append(seed(store, i, created=created, updated=created + timedelta(days=1), **spec))
        hidden = seed(store, 99, state="RUNNING", created=T0 + timedelta(hours=50))
        store.hide_job(hidden["uuid"], now=T0 + timedelta(days=3), audit={"uuid": hidden["uuid"], "action": "hide"})
    finally:
        store.close()

    def expect(keep: Any) -> list[str]:  # newest created first, as the list promises
        chosen = [j for j in jobs if keep(j)]
        return [j["uuid"] for j in sorted(chosen, key=lambda j: j["_properties"]["created_date"], reverse=True)]

    assert listed(server) == expect(lambda j: True)
    assert listed(server, state="RUNNING") == expect(lambda j: j["state"] == "RUNNING")
    assert listed(server, state="running,failed") == expect(lambda j: j["state"] in ("RUNNING", "FAILED"))
    assert listed(server, pipeline=OTHER_PIPELINE) == expect(lambda j: j["pipeline_uuid"] == OTHER_PIPELINE)
    assert listed(server, session="brave-otter") == expect(lambda j: j["session"] == "brave-otter")
    assert listed(server, child_of=PARENT) == expect(lambda j: PARENT in j["child_of"])
    assert listed(server, archive_path="special") == expect(lambda j: "special" in j["archive_path"])
    cut = T0 + timedelta(hours=3)
    created = lambda j: j["_properties"]["created_date"]  # noqa: E731
    assert listed(server, created_after="2026-01-01T03:00:00Z") == expect(lambda j: created(j) >= cut)
    assert listed(server, created_before="2026-01-01T03:00:00+00:00") == expect(lambda j: created(j) < cut)
    in_range = expect(lambda j: T0 + timedelta(hours=1) <= created(j) < T0 + timedelta(hours=6))
    between = {"created_after": "2026-01-01T01:00:00Z", "created_before": "2026-01-01T06:00:00Z"}
    assert listed(server, **between, limit=2) == in_range and len(in_range) == 5  # a range, paged by cursors
    low, high = T0 + timedelta(days=1, hours=5), T0 + timedelta(days=1, hours=7)
    assert listed(server, updated_after="2026-01-02T05:00:00Z", updated_before="2026-01-02T07:00:00Z") == expect(
        lambda j: low <= j["updated"] < high
    )
    assert listed(server, state="RUNNING", session="brave-otter") == [jobs[0]["uuid"]]
    assert hidden["uuid"] not in listed(server, state="RUNNING")
    assert listed(server, state="RUNNING", hidden="true")[0] == hidden["uuid"]

    # counts per state under the other filters; the state filter does not narrow them
    counts = result(get(server, "/jobs", state="RUNNING", child_of=PARENT, counts="true"))["counts"]
    assert counts == {s.value: 0 for s in fsm.State} | {"FINISHED": 1, "FAILED": 1}
    alone = result(get(server, "/jobs/counts", archive_path="special"))
    assert alone["counts"]["RUNNING"] == 1 and alone["counts"]["CREATED"] == 1 and alone["total"] == 2

    # a summary shows what a list needs and nothing else
    summary = result(get(server, "/jobs", session="brave-otter", limit=1))["jobs"][0]
    assert set(summary) == set(documents_summary_fields())
    assert summary["created"] == "2026-01-01T02:00:00Z" and summary["child_of"] == [PARENT]
    assert "data" not in summary and "_salt" not in summary and "history" not in summary


def documents_summary_fields() -> tuple[str, ...]:
    return (
        "uuid",
        "state",
        "pipeline_uuid",
        "archive_path",
        "archive_system",
        "session",
        "agent",
        "task",
        "child_of",
        "last_event",
        "created",
        "updated",
        "revision",
        "visible",
    )


def test_pages_are_stable_while_jobs_are_added_and_change(server: LiveServer) -> None:
    store = server.open_store()
    try:
        seeded = [seed(store, i, created=T0 + timedelta(minutes=i % 7), state="RUNNING") for i in range(40)]
    finally:
        store.close()
    expected = sorted(seeded, key=lambda j: (j["_properties"]["created_date"], j["uuid"]), reverse=True)
    stop = threading.Event()
    added: list[str] = []

    def writer() -> None:  # another process's reactor keeps creating jobs meanwhile
        own = server.open_store()
        try:
            n = 1000
            while not stop.is_set():
                added.append(seed(own, n, created=datetime.now(timezone.utc), state="RUNNING")["uuid"])
                n += 1
        finally:
            own.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen: list[str] = []
        after: str | None = None
        while True:
            page = result(get(server, "/jobs", state="RUNNING", limit=6, **({"after": after} if after else {})))
            seen += [j["uuid"] for j in page["jobs"]]
            after = page["next"]
            if after is None:
                break
    finally:
        stop.set()
        thread.join()
    assert added, "the writer added no job while the pages were read"
    old = [u for u in seen if u not in set(added)]
    assert old == [j["uuid"] for j in expected]  # every seeded job once, in order
    assert len(seen) == len(set(seen))


def test_bad_parameters_are_refused_clearly(server: LiveServer) -> None:
    cases = [
        ({"state": "BOGUS"}, "state must be one of"),
        ({"limit": "-1"}, "limit must be a positive integer"),
        ({"limit": "ten"}, "limit must be a positive integer"),
        ({"limit": "\u00b2"}, "limit must be a positive integer"),  # a Unicode digit int() refuses
        ({"limit": "\u0663"}, "limit must be a positive integer"),
        ({"created_after": "yesterday"}, "created_after must be an ISO 8601 time"),
        ({"after": "not-a-cursor"}, "after is not a cursor"),
        ({"hidden": "maybe"}, "hidden must be true or false"),
    ]
    for params, text in cases:
        response = get(server, "/jobs", **params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["status"] == "error" and text in response.json()["message"]
    response = get(server, "/jobs/no-such-job")
    assert response.status_code == 404 and "No job found" in response.json()["message"]
    assert get(server, "/jobs/no-such-job/events").status_code == 404
    assert get(server, "/pipelines/no-such-pipeline").status_code == 404
    assert get(server, "/schemas/../../etc/passwd").status_code == 404
    assert get(server, "/jobs/x/events", after="garbage").status_code in (400, 404)


# -- one job, its log, secrets -------------------------------------------------------------------
def test_a_job_and_its_full_log_never_show_the_token_or_salt(server: LiveServer) -> None:
    register_example_pipeline(server)
    create = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/t", "data": {"n": 1}}
    created = post(server, create)
    uuid, token = created["uuid"], created["token"]
    names = ["run", "update", "update", "update", "finish"]
    for i, name in enumerate(names):
        answer = post(server, {"uuid": uuid, "name": name, "token": token, "data": {"step": i}})
        assert answer["status"] == "ok", answer
    store = server.open_store()
    try:
        salt = store.find_job(uuid)["_salt"]
        logged = [(r.seq, r.name, r.event_uuid) for r in _history(store, uuid)]
    finally:
        store.close()

    shown = result(get(server, f"/jobs/{uuid}"))
    assert shown["uuid"] == uuid and shown["state"] == "FINISHED" and "_salt" not in shown
    assert [e["name"] for e in shown["history"]] == ["create", *names]

    events: list[dict[str, Any]] = []
    after = None
    while True:
        page = result(get(server, f"/jobs/{uuid}/events", limit=2, **({"after": after} if after else {})))
        assert len(page["events"]) <= 2
        events += page["events"]
        after = page["next"]
        if after is None:
            break
    assert [(e["seq"], e["name"], e["event_uuid"]) for e in events] == logged
    assert [e["data"] for e in events[1:]] == [{"step": i} for i in range(len(names))]
    bad = get(server, f"/jobs/{uuid}/events", after="garbage")
    assert bad.status_code == 400 and "not a cursor" in bad.json()["message"]

    texts = [
        get(server, f"/jobs/{uuid}").text,
        get(server, "/jobs").text,
        get(server, f"/jobs/{uuid}/events", limit=100).text,
        get(server, "/jobs", counts="true").text,
    ]
    for text in texts:
        assert token not in text and salt not in text and "_salt" not in text
    # the v3 spelling answers the same, with tapisservice's metadata
    v3 = web.get(f"{server.url}/v3/jobs/{uuid}", headers=server.auth).json()
    assert v3["result"] == shown and v3["metadata"] == {}


def _history(store: Any, uuid: str) -> list[Any]:
    from pipelinejobs.store.base import iter_history

    return list(iter_history(store, uuid))


def test_pipelines_schemas_and_state_machine(server: LiveServer) -> None:
    store = server.open_store()
    try:
        pipeline = {"id": EXAMPLE_PIPELINE_ID, "uuid": EXAMPLE_PIPELINE_UUID, "components": EXAMPLE_PIPELINE_COMPONENTS}
        store.save_pipeline(dict(pipeline))
    finally:
        store.close()
    assert result(get(server, "/pipelines")) == [pipeline]
    assert result(get(server, f"/pipelines/{EXAMPLE_PIPELINE_UUID}")) == pipeline

    on_disk = json.loads((Path(ROOT) / "schemas" / "PipelineJobEvent.json").read_text())
    for name in ("event", "PipelineJobEvent", "PipelineJobEvent.json"):
        response = web.get(f"{server.url}/schemas/{name}")  # public: it describes the software
        assert response.status_code == 200 and response.json() == on_disk
    assert "tapisv3" in result(web.get(f"{server.url}/schemas"))

    machine = result(web.get(f"{server.url}/state-machine"))
    assert machine["initial"] == "CREATED" and set(machine["states"]) == {s.value for s in fsm.State}
    by_name = {e["name"]: e for e in machine["events"]}
    assert by_name["finish"] == {
        "name": "finish",
        "from": ["FINISHED", "RUNNING"],
        "to": "FINISHED",
        "admin_only": False,
    }
    assert by_name["update"]["to"] is None and by_name["reset"]["admin_only"] is True

    for url in (f"{server.url}/state-machine?format=svg", f"{server.url}/state-machine.svg?path=CREATED,RUNNING"):
        response = web.get(url)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
        svg = ET.fromstring(response.text)
        ns = "{http://www.w3.org/2000/svg}"
        drawn = {g.get("data-state") for g in svg.iter(f"{ns}g") if g.get("data-state")}
        assert {s.value for s in fsm.State} <= drawn
        edges = {(p.get("data-from"), p.get("data-to")) for p in svg.iter(f"{ns}path") if p.get("data-from")}
        assert ("RUNNING", "FINISHED") in edges and ("VALIDATING", "REJECTED") in edges
    walked = [p for p in svg.iter(f"{ns}path") if "walked" in (p.get("class") or "")]
    assert [(p.get("data-from"), p.get("data-to")) for p in walked] == [("CREATED", "RUNNING")]


# -- who may read --------------------------------------------------------------------------------
def test_read_access_needs_a_token_or_a_read_nonce(server: LiveServer) -> None:
    url = f"{server.url}/jobs"
    missing = web.get(url)
    assert missing.status_code == 401
    assert missing.json() | {"version": None} == {
        "status": "error",
        "message": "No JWT or nonce provided.",
        "version": None,
        "result": None,
    }
    wrong = web.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "Invalid JWT."
    assert web.get(url, headers={"X-Tapis-Token": server.api_token}).status_code == 200

    read = make_nonce(server, "READ", max_uses=2)
    assert web.get(url, params={"x-nonce": read}).status_code == 200
    assert web.get(f"{server.url}/pipelines", params={"x-nonce": read}).status_code == 200
    spent = web.get(url, params={"x-nonce": read})  # each read counts as a use, as Abaco counts them
    assert spent.status_code in (400, 401) and "No remaining uses" in spent.json()["message"]
    nonce = web.get(f"{server.actor_url()}/nonces/{read}", headers=server.auth).json()["result"]
    assert nonce["currentUses"] == 2 and nonce["remainingUses"] == 0

    execute = make_nonce(server, "EXECUTE")
    assert web.get(url, params={"x-nonce": execute}).status_code == 200
    unknown = web.get(url, params={"x-nonce": "SD2E_notanonce"})
    assert unknown.status_code == 401 and unknown.json()["message"] == "Nonce does not exist."
    # a wrong token is refused even alongside a good nonce
    both = web.get(url, params={"x-nonce": execute}, headers={"Authorization": "Bearer nope"})
    assert both.status_code == 401
    assert "SD2E_notanonce" not in server.read_log() and execute not in server.read_log()


# -- indexes -------------------------------------------------------------------------------------
FILTERS = {
    "state": JobFilter(states=("RUNNING",)),
    "states": JobFilter(states=("RUNNING", "FAILED")),
    "pipeline": JobFilter(pipeline_uuid=OTHER_PIPELINE),
    "session": JobFilter(session="brave-otter"),
    "child_of": JobFilter(child_of=PARENT),
    "created": JobFilter(created_after=T0, created_before=T0 + timedelta(days=1)),
    "updated": JobFilter(updated_after=T0, updated_before=T0 + timedelta(days=1)),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_every_sqlite_list_filter_searches_an_index(tmp_path: Path, name: str) -> None:
    """No list filter makes SQLite read the whole jobs table (EXPLAIN QUERY PLAN, with and without a cursor)."""
    with SqliteJobStore(tmp_path / "plans.sqlite3") as store:
        store.ensure_indexes()
        conn = sqlite3.connect(store.path)
        for position in (None, (T0, "b" * 36)):
            sql, params = list_sql(FILTERS[name], position, 51)
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            on_jobs = [step for step in plan if " jobs " in f"{step} "]
            assert on_jobs and all(step.startswith("SEARCH") for step in on_jobs), plan
        conn.close()
    # the substring match on archive_path cannot use a B-tree: it walks the list order and stops at a full page


def test_mongodb_creates_an_index_for_every_list_filter(mongodb_uri: str, database_name: str, db: Any) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        assert store.missing_indexes() == []
        keys = [[k for k, _ in spec["key"]] for spec in store.jobs.index_information().values()]
    created = "_properties.created_date"
    for field in ("state", "pipeline_uuid", "session", "child_of"):
        assert [field, created, "uuid"] in keys  # the filter's equality, then the list's order
    assert [created, "uuid"] in keys and ["updated"] in keys and ["archive_path"] in keys
