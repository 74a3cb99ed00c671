"""Outbound notifications on both stores: the outbox written with the event, the dispatcher, signatures.

Events go through ``service.handle`` in-process; deliveries go over real HTTP to a
stdlib receiver (tests/notify_fixtures.py) whose requests the tests verify with the
Standard Webhooks reference library and with HMAC written out by hand.
tests/test_notify_e2e.py runs the same through `pipelinejobs serve` processes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from pymongo import monitoring

from pipelinejobs import documents, egress, service
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import EventMessage
from pipelinejobs.notify import budget, deliveries, dispatcher, matching, notification, signing, subscriptions
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.sinks import registry
from pipelinejobs.sinks.base import MAX_ERROR_CHARS, Attempt, Delivery, NoFacts
from pipelinejobs.sinks.http import Clients
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.mongo import MongoJobStore
from pipelinejobs.store.records import EventRecord
from pipelinejobs.store.sqlite import SCHEMA_VERSION, SqliteJobStore
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT
from tests.notify_fixtures import Receiver, verify_by_hand, verify_with_library
from tests.test_event_log import new_job as stored_job

OTHER_PIPELINE = "10650844-1baa-55c5-a481-000000000000"
FAST = {
    "_REACTOR_NOTIFICATIONS_BACKOFF_BASE_SECONDS": "0.01",
    "_REACTOR_NOTIFICATIONS_BACKOFF_CAP_SECONDS": "0.02",
    "_REACTOR_NOTIFICATIONS_TIMEOUT_SECONDS": "5",
    "_REACTOR_NOTIFICATIONS_MAX_ATTEMPTS": "4",
    "_REACTOR_NOTIFICATIONS_LEASE_SECONDS": "1",
    "_REACTOR_NOTIFICATIONS_GRACE_SECONDS": "1",
    # the receivers here listen on this host: allowed explicitly, as a deployment would (issue 18)
    "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS": "127.0.0.0/8",
}
Factory = Callable[..., JobStore]
LOOPBACK = egress.Policy(egress.allowed_networks("127.0.0.0/8"))


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(FAST, ROOT / "config.yml")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def new_job(
    store: JobStore, data: dict[str, Any] | None = None, pipeline: str = EXAMPLE_PIPELINE_UUID
) -> tuple[str, str]:
    """A job in CREATED, created now (the dispatcher's clock is the real one)."""
    return stored_job(store, data, pipeline=pipeline, at=documents.utc_seconds(now()))


def send(store: JobStore, settings: Settings, uuid: str, token: str, name: str, **fields: Any) -> dict[str, Any]:
    message = EventMessage(uuid=uuid, name=name, token=token, **fields)
    return service.handle(message, store=store, settings=settings, now=now())


def subscribe(store: JobStore, settings: Settings, **fields: Any) -> dict[str, Any]:
    fields.setdefault("pipeline_uuid", EXAMPLE_PIPELINE_UUID) if "job_uuid" not in fields else None
    return subscriptions.add_subscription(store, settings, subscriptions.new_subscription(now=now(), **fields))


@dataclass(frozen=True)
class Pending:
    uuid: str
    seq: int
    pending: tuple[str, ...]
    name: str
    data: Any


def outbox(store: JobStore) -> list[Pending]:
    """Every outbox item, due or leased, read straight from the backend (oldest event first)."""
    if isinstance(store, MongoJobStore):
        docs = store.events.find({"notify_due": {"$exists": True}}, {"_id": False}).sort([("uuid", 1), ("seq", 1)])
        return [Pending(d["uuid"], d["seq"], tuple(d["notify"]), d["name"], d.get("data")) for d in docs]
    assert isinstance(store, SqliteJobStore)
    with store._reading() as conn:
        rows = conn.execute(
            "SELECT o.uuid, o.seq, o.pending, e.record FROM outbox o JOIN events e USING (uuid, seq, slot)"
            " ORDER BY o.uuid, o.seq"
        ).fetchall()
    found = []
    for uuid, seq, pending, record in rows:
        doc = json.loads(record)
        found.append(Pending(uuid, seq, tuple(json.loads(pending)), doc["name"], doc.get("data")))
    return found


def drain(store: JobStore, settings: Settings, passes: int = 1) -> deliveries.DrainReport:
    running = dispatcher.Dispatcher(store, settings)
    try:
        total = deliveries.DrainReport()
        for _ in range(passes):
            total.add(running.drain())
        return total
    finally:
        running.close()


# -- signing ---------------------------------------------------------------------------------------
def test_signatures_verify_with_the_reference_library_and_by_hand() -> None:
    from tests.notify_fixtures import Received

    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.secret_key(secret)) == 24
    body = json.dumps({"job_uuid": "x", "data": {"t": "caf\u00e9"}}, ensure_ascii=False).encode()
    stamp = int(now().timestamp())
    headers = signing.signed_headers(secret, "msg_1", stamp, body)
    received = Received("/hook", headers, body)
    assert verify_with_library(secret, received) == json.loads(body)
    verify_by_hand(secret, received)
    tampered = Received("/hook", headers, body.replace(b"x", b"y"))
    with pytest.raises(Exception, match="signature"):
        verify_with_library(secret, tampered)
    with pytest.raises(Exception, match="signature"):
        verify_with_library(signing.new_secret(), received)


