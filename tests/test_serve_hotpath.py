"""serve's hot path (issue 8 §4) and lone surrogates in its answers and records (issue 9).

- The message is parsed once: serve hands its parsed JSON object to the message
  path, with the same result as reactor.py's parse of the repr Abaco puts in MSG.
- The registry keeps its connections open (a SQLite pool; the job store's MongoClient).
- Execution records are written behind, yet readable the moment a POST is answered,
  and all stored when serve stops.
- A lone surrogate in a message never turns into a 5xx after the message was handled.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.intake import from_env, parse_message
from pipelinejobs.server.abaco_api import abaco_message
from pipelinejobs.server.recorder import WriteBehind
from pipelinejobs.settings import load_settings
from pipelinejobs.store.factory import open_registry
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.registry import MongoRegistry, SqliteRegistry
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID
from tests.server_fixtures import LiveServer, new_job

SYNC = {"_abaco_synchronous": "true"}


@pytest.fixture(params=["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


def record(n: int, actor: str = "actor1") -> dict[str, Any]:
    return {
        "id": f"exec{n:09d}",
        "actorId": actor,
        "status": "COMPLETE",
        "messageReceivedTime": f"2026-01-01T00:00:{n % 60:02d}.{n:03d}Z",
        "exitCode": 0,
    }


# -- 1. parse once ------------------------------------------------------------------------------
MESSAGES = [
    {"uuid": "107b93f3-1eae-5e79-8a18-0a480f8aa3a5", "name": "update", "token": "0123456789abcdef"},
    {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "data": {"a": [1, 2.5, None, True, False], "é": "ü", "q": "it's"}},
    {"nested": {"deep": [[{"x": -1}], []], "empty": {}}, "big": 2**70, "neg": -0.0, "s": 'say "hi"\n\t'},
    {},
]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("wrapped", [False, True], ids=["body", "message-attribute"])
def test_serve_hands_over_what_reactor_would_parse(message: dict[str, Any], wrapped: bool) -> None:
    body = json.dumps({"message": message} if wrapped else message).encode()
    _msg, content_type, raw, parsed = abaco_message(None, "application/json", body)
    if wrapped and not message:  # an empty message attribute does not win: the body is the message
        assert parsed == {"message": {}}
        return
    assert raw == str(message) and parsed == message  # MSG is the repr, as Abaco gives the container
    env = {"MSG": raw, "_abaco_Content_Type": content_type}
    assert from_env(env, 10_000, parsed=parsed) == from_env(env, 10_000)  # reactor.py's parse of MSG


def test_the_parsed_object_still_obeys_the_size_of_msg() -> None:
    message = {"data": "x" * 500}
    with pytest.raises(PipelineJobsError) as refused:
        parse_message(str(message), "str", 400, parsed=message)
    assert refused.value.kind is ErrorKind.BAD_MESSAGE and refused.value.details["size"] == len(str(message))


def test_the_parsed_object_is_normalised_like_a_parsed_msg() -> None:
    nan = {"n": float("nan")}
    with pytest.raises(PipelineJobsError) as refused:
        parse_message(str(nan), "str", 1000, parsed=nan)
    assert refused.value.kind is ErrorKind.BAD_MESSAGE
    deep: Any = {}
    for _ in range(5000):  # deeper than json can encode: a clear refusal, not an internal error
        deep = {"a": deep}
    with pytest.raises(PipelineJobsError) as refused:
        parse_message("{}", "str", 10_000_000, parsed=deep)
    assert refused.value.kind is ErrorKind.BAD_MESSAGE


def test_text_messages_parse_from_many_threads() -> None:
    """Messages that are not JSON objects still take reactor.py's path, now safe in threads."""
    texts = [repr({"k": [i, {"v": (i, None)}]}) for i in range(200)] + ["[1, 2]", "plain words"]

    def parse(text: str) -> Any:
        return parse_message(text, "str", 10_000)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(parse, texts * 20))
    assert results[:200] == [{"k": [i, {"v": [i, None]}]} for i in range(200)]
    assert results[200:202] == [[1, 2], "plain words"]