def test_backoff_is_full_jitter_under_a_capped_exponential() -> None:
    plan = budget.Budget(backoff_base_seconds=60, backoff_cap_seconds=1800)
    ceilings = [budget.backoff(n, plan, draw=lambda low, high: high) for n in range(1, 9)]
    assert ceilings == [60, 120, 240, 480, 960, 1800, 1800, 1800]
    assert all(budget.backoff(n, plan, draw=lambda low, high: low) == 0 for n in range(1, 9))
    default = budget.budget(load_settings({}, ROOT / "config.yml"))
    assert (default.max_attempts, default.backoff_base_seconds, default.backoff_cap_seconds) == (8, 60, 1800)


# -- subscriptions ---------------------------------------------------------------------------------
def test_a_subscription_is_checked_and_its_secrets_are_masked(store: JobStore, settings: Settings) -> None:
    for fields, words in (
        ({"url": "http://x/h"}, "exactly one"),
        ({"pipeline_uuid": "p"}, "exactly one"),
        ({"pipeline_uuid": "p", "url": "ftp://x/h"}, "http"),
        ({"pipeline_uuid": "p", "url": "http://u:pw@x/h"}, "credentials"),
        ({"pipeline_uuid": "p", "url": "http://x/h", "states": ["DONE"]}, "unknown state"),
        ({"pipeline_uuid": "p", "url": "http://x/h", "events": ["explode"]}, "unknown event"),
        ({"pipeline_uuid": "p", "actor": "abc"}, "api_server"),
        ({"pipeline_uuid": "p", "actor": "http://x/actors/v2/a/messages"}, "nonce"),
    ):
        with pytest.raises(PipelineJobsError) as err:
            subscriptions.new_subscription(now=now(), **fields)
        assert err.value.kind is ErrorKind.BAD_MESSAGE and words in err.value.message
        assert "pw" not in err.value.message
    sub = subscribe(store, settings, url="http://127.0.0.1:9/hook?key=s3cr3t-key", states=["finished", "FAILED"])
    assert sub["states"] == ["FAILED", "FINISHED"] and sub["id"].startswith("sub_")
    shown = subscriptions.public_view(sub)
    assert shown["secret"] == "*****" and shown["url"] == "http://127.0.0.1:9/hook"
    assert subscriptions.public_view(sub, reveal_secret=True)["secret"] == sub["secret"]
    actor = subscribe(store, settings, actor="http://127.0.0.1:9/actors/v2/a/messages?x=1", nonce="SD2E_nonce123")
    listed = [subscriptions.public_view(s) for s in store.list_subscriptions()]
    assert "s3cr3t" not in json.dumps(listed, default=str) and "SD2E_nonce123" not in json.dumps(listed, default=str)
    assert [s["id"] for s in listed] == [sub["id"], actor["id"]]
    subscriptions.remove_subscription(store, actor["id"])
    with pytest.raises(PipelineJobsError) as err:
        subscriptions.remove_subscription(store, actor["id"])
    assert err.value.kind is ErrorKind.NOT_FOUND


def test_only_matching_applied_events_enter_the_outbox(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    other, other_token = new_job(store, {"n": 2}, pipeline=OTHER_PIPELINE)
    send(store, settings, uuid, token, "run")  # no subscriptions yet: nothing pending
    assert outbox(store) == []
    on_finish = subscribe(store, settings, url="http://127.0.0.1:9/a", states=["FINISHED"])
    on_job = subscribe(store, settings, job_uuid=uuid, url="http://127.0.0.1:9/b", events=["update"])
    send(store, settings, uuid, token, "update", data={"k": 1})  # on_job only
    send(store, settings, other, other_token, "run")  # another pipeline: nobody
    send(store, settings, uuid, token, "finish")  # on_finish only
    items = outbox(store)
    assert [(i.uuid, i.seq, i.pending) for i in items] == [
        (uuid, 2, (on_job["id"],)),
        (uuid, 3, (on_finish["id"],)),
    ]
    assert items[0].name == "update" and items[0].data == {"k": 1}


def test_refused_stale_and_replayed_events_notify_nobody(store: JobStore, settings: Settings) -> None:
    uuid, token = new_job(store)
    subscribe(store, settings, url="http://127.0.0.1:9/a")
    send(store, settings, uuid, token, "run", event_id="cb-1")
    assert len(outbox(store)) == 1
    with pytest.raises(PipelineJobsError):
        send(store, settings, uuid, "0" * 16, "finish")  # bad token
    with pytest.raises(PipelineJobsError):
        send(store, settings, uuid, token, "validated")  # not allowed while RUNNING
    assert send(store, settings, uuid, token, "run", event_id="cb-1")["replayed"] is True
    send(store, settings, uuid, token, "finish")
    stale = send(store, settings, uuid, token, "run", via="agave", status="RUNNING")
    assert stale.get("stale") is True
    assert [i.seq for i in outbox(store)] == [1, 2]  # run and finish, nothing else


# -- the dispatcher ----------------------------------------------------------------------------------
def test_a_delivery_is_signed_and_says_what_happened(
    store: JobStore, settings: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    uuid, token = new_job(store)
    sub = subscribe(store, settings, url=receiver.url + "?k=query-secret", events=["finish"])
    bare = subscribe(store, settings, url=receiver.url, events=["finish"], include_data=False)
    send(store, settings, uuid, token, "run")
    outcome = send(store, settings, uuid, token, "finish", data={"result": "ok"})
    report = drain(store, settings)
    assert report.delivered == 2 and report.retrying == 0
    got = {r.json()["subscription"]: r for r in receiver.wait_for(2)}
    for one in (sub, bare):
        verify_by_hand(one["secret"], got[one["id"]])
        verify_with_library(one["secret"], got[one["id"]])
    body = got[sub["id"]].json()
    assert body == {
        "type": "pipelinejob.event",
        "id": got[sub["id"]].headers["webhook-id"],
        "subscription": sub["id"],
        "job_uuid": uuid,
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "state": "FINISHED",
        "event": "finish",
        "event_uuid": outcome["event_uuid"],
        "revision": 2,
        "time": body["time"],
        "data": {"result": "ok"},
    }
    assert "data" not in got[bare["id"]].json()
    assert token not in json.dumps([r.json() for r in receiver.received])
    assert got[sub["id"]].path == "/hook?k=query-secret"
    rows = store.list_deliveries(job_uuid=uuid)
    assert sorted(r["outcome"] for r in rows) == ["delivered", "delivered"] and {r["status"] for r in rows} == {204}
    assert "query-secret" not in json.dumps(rows, default=str) + caplog.text
    assert outbox(store) == [] and drain(store, settings).delivered == 0  # nothing is delivered twice


def test_a_receiver_failing_twice_gets_three_attempts_with_one_webhook_id(store: JobStore, settings: Settings) -> None:
    receiver = Receiver(fail_first=2).start()
    try:
        uuid, token = new_job(store)
        sub = subscribe(store, settings, url=receiver.url)
        send(store, settings, uuid, token, "run")
        for _ in range(50):
            drain(store, settings)
            if len(receiver.received) >= 3:
                break
            threading.Event().wait(0.02)
        got = receiver.wait_for(3)
        assert len({r.headers["webhook-id"] for r in got}) == 1
        for one in got:
            verify_with_library(sub["secret"], one)
        rows = store.list_deliveries(subscription=sub["id"])
        assert [(r["attempt"], r["outcome"], r["status"]) for r in reversed(rows)] == [
            (1, "failed", 500),
            (2, "failed", 500),
            (3, "delivered", 204),
        ]
        assert outbox(store) == []
    finally:
        receiver.stop()


def test_a_notification_is_given_up_after_the_budget(store: JobStore, settings: Settings) -> None:
    receiver = Receiver(fail_first=100, fail_status=503).start()
    try:
        uuid, token = new_job(store)
        subscribe(store, settings, url=receiver.url)
        send(store, settings, uuid, token, "run")
        for _ in range(100):
            drain(store, settings)
            if not outbox(store):
                break
            threading.Event().wait(0.02)
        rows = list(reversed(store.list_deliveries(job_uuid=uuid)))
        assert [r["outcome"] for r in rows] == ["failed", "failed", "failed", "gave_up"]  # max_attempts 4
        assert len(receiver.received) == 4
    finally:
        receiver.stop()


def test_two_dispatchers_never_deliver_one_item_twice(
    store_factory: Factory, settings: Settings, receiver: Receiver
) -> None:
    setup = store_factory()
    subscribe(setup, settings, url=receiver.url)
    for n in range(20):
        uuid, token = new_job(setup, {"n": n})
        send(setup, settings, uuid, token, "run")
    stores = [store_factory(), store_factory()]
    barrier = threading.Barrier(2)

    def run(store: JobStore) -> None:
        barrier.wait()
        for _ in range(5):
            drain(store, settings)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [r.headers["webhook-id"] for r in receiver.wait_for(20)]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert outbox(setup) == []


def test_a_receiver_that_does_not_answer_costs_a_pass_one_try(store: JobStore, settings: Settings) -> None:
    from tests.server_fixtures import free_port

    subscribe(store, settings, url=f"http://127.0.0.1:{free_port()}/hook")  # nothing listens there
    for n in range(3):
        uuid, token = new_job(store, {"n": n})
        send(store, settings, uuid, token, "run")
    report = drain(store, settings)
    assert report.retrying == 3 and report.delivered == 0
    rows = store.list_deliveries(limit=10)
    errors = sorted(str(r["error"]) for r in rows)
    assert sum(e.startswith("ConnectionRefusedError") for e in errors) == 1
    assert sum(e.startswith("not sent") for e in errors) == 2
    assert all(r["outcome"] == "failed" and r["attempt"] == 1 for r in rows)


class ScriptedReceiver:
    """A loopback TCP server that reads each HTTP request whole and writes the next scripted answer
    verbatim (bytes no HTTP library made), then, with ``hang_up``, closes its side; it counts the
    connections it accepted and the requests it read. ``drip`` writes the answer a byte at a time."""

    def __init__(self, answers: list[bytes], *, hang_up: bool = False, drip: float = 0.0) -> None:
        import socket

        self.answers = list(answers)
        self.hang_up, self.drip = hang_up, drip
        self.connections = self.requests = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        import socket

        with conn, contextlib.suppress(OSError):  # the client may hang up on a bad answer
            buffer = b""
            while self.answers:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                self.requests += 1
                answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                if self.drip:
                    for byte in answer:
                        conn.sendall(bytes([byte]))
                        threading.Event().wait(self.drip)
                else:
                    conn.sendall(answer)
                if self.hang_up:
                    conn.shutdown(socket.SHUT_WR)
                    return

    def close(self) -> None:
        self.server.close()


OK_204 = b"HTTP/1.1 204 No Content\r\n\r\n"


def sample_record() -> EventRecord:
    return EventRecord("u", 1, "e", "update", datetime.now(timezone.utc), {}, "RUNNING")


def deliver_to(url: str, *, timeout: float = 5, **extra: Any) -> Attempt:
    """One webhook delivery of a sample event, through the sink and the dispatcher's kind of client."""
    subscription = {"id": "sub_x", "target": "webhook", "url": url, "secret": signing.new_secret(), **extra}
    http = Clients(timeout, LOOPBACK)
    try:
        return registry.deliver(Delivery(subscription, sample_record(), None, "msg_x", NoFacts()), http)
    finally:
        http.close()


@pytest.mark.parametrize(
    ("answer", "outcome", "status", "kept"),
    [
        (OK_204, "delivered", 204, True),
        (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\r\n{"ok": true}',
            "delivered",
            200,
            True,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", "delivered", 202, True),
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!", "failed", 500, True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "failed", 404, True),  # a webhook retries a 4xx
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
            "failed",
            302,
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "delivered", 200, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "delivered", 200, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "delivered", 200, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000, "delivered", 200, False),
    ],
)
def test_an_answer_is_judged_by_its_status_and_the_connection_kept_only_when_that_is_safe(
    answer: bytes, outcome: str, status: int, kept: bool
) -> None:
    """Two deliveries over one pooled client: the second reuses the first's connection exactly when
    the first answer ended cleanly and the receiver allows it (an answer body past 64 KiB is not read);
    a redirect is an answer, never followed; either way the second gets its own answer."""
    receiver = ScriptedReceiver([answer, OK_204])
    http = Clients(5, LOOPBACK)
    subscription = {"id": "sub_x", "target": "webhook", "url": receiver.url, "secret": signing.new_secret()}
    try:
        first = registry.deliver(Delivery(subscription, sample_record(), None, "msg_1", NoFacts()), http)
        second = registry.deliver(Delivery(subscription, sample_record(), None, "msg_2", NoFacts()), http)
    finally:
        http.close()
        receiver.close()
    assert (first.outcome.value, first.status) == (outcome, status)
    assert (second.outcome.value, second.status) == ("delivered", 204)
    assert receiver.requests == 2 and receiver.connections == (1 if kept else 2)


def test_an_answer_that_takes_longer_than_the_timeout_in_all_ends_the_attempt_in_time() -> None:
    """httpx's timeouts are per read: a receiver dripping its answer a byte at a time would hold a
    delivery for as long as it liked. The attempt as a whole ends within ``timeout_seconds``."""
    receiver = ScriptedReceiver([b"HTTP/1.1 204 No Content\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"], drip=0.05)
    started = datetime.now(timezone.utc)
    try:
        tried = deliver_to(receiver.url, timeout=1)
    finally:
        receiver.close()
    took = (datetime.now(timezone.utc) - started).total_seconds()
    assert tried.outcome.value == "failed" and tried.status is None
    assert tried.error is not None and tried.error.startswith("TimeoutError reaching http://127.0.0.1:")
    assert took < 3  # 1 s and the answer's last drip, not 200 drips of 50 ms each


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 300_000 + b"\r\n\r\n",  # past 100 KiB + two 64 KiB reads: refused
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the receiver hangs up
        b"",  # the receiver hangs up without a word
    ],
)
def test_a_malformed_or_cut_answer_is_a_failed_attempt_with_a_short_error(answer: bytes) -> None:
    receiver = ScriptedReceiver([answer], hang_up=True)
    try:
        tried = deliver_to(receiver.url + "?key=s3cret")
    finally:
        receiver.close()
    assert tried.outcome.value == "failed" and tried.status is None and tried.error
    assert "s3cret" not in tried.error and receiver.url.split("/hook")[0] in tried.error
    assert len(tried.error) <= MAX_ERROR_CHARS