def test_a_message_attribute_object_creates_a_job_through_serve(server: LiveServer) -> None:
    new_job(server)  # registers the pipeline
    create = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/m", "data": {"via": "attribute"}}
    answer = web.post(server.messages_url, params=SYNC, headers=server.auth, json={"message": create})
    assert answer.status_code == 200 and answer.headers["x-abaco-exit-code"] == "0", answer.text
    store = server.open_store()
    try:
        assert store.find_job(answer.json()["uuid"])["data"] == {"via": "attribute"}
    finally:
        store.close()


# -- 2. connections -----------------------------------------------------------------------------
def open_fds(path: Path) -> int:
    """File descriptors of this process open on ``path`` (the database file itself)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed while listing
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sqlite_registry_keeps_a_bounded_pool_open_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    registry = SqliteRegistry(path, pool_size=4)
    barrier = threading.Barrier(12)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(20):
            registry.save_execution(record(n * 100 + i))
            assert registry.get_execution("actor1", record(n * 100 + i)["id"]) is not None

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(work, range(12)))
    held = open_fds(path)
    assert held >= 1  # connections stay open between calls
    for n in range(100):  # and are reused: sequential calls open nothing more
        registry.get_execution("actor1", record(n)["id"])
    assert open_fds(path) == held
    assert len(registry.list_executions("actor1", 1000)) == 240
    registry.close()
    assert open_fds(path) == 0
    with pytest.raises(PipelineJobsError) as closed:
        registry.get_execution("actor1", record(0)["id"])
    assert closed.value.kind is ErrorKind.STORAGE_UNAVAILABLE


def test_mongo_registry_shares_the_store_client_and_makes_indexes_only_when_asked(
    mongodb_uri: str, database_name: str, db: Any
) -> None:
    from tests.conftest import authn_for

    env = {"_REACTOR_MONGODB_AUTHN": authn_for(mongodb_uri), "_REACTOR_MONGODB_DATABASE": database_name}
    settings = load_settings(env)
    store = MongoJobStore(mongodb_uri, database_name)
    try:
        registry = open_registry(settings, store)
        assert isinstance(registry, MongoRegistry)
        assert registry.executions.database.client is store.jobs.database.client
        assert "abaco_executions" not in db.list_collection_names()  # opening created nothing
        registry.ensure_indexes()
        assert {"id_unique", "actor_time"} <= set(db["abaco_executions"].index_information())
        assert "id_unique" in db["abaco_nonces"].index_information()
        registry.save_executions([record(1), record(2)])
        registry.save_executions([record(2), record(3)])  # a retried batch: the duplicate is kept once
        registry.close()  # the store's client stays usable
        assert sorted(r["id"] for r in registry.list_executions("actor1")) == [record(n)["id"] for n in (1, 2, 3)]
    finally:
        store.close()


# -- 3. execution records written behind --------------------------------------------------------
def test_write_behind_reads_pending_records_and_stores_them_in_batches(tmp_path: Path) -> None:
    inner = SqliteRegistry(tmp_path / "registry.sqlite")
    buffered = WriteBehind(inner, interval=3600, batch=10**9)  # the writer waits: everything stays pending
    try:
        for n in range(5):
            buffered.save_execution(record(n))
        buffered.save_execution(record(9, actor="actor2"))
        assert inner.list_executions("actor1") == []  # nothing stored yet ...
        assert buffered.get_execution("actor1", record(3)["id"]) == record(3)  # ... yet everything readable
        assert buffered.get_execution("actor2", record(3)["id"]) is None  # not across actors
        assert [r["id"] for r in buffered.list_executions("actor1", 3)] == [record(n)["id"] for n in (4, 3, 2)]
        assert buffered.flush()
        assert [r["id"] for r in inner.list_executions("actor1")] == [record(n)["id"] for n in (4, 3, 2, 1, 0)]
        buffered.save_execution(record(5))
        listed = [r["id"] for r in buffered.list_executions("actor1")]
        assert listed == [record(n)["id"] for n in (5, 4, 3, 2, 1, 0)]  # pending and stored, each once
    finally:
        buffered.close()
    assert len(SqliteRegistry(tmp_path / "registry.sqlite").list_executions("actor1")) == 6  # flushed at close


def test_write_behind_keeps_records_while_the_registry_fails(tmp_path: Path) -> None:
    inner = SqliteRegistry(tmp_path / "registry.sqlite")
    inner.close()  # every call now fails with storage_unavailable
    buffered = WriteBehind(inner, interval=0.01)
    try:
        buffered.save_execution(record(1))
        assert not buffered.flush()
        assert buffered.get_execution("actor1", record(1)["id"]) == record(1)
    finally:
        buffered.close()


def test_executions_are_readable_at_once_and_stored_when_serve_stops(server: LiveServer) -> None:
    uuid, token = new_job(server)
    ids = []
    with web.client(headers=server.auth, timeout=30) as http:
        for i in range(30):
            event = {"uuid": uuid, "name": "update", "token": token, "data": {"i": i}}
            answer = http.post(server.messages_url, json=event)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["result"]["executionId"])
            shown = http.get(f"{server.actor_url()}/executions/{ids[-1]}")  # right after the POST returned
            assert shown.status_code == 200 and shown.json()["result"]["exitCode"] == 0, shown.text
        listed = http.get(f"{server.actor_url()}/executions", params={"limit": "1000"}).json()["result"]
    assert {e["id"] for e in listed["executions"]} >= set(ids)
    server.stop()  # as SIGTERM does: serve flushes at shutdown
    store = server.open_store()
    try:
        settings = load_settings(server_env(server))
        registry = open_registry(settings, store)
        stored = {e["id"] for e in registry.list_executions(server.actor_id, 1000)}
        registry.close()
    finally:
        store.close()
    assert set(ids) <= stored


def server_env(server: LiveServer) -> dict[str, str]:
    if server.backend == "mongodb":
        from tests.conftest import authn_for

        return {
            "_REACTOR_MONGODB_AUTHN": authn_for(server.store_options["uri"]),
            "_REACTOR_MONGODB_DATABASE": server.store_options["database"],
        }
    return {"_REACTOR_STORE_SQLITE_PATH": str(server.store_options["path"])}


# -- 4. lone surrogates (issue 9) ---------------------------------------------------------------
def raw_json(value: Any) -> bytes:
    """JSON text with lone surrogates escaped (``"\\ud800"``), as a hostile client sends it."""
    return json.dumps(value).encode("ascii")


def assert_clean_answer(response: httpx.Response) -> Any:
    assert response.status_code < 500, response.text
    text = response.content.decode("utf-8")  # valid UTF-8, or this raises
    assert "\ufffd" in text or "\\ud800" not in text
    return json.loads(text)


def test_lone_surrogates_never_give_a_5xx_after_the_message_was_handled(server: LiveServer) -> None:
    uuid, token = new_job(server)
    headers = {**server.auth, "Content-Type": "application/json"}
    agave_record = {
        "id": "2190129393029402138-242ac11b-0001-007",
        "status": "RUNNING",
        "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/\ud800"}},
    }
    messages = [
        ({}, {"uuid": uuid, "name": "update", "token": token, "data": {"k\udfff": "v\ud800"}}),
        ({"uuid": uuid, "token": token, "status": "RUNNING"}, agave_record),
        ({}, {"uuid": uuid, "name": "update", "token": token, "session": "\ud800"}),
    ]
    with web.client(timeout=30) as http:
        for params, message in messages:
            answer = assert_clean_answer(
                http.post(server.messages_url, params=params, headers=headers, content=raw_json(message))
            )
            execution_id = answer["result"]["executionId"]
            assert "\ufffd" in json.dumps(answer["result"]["msg"], ensure_ascii=False)
            for suffix in ("", "/logs"):  # the record and its logs answer, now and after they are stored
                url = f"{server.actor_url()}/executions/{execution_id}{suffix}"
                assert_clean_answer(http.get(url, headers=server.auth))
            synchronous = http.post(
                server.messages_url, params={**params, **SYNC}, headers=headers, content=raw_json(message)
            )
            assert_clean_answer(synchronous)
        nonce = http.post(
            f"{server.actor_url()}/nonces", headers=headers, content=raw_json({"description": "\ud800 nonce"})
        )
        assert assert_clean_answer(nonce)["result"]["description"] == "\ufffd nonce"
        assert_clean_answer(http.get(f"{server.actor_url()}/nonces", headers=server.auth))
    server.stop()  # everything flushed: the stored records read back cleanly too
    assert "internal error on" not in server.read_log()  # the HTTP side never failed
    store = server.open_store()
    try:
        registry = open_registry(load_settings(server_env(server)), store)
        for execution in registry.list_executions(server.actor_id, 1000):
            json.dumps(execution, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
        registry.close()
    finally:
        store.close()