_ANSWER_PARTS = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            *(b"HTTP/1.1 ", b"HTTP/1.0 ", b"200", b"204", b"100", b"\xb2\xb3\xb9", b" OK", b"\r\n", b"\r\n\r\n"),
            *(b"Content-Length: ", b"Connection: close", b"Transfer-Encoding: chunked", b":", b"\x00", b"\xff"),
        ]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
)
_FIELD_VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
    st.binary(max_size=12),
    st.sampled_from([b"\xb2", b"\xb9\xb9", b"close", b"keep-alive", b"chunked", b""]),
)
_STRUCTURED_ANSWERS = st.builds(
    lambda version, code, fields, body: version + b" " + code + b" Reason\r\n" + b"".join(fields) + b"\r\n" + body,
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"ICY"]),
    st.one_of(st.sampled_from([b"200", b"204", b"100", b"101", b"304", b"500"]), st.binary(min_size=1, max_size=4)),
    st.lists(
        st.builds(
            lambda name, value: name + b": " + value + b"\r\n",
            st.sampled_from([b"Content-Length", b"Connection", b"Transfer-Encoding", b"X-Any"]),
            _FIELD_VALUES,
        ),
        max_size=4,
    ),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def any_answer() -> Iterator[ScriptedReceiver]:
    receiver = ScriptedReceiver([OK_204], hang_up=True)
    yield receiver
    receiver.close()


@examples(max_examples=150, deadline=None)
@example(answer=b"HTTP/1.1 \xb2\xb3\xb9 OK\r\n\r\n")  # digits to str.isdigit(), not to int()
@example(answer=b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n")
@given(answer=st.one_of(_STRUCTURED_ANSWERS, st.lists(_ANSWER_PARTS, max_size=12).map(b"".join)))
def test_any_answer_bytes_give_a_judgement_and_a_short_error(any_answer: ScriptedReceiver, answer: bytes) -> None:
    """Whatever a receiver writes before hanging up: delivered (a 2xx status), or failed with a status or
    a short error naming the receiver; nothing escapes, and nothing waits for more than was sent."""
    any_answer.answers = [answer]
    tried = deliver_to(any_answer.url, timeout=2)
    assert tried.outcome.value in ("delivered", "failed")
    if tried.ok:
        assert tried.status is not None and 200 <= tried.status < 300
    else:
        assert tried.error and len(tried.error) <= MAX_ERROR_CHARS
        assert tried.status is not None or "127.0.0.1" in tried.error


def test_a_crashed_dispatchers_lease_runs_out_and_the_same_webhook_id_is_sent(
    store: JobStore, settings: Settings, receiver: Receiver
) -> None:
    uuid, token = new_job(store)
    subscribe(store, settings, url=receiver.url)
    send(store, settings, uuid, token, "run")
    # a dispatcher claims the item and dies before delivering (lease_seconds is 1 here)
    claimed = store.claim_notifications(now(), until=now() + timedelta(seconds=1), owner="dead", limit=10)
    assert len(claimed) == 1
    assert drain(store, settings).delivered == 0  # leased: not due
    threading.Event().wait(1.2)
    assert drain(store, settings).delivered == 1
    expected = notification.message_id(claimed[0].record, claimed[0].pending[0])
    assert receiver.wait_for(1)[0].headers["webhook-id"] == expected


def test_a_removed_subscription_is_not_told_and_the_drop_is_recorded(
    store: JobStore, settings: Settings, receiver: Receiver
) -> None:
    uuid, token = new_job(store)
    sub = subscribe(store, settings, url=receiver.url)
    send(store, settings, uuid, token, "run")
    subscriptions.remove_subscription(store, sub["id"])
    report = drain(store, settings)
    assert report.dropped == 1 and receiver.received == []
    assert [r["outcome"] for r in store.list_deliveries(job_uuid=uuid)] == ["dropped"]


def test_an_actor_is_sent_the_notification_with_its_nonce(store: JobStore, settings: Settings) -> None:
    abaco = Receiver(status=200).start()  # a fake Abaco messages endpoint
    try:
        uuid, token = new_job(store)
        actor_url = abaco.url.replace("/hook", "/actors/v2/next-step/messages")
        subscribe(store, settings, actor=actor_url, nonce="SD2E_n0nce-value", states=["FINISHED"])
        send(store, settings, uuid, token, "run")
        send(store, settings, uuid, token, "finish", data={"out": "/products/x"})
        assert drain(store, settings).delivered == 1
        got = abaco.wait_for(1)[0]
        assert got.path.startswith("/actors/v2/next-step/messages?") and "x-nonce=SD2E_n0nce-value" in got.path
        message = got.json()["message"]
        assert (
            message["job_uuid"] == uuid and message["state"] == "FINISHED" and message["data"] == {"out": "/products/x"}
        )
        rows = store.list_deliveries(job_uuid=uuid)
        assert rows[0]["outcome"] == "delivered" and "n0nce" not in json.dumps(rows, default=str)
    finally:
        abaco.stop()


def test_an_actor_refusing_the_nonce_is_retried_and_the_error_names_no_nonce(
    store: JobStore, settings: Settings
) -> None:
    abaco = Receiver(fail_first=1, fail_status=401).start()
    try:
        uuid, token = new_job(store)
        subscribe(store, settings, actor=abaco.url, nonce="SD2E_n0nce-value")
        send(store, settings, uuid, token, "run")
        drain(store, settings)
        rows = store.list_deliveries(job_uuid=uuid)
        assert rows[0]["outcome"] == "failed" and rows[0]["status"] == 401
        assert "n0nce" not in json.dumps(rows, default=str) and "401" in rows[0]["error"]
    finally:
        abaco.stop()


def test_the_test_command_sends_a_signed_sample(store: JobStore, settings: Settings, receiver: Receiver) -> None:
    sub = subscribe(store, settings, url=receiver.url)
    answer = dispatcher.send_test(store, settings, sub, now=now())
    assert answer["ok"] is True and answer["status"] == 204
    got = receiver.wait_for(1)[0]
    assert verify_with_library(sub["secret"], got)["type"] == "pipelinejob.test"
    assert store.list_deliveries(subscription=sub["id"])[0]["outcome"] == "test"


# -- MongoDB: the outbox rides on the log record, the commit point -------------------------------
def logged_run_not_applied(store: MongoJobStore, settings: Settings, receiver: Receiver, event_uuid: str) -> str:
    """A new job with a subscription, and its `run` only logged (the commit point) with the outbox fields."""
    store.ensure_indexes()
    uuid, _ = new_job(store)
    subscribe(store, settings, url=receiver.url)
    ids = tuple(matching.subscriptions(store, settings).by_id)
    at = documents.utc_seconds(now())
    store._insert_record(EventRecord(uuid, 1, event_uuid, "run", at, None, "RUNNING", notify=ids))
    return uuid


def test_mongodb_a_record_logged_by_a_writer_that_died_is_rolled_forward_then_delivered(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings, receiver: Receiver
) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        uuid = logged_run_not_applied(store, settings, receiver, "ev-1")  # the writer died before the job's update
        assert drain(store, settings).waiting == 1 and receiver.received == []
        threading.Event().wait(1.1)  # grace_seconds is 1 here
        for _ in range(60):
            if drain(store, settings).delivered:
                break
            threading.Event().wait(0.1)
        assert receiver.wait_for(1)[0].json()["event_uuid"] == "ev-1"
        job = store.find_job(uuid)
        assert job is not None and job["state"] == "RUNNING" and job["_properties"]["revision"] == 1


def test_mongodb_a_record_whose_job_moved_on_is_never_delivered(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings, receiver: Receiver
) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        uuid = logged_run_not_applied(store, settings, receiver, "ev-lost")
        # something else took revision 1 (a hide bumps the revision without a record)
        db.jobs.update_one({"uuid": uuid}, {"$set": {"_properties.revision": 1}})
        assert drain(store, settings).dropped == 1
        assert receiver.received == [] and outbox(store) == []


def test_mongodb_without_subscriptions_an_event_writes_no_outbox_field(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings
) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        uuid, token = new_job(store)
        send(store, settings, uuid, token, "run")
        assert db.events.count_documents({"notify_due": {"$exists": True}}) == 0
        subscribe(store, settings, url="http://127.0.0.1:9/x")
        send(store, settings, uuid, token, "finish")
        logged = db.events.find_one({"uuid": uuid, "seq": 2})
        assert logged["notify"] and logged["notify_attempts"] == 0


class CommandLog(monitoring.CommandListener):
    """The commands a MongoDB client sends, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: Any) -> None:
        self.seen.append((event.command_name, dict(event.command)))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_mongodb_a_notified_event_still_costs_three_commands(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings
) -> None:
    """The outbox rides on the log record's insert: a matching subscription adds no command."""
    listener = CommandLog()
    with MongoJobStore(mongodb_uri, database_name, client_options={"event_listeners": [listener]}) as store:
        store.ensure_indexes()
        uuid, token = new_job(store)
        subscribe(store, settings, url="http://127.0.0.1:9/x", events=["update"])
        matching.subscriptions(store, settings)  # a warm store has its subscription list
        send(store, settings, uuid, token, "run")  # a state change also moves the watch record
        for data in ({"k": 1}, {"k": 2}):
            listener.seen.clear()
            send(store, settings, uuid, token, "update", data=data)
            assert [c for c, _ in listener.seen] == ["find", "insert", "update"]
        inserted = listener.seen[1][1]["documents"][0]
        assert inserted["name"] == "update" and len(inserted["notify"]) == 1


def test_mongodb_a_busy_dispatcher_pass_is_four_commands_that_name_records_by_an_index(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings, receiver: Receiver
) -> None:
    """While its lease is young a dispatcher neither rereads nor rewrites it (it renews it once half has
    passed); it settles the records it delivered by ``_id``. (A filter no index matches as a whole, such
    as a ``notify_due`` bound with an event-uuid list, makes the MongoDB-wire server decode the whole log
    on every pass.)"""
    listener = CommandLog()
    lease = budget.budget(settings).lease_seconds
    start = now() + timedelta(seconds=10)  # the dispatcher's clock: every event below is due by then
    # pass 1 takes the lease; pass 2 comes within the lease's first half; pass 3 after it, and renews it
    moments = [start, start + timedelta(seconds=lease / 4), start + timedelta(seconds=lease * 3 / 4)]
    with MongoJobStore(mongodb_uri, database_name, client_options={"event_listeners": [listener]}) as store:
        store.ensure_indexes()
        subscribe(store, settings, url=receiver.url)
        running = dispatcher.Dispatcher(store, settings, clock=lambda: moments[0])
        try:
            for n in range(3):
                uuid, token = new_job(store, {"n": n})
                send(store, settings, uuid, token, "run")
                listener.seen.clear()
                assert running.run_pass().delivered == 1
                names = [(c, str(cmd.get(c))) for c, cmd in listener.seen]
                expected = [("find", "events"), ("find", "jobs"), ("insert", "deliveries"), ("update", "events")]
                if n != 1:  # something is due: the lease is taken (or renewed) first
                    expected = [("find", "events"), ("update", "notify_leases"), *expected]
                assert names == expected, (n, names)
                settle = listener.seen[-1][1]["updates"]
                assert [list(u["q"]) for u in settle] == [["_id"]] and list(settle[0]["q"]["_id"]) == ["$in"]
                held = db.notify_leases.find_one({"_id": "outbox"})
                taken = moments[0] if n != 1 else start
                assert held["owner"] == running.owner
                assert abs((held["until"].replace(tzinfo=timezone.utc) - taken).total_seconds() - lease) < 0.01
                moments.pop(0) if n < 2 else None
        finally:
            running.close()
    assert len(receiver.wait_for(3)) == 3
    assert db.events.count_documents({"notify_due": {"$exists": True}}) == 0


def test_mongodb_a_pass_records_its_attempts_in_one_document_listed_row_by_row(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings, receiver: Receiver
) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        first = subscribe(store, settings, url=receiver.url)
        second = subscribe(store, settings, url=receiver.url + "?second")
        jobs = [new_job(store, {"n": n}) for n in range(3)]
        for uuid, token in jobs:
            send(store, settings, uuid, token, "run")
        assert drain(store, settings).delivered == 6
        (stored,) = list(db.deliveries.find())
        assert len(stored["rows"]) == 6 and stored["jobs"] == sorted(uuid for uuid, _ in jobs)
        assert stored["subscriptions"] == sorted([first["id"], second["id"]])
        uuid, token = jobs[0]
        send(store, settings, uuid, token, "finish")
        assert drain(store, settings).delivered == 2
        assert db.deliveries.count_documents({}) == 2
        rows = store.list_deliveries(job_uuid=uuid)
        assert [r["event"] for r in rows] == ["finish", "finish", "run", "run"]  # newest first
        assert {r["job_uuid"] for r in rows} == {uuid}
        mine = store.list_deliveries(job_uuid=uuid, subscription=first["id"])
        assert [(r["event"], r["subscription"]) for r in mine] == [("finish", first["id"]), ("run", first["id"])]
        assert [r["event"] for r in store.list_deliveries(subscription=second["id"], limit=2)] == ["finish", "run"]
        assert len(store.list_deliveries(limit=5)) == 5 and len(store.list_deliveries()) == 8


def test_mongodb_a_catalog_db_init_has_not_upgraded_sends_nothing_and_says_so(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings, receiver: Receiver
) -> None:
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        subscribe(store, settings, url=receiver.url)
        uuid, token = new_job(store)
        send(store, settings, uuid, token, "run")
    db.deliveries.drop_index("jobs_at")  # as an earlier version's catalog lacks it
    with MongoJobStore(mongodb_uri, database_name) as store:
        running = dispatcher.Dispatcher(store, settings)
        with pytest.raises(PipelineJobsError) as refused:
            running.run_pass()
        running.close()
        assert refused.value.kind is ErrorKind.CONFIGURATION and "db init" in refused.value.message
        store.ensure_indexes()
        assert drain(store, settings).delivered == 1
    assert len(receiver.wait_for(1)) == 1 and len(receiver.received) == 1


def test_mongodb_db_init_regroups_delivery_records_of_an_earlier_version(
    mongodb_uri: str, database_name: str, db: Any, settings: Settings
) -> None:
    """Before pass documents, each attempt was a document, indexed by (job_uuid, at) and (subscription, at)."""
    at = now()
    for n, outcome in enumerate(("failed", "delivered")):
        row = {"webhook_id": "msg_1", "subscription": "sub_1", "job_uuid": "job-1", "event": "run", "attempt": n + 1}
        db.deliveries.insert_one({**row, "outcome": outcome, "at": at + timedelta(seconds=n), "expires_at": at})
    db.deliveries.create_index([("job_uuid", 1), ("at", -1)], name="job_at")
    db.deliveries.create_index([("subscription", 1), ("at", -1)], name="subscription_at")
    with MongoJobStore(mongodb_uri, database_name) as store:
        store.ensure_indexes()
        assert [r["outcome"] for r in store.list_deliveries(job_uuid="job-1")] == ["delivered", "failed"]
        assert [r["attempt"] for r in store.list_deliveries(subscription="sub_1")] == [2, 1]
    assert not set(db.deliveries.index_information()) & {"job_at", "subscription_at"}
    assert db.deliveries.count_documents({"rows": {"$exists": False}}) == 0


# -- SQLite: files of version 2 are migrated -----------------------------------------------------------
def test_sqlite_a_version_2_file_gains_the_notification_tables(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "old.sqlite3"
    with SqliteJobStore(path) as store:
        uuid, token = new_job(store)
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE outbox; DROP TABLE subscriptions; DROP TABLE deliveries; PRAGMA user_version = 2;")
    conn.close()
    with SqliteJobStore(path) as store:
        subscribe(store, settings, url="http://127.0.0.1:9/x")
        send(store, settings, uuid, token, "run")
        assert len(outbox(store)) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_sqlite_a_version_3_file_gains_the_outbox_lease_and_its_items_are_delivered(
    tmp_path: Path, settings: Settings, receiver: Receiver
) -> None:
    """Version 3 leased each outbox row; version 4 leases the outbox as a whole (one row, as on MongoDB)."""
    path = tmp_path / "v3.sqlite3"
    with SqliteJobStore(path) as store:
        uuid, token = new_job(store)
        subscribe(store, settings, url=receiver.url)
        send(store, settings, uuid, token, "run")
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE notify_lease; PRAGMA user_version = 3;")
    conn.close()
    with SqliteJobStore(path) as store:
        assert drain(store, settings).delivered == 1 and outbox(store) == []
    assert receiver.wait_for(1)[0].json()["job_uuid"] == uuid
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM notify_lease").fetchone() == (0,)  # released when the drain ended
    conn.close()


def test_sqlite_one_dispatcher_holds_the_outbox_and_renews_its_lease_after_half_of_it(
    tmp_path: Path, settings: Settings, receiver: Receiver
) -> None:
    with SqliteJobStore(tmp_path / "lease.sqlite3") as store:
        subscribe(store, settings, url=receiver.url)
        uuid, token = new_job(store)
        send(store, settings, uuid, token, "run")
        start = now() + timedelta(seconds=10)

        def claim(owner: str, at: datetime) -> int:
            return len(store.claim_notifications(at, until=at + timedelta(seconds=60), owner=owner, limit=10))

        def lease() -> tuple[str, float]:
            with store._reading() as conn:
                return conn.execute("SELECT owner, until FROM notify_lease").fetchone()

        assert claim("first", start) == 1
        taken = lease()
        assert taken == ("first", (start + timedelta(seconds=60)).timestamp())
        assert claim("second", start + timedelta(seconds=59)) == 0  # the first's lease is live
        assert claim("first", start + timedelta(seconds=29)) == 1 and lease() == taken  # young: not rewritten
        assert claim("first", start + timedelta(seconds=31)) == 1 and lease()[1] > taken[1]  # renewed
        assert claim("second", start + timedelta(seconds=92)) == 1 and lease()[0] == "second"  # ran out
        store.release_notifications("second")
        assert lease() is None
