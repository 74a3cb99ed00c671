"""The OpenLineage sink (issue 22): RunEvents checked by openlineage-python, retries, the API key.

Every event a loopback receiver gets is rebuilt with the reference client's own classes
(``openlineage.client``: their constructors refuse a missing or unknown field, a runId that is
not a UUID, an eventType outside the spec's, a non date-time eventTime) and serialized back by the
client's ``Serde``; the result must equal what was received, field for field. Deliveries go
through the dispatcher on both stores; one test goes through serve's API and the CLI.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openlineage.client.generated import base as ol
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.parent_run import Job as ParentJob
from openlineage.client.generated.parent_run import ParentRunFacet
from openlineage.client.generated.parent_run import Run as ParentRun
from openlineage.client.serde import Serde

from pipelinejobs import cli, documents, identifiers
from pipelinejobs.notify import subscriptions
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.sinks.base import Delivery, NoFacts
from pipelinejobs.sinks.openlineage import run_event
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.records import Document, EventRecord
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT
from tests.notify_fixtures import Receiver
from tests.server_fixtures import start_server
from tests.test_event_log import IDENTITY
from tests.test_notify import FAST, drain, new_job, now, outbox, send

API_KEY = "ol-k3y-0f-the-lineage-endpoint"
PIPELINE_ID = "tacobot-pipeline"
RUN_FACETS = {"errorMessage": ErrorMessageRunFacet, "parent": ParentRunFacet}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(FAST, ROOT / "config.yml")


@pytest.fixture
def lineage() -> Iterator[Receiver]:
    started = Receiver(status=201).start()  # Marquez answers 201
    yield started
    started.stop()


def base_url(receiver: Receiver) -> str:
    return receiver.url.removesuffix("/hook")


# -- the reference client's reading --------------------------------------------------------------
def _facet(cls: type, fields: dict[str, Any]) -> Any:
    """A facet rebuilt by its class; ``_producer`` is its constructor's ``producer``, ``_schemaURL`` its own."""
    rest = {k: v for k, v in fields.items() if k not in ("_producer", "_schemaURL")}
    if cls is ParentRunFacet:
        rest = {"run": ParentRun(**rest["run"]), "job": ParentJob(**rest["job"])}
    facet = cls(producer=fields["_producer"], **rest)
    assert fields["_schemaURL"] == facet._schemaURL, (fields["_schemaURL"], facet._schemaURL)
    return facet


def parsed(event: dict[str, Any]) -> ol.RunEvent:
    """``event`` as openlineage-python's RunEvent, or an exception; its Serde output must be ``event``."""
    run = event["run"]
    built = ol.RunEvent(
        eventTime=event["eventTime"],
        producer=event["producer"],
        eventType=ol.EventType(event["eventType"]),
        run=ol.Run(runId=run["runId"], facets={k: _facet(RUN_FACETS[k], v) for k, v in run["facets"].items()}),
        job=ol.Job(**event["job"]),
        inputs=[ol.InputDataset(**one) for one in event["inputs"]],
        outputs=[ol.OutputDataset(**one) for one in event["outputs"]],
    )
    assert event["schemaURL"] == built.schemaURL == "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    assert Serde.to_dict(built) == event
    return built


def lineage_job(store: JobStore, *, parent: str | None = None, n: int = 1) -> tuple[str, str]:
    """A job of the example pipeline (registered with its id), with an archive path and maybe a parent."""
    store.save_pipeline({"uuid": EXAMPLE_PIPELINE_UUID, "id": PIPELINE_ID, "name": "tacobot"})
    data = {"n": n, "parent": parent}
    job = documents.new_job(
        uuid=identifiers.job_uuid(EXAMPLE_PIPELINE_UUID, [], data),
        pipeline_uuid=EXAMPLE_PIPELINE_UUID,
        archive_path=f"/products/v2/lineage/{n}",
        archive_system=None,
        data=data,
        session=None,
        child_of=[parent] if parent else [],
        identity=IDENTITY,
        now=documents.utc_seconds(now()),
    )
    stored, _ = store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], now()))
    return job["uuid"], identifiers.job_token(stored["_salt"], job["uuid"], stored["_admin"])


def subscribe(store: JobStore, settings: Settings, receiver: Receiver, **fields: Any) -> Document:
    sub = subscriptions.new_subscription(
        now=now(), pipeline_uuid=EXAMPLE_PIPELINE_UUID, openlineage=base_url(receiver), **fields
    )
    return subscriptions.add_subscription(store, settings, sub)


def drained(store: JobStore, settings: Settings, passes: int = 60) -> None:
    """Drain until the outbox is empty (retries are due within tens of milliseconds here)."""
    import threading

    for _ in range(passes):
        drain(store, settings)
        if not outbox(store):
            return
        threading.Event().wait(0.03)
    raise AssertionError(f"the outbox still holds {outbox(store)}")


# -- the mapping --------------------------------------------------------------------------------
def test_a_job_that_completes_is_one_start_and_one_complete_with_its_lineage(
    store: JobStore, settings: Settings, lineage: Receiver
) -> None:
    parent, _ = new_job(store)
    uuid, token = lineage_job(store, parent=parent)
    sub = subscribe(store, settings, lineage, namespace="sd2e", dataset_namespace="agave://data-sd2e-community")
    assert sub["openlineage"] == base_url(lineage) + "/api/v1/lineage" and sub["changes_only"] is True
    for event in ("run", "update", "finish", "validate", "validated", "finalize", "retire"):
        send(store, settings, uuid, token, event, data={"k": event})
    drained(store, settings)
    got = lineage.wait_for(5)
    assert {r.path for r in got} == {"/api/v1/lineage"} and "authorization" not in got[0].headers
    events = [parsed(r.json()) for r in got]
    assert [e.eventType.value for e in events if e.eventType] == ["START", "RUNNING", "RUNNING", "RUNNING", "COMPLETE"]
    first = got[0].json()
    assert first["run"]["runId"] == uuid and first["job"] == {"namespace": "sd2e", "name": PIPELINE_ID, "facets": {}}
    assert first["outputs"] == [
        {"namespace": "agave://data-sd2e-community", "name": "/products/v2/lineage/1", "facets": {}, "outputFacets": {}}
    ]
    assert first["producer"].startswith("urn:pipelinejobs-manager:") and first["inputs"] == []
    parent_facet = first["run"]["facets"]["parent"]
    assert parent_facet["run"] == {"runId": parent, "facets": {}} and parent_facet["job"]["name"] == PIPELINE_ID
    # the update changed no state: no outbox item; the retirement came after COMPLETE: skipped, recorded
    rows = store.list_deliveries(job_uuid=uuid)
    assert sorted(r["event"] for r in rows) == sorted(["run", "finish", "validate", "validated", "finalize", "retire"])
    assert [r["outcome"] for r in rows if r["event"] == "retire"] == ["skipped"]
    assert len(lineage.received) == 5


def test_a_failed_job_is_a_fail_event_with_its_error_message_and_then_nothing(
    store: JobStore, settings: Settings, lineage: Receiver
) -> None:
    uuid, token = lineage_job(store, n=2)
    subscribe(store, settings, lineage)
    send(store, settings, uuid, token, "run")
    send(store, settings, uuid, token, "fail", data={"message": "rule 'align' exited 137"})
    send(store, settings, uuid, token, "retire")
    drained(store, settings)
    got = [r.json() for r in lineage.wait_for(2)]
    events = [parsed(one) for one in got]
    assert [e.eventType.value for e in events if e.eventType] == ["START", "FAIL"]
    facet = got[1]["run"]["facets"]["errorMessage"]
    assert facet["message"] == "rule 'align' exited 137" and facet["programmingLanguage"] == "unknown"
    assert got[1]["job"] == {"namespace": "pipelinejobs", "name": PIPELINE_ID, "facets": {}}  # the defaults
    newest = store.list_deliveries(job_uuid=uuid)[0]
    assert (newest["event"], newest["outcome"]) == ("retire", "skipped")
    assert len(lineage.received) == 2


def _record(seq: int, state: str, outcome: Any = None) -> EventRecord:
    from pipelinejobs.store.records import Outcome

    return EventRecord(
        "10700000-0000-5000-8000-00000000000a", seq, f"e{seq}", "x", now(), None, state, outcome or Outcome.APPLIED
    )


class Logged(NoFacts):
    """A job's log as the dispatcher would read it (the mapping needs nothing else here)."""

    def __init__(self, *states: str) -> None:
        self.records = [_record(n, state) for n, state in enumerate(states)]

    def history(self, uuid: str) -> list[EventRecord]:
        return self.records


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (("CREATED", "RUNNING"), "START"),
        (("CREATED", "RUNNING", "RESET", "CREATED", "RUNNING"), "RUNNING"),  # reset: started once already
        (("CREATED", "RUNNING", "RESET"), "OTHER"),
        (("CREATED", "RUNNING", "FINISHED", "INDEXING"), "RUNNING"),
        (("CREATED", "RUNNING", "FAILED", "RESET", "CREATED", "RUNNING"), None),  # after FAIL: nothing, ever
        (("CREATED", "RUNNING", "FINISHED", "VALIDATING", "REJECTED"), "FAIL"),
        (("CREATED", "RUNNING", "FINISHED", "RETIRED"), "ABORT"),
        (("CREATED", "RUNNING", "FINISHED", "RETIRED", "RESET"), None),
        (("CREATED", "RESET", "CREATED"), "OTHER"),
    ],
)
def test_the_state_to_event_type_table_and_one_start_and_one_end_per_run(
    states: tuple[str, ...], expected: str | None
) -> None:
    facts = Logged(*states)
    sub = {"id": "sub_x", "target": "openlineage", "openlineage": "http://x/api/v1/lineage", "namespace": "n"}
    event = run_event(Delivery(sub, facts.records[-1], None, "msg_x", facts))
    assert (event and event["eventType"]) == expected
    if event is not None:
        parsed(event)


# -- retries, refusals, the key -------------------------------------------------------------------
def test_a_503_then_201_delivers_the_event_once(store: JobStore, settings: Settings) -> None:
    receiver = Receiver(fail_first=1, fail_status=503, status=201).start()
    try:
        uuid, token = lineage_job(store, n=3)
        sub = subscribe(store, settings, receiver)
        send(store, settings, uuid, token, "run")
        drained(store, settings)
        drain(store, settings)  # nothing is due any more: nothing is sent again
        got = receiver.wait_for(2)
        assert len(receiver.received) == 2 and got[0].body == got[1].body  # the same event, accepted once
        rows = store.list_deliveries(subscription=sub["id"])
        assert [(r["attempt"], r["outcome"], r["status"]) for r in reversed(rows)] == [
            (1, "failed", 503),
            (2, "delivered", 201),
        ]
    finally:
        receiver.stop()


def test_a_400_is_given_up_at_once_and_the_api_key_is_never_logged_nor_recorded(
    store: JobStore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    for logger in ("pipelinejobs", "httpx", "httpcore"):  # ours and the HTTP client's; pymongo's DEBUG shows documents
        caplog.set_level(logging.DEBUG, logger=logger)
    receiver = Receiver(fail_first=100, fail_status=400).start()
    try:
        uuid, token = lineage_job(store, n=4)
        sub = subscribe(store, settings, receiver, api_key=API_KEY)
        send(store, settings, uuid, token, "run")
        report = drain(store, settings)
        assert (report.gave_up, report.retrying, report.delivered) == (1, 0, 0)
        assert outbox(store) == [] and drain(store, settings).gave_up == 0
        [got] = receiver.wait_for(1)
        assert got.headers["authorization"] == f"Bearer {API_KEY}"
        assert len(receiver.received) == 1  # not retried
        [row] = store.list_deliveries(subscription=sub["id"])
        assert (row["outcome"], row["status"], row["attempt"]) == ("gave_up", 400, 1)
        assert "not retried" in row["error"]
        shown = subscriptions.public_view(sub)
        assert shown["api_key"] == "*****"
        for text in (json.dumps(store.list_deliveries(), default=str), caplog.text, json.dumps(shown, default=str)):
            assert API_KEY not in text
    finally:
        receiver.stop()


def test_an_openlineage_subscription_is_checked(settings: Settings) -> None:
    from pipelinejobs.errors import PipelineJobsError

    for fields, words in (
        ({"openlineage": "ftp://marquez/"}, "http"),
        ({"openlineage": "http://u:" + API_KEY + "@marquez/"}, "credentials"),
        ({"openlineage": "http://marquez/", "nonce": "SD2E_x"}, "not an option"),
        ({"openlineage": "http://marquez/", "url": "http://x/"}, "exactly one"),
        ({"openlineage": "http://marquez/", "api_key": "a\nb"}, "api_key"),
        ({"openlineage": "http://marquez/", "namespace": "n" * 300}, "namespace"),
    ):
        with pytest.raises(PipelineJobsError) as err:
            subscriptions.new_subscription(now=now(), pipeline_uuid=EXAMPLE_PIPELINE_UUID, **fields)
        assert words in err.value.message and API_KEY not in err.value.message
    kept = subscriptions.new_subscription(now=now(), job_uuid="j", openlineage="https://marquez.example.org/lineage")
    assert kept["openlineage"] == "https://marquez.example.org/lineage"  # a path given is kept


def test_a_test_send_is_an_other_event_the_reference_client_reads(
    store: JobStore, settings: Settings, lineage: Receiver
) -> None:
    from pipelinejobs.notify.dispatcher import send_test

    sub = subscribe(store, settings, lineage, api_key=API_KEY)
    answer = send_test(store, settings, sub, now=now())
    assert answer["ok"] is True and answer["status"] == 201
    event = parsed(lineage.wait_for(1)[0].json())
    assert event.eventType is ol.EventType.OTHER and event.job.name == "subscription-test"


# -- through serve and the CLI ----------------------------------------------------------------------
def test_serve_takes_an_openlineage_subscription_and_never_shows_its_key(tmp_path: Path, lineage: Receiver) -> None:
    path = tmp_path / "catalog.sqlite3"
    env = {"_REACTOR_STORE_SQLITE_PATH": str(path), **FAST, "_REACTOR_NOTIFICATIONS_EVERY_SECONDS": "0.1"}
    running = start_server(tmp_path, "sqlite", env, {"path": path})
    server = next(running)
    try:
        from tests.server_fixtures import new_job as served_job

        uuid, token = served_job(server)
        body = {"job": uuid, "openlineage": base_url(lineage), "api_key": API_KEY, "namespace": "lab"}
        made = web.post(f"{server.url}/subscriptions", headers=server.auth, json=body)
        assert made.status_code == 200, made.text
        listed = web.get(f"{server.url}/subscriptions", headers=server.auth)
        for answer in (made, listed):
            assert API_KEY not in answer.text and '"api_key":"*****"' in answer.text.replace(" ", "")
        event = {"uuid": uuid, "name": "run", "token": token}
        assert web.post(server.messages_url, headers=server.auth, json=event).status_code == 200
        got = lineage.wait_for(1)[0]
        assert got.headers["authorization"] == f"Bearer {API_KEY}" and parsed(got.json()).job.namespace == "lab"
        for _ in range(100):  # the delivery record is written once the receiver's answer is read
            rows = web.get(f"{server.url}/jobs/{uuid}/deliveries", headers=server.auth)
            if '"delivered"' in rows.text:
                break
            time.sleep(0.05)
        assert '"delivered"' in rows.text and API_KEY not in rows.text
    finally:
        running.close()
    assert API_KEY not in server.read_log()


def test_the_cli_adds_an_openlineage_subscription_with_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("_REACTOR_STORE_SQLITE_PATH", str(tmp_path / "catalog.sqlite3"))
    monkeypatch.setenv("_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("PIPELINEJOBS_OPENLINEAGE_API_KEY", API_KEY)
    add = ["subscription", "add", "--pipeline", EXAMPLE_PIPELINE_UUID, "--openlineage", "http://127.0.0.1:9"]
    assert cli.main([*add, "--namespace", "lab"]) == 0
    out = capsys.readouterr().out
    assert "OpenLineage http://127.0.0.1:9/api/v1/lineage" in out and API_KEY not in out
    assert cli.main(["--json", "subscription", "list"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["api_key"] == "*****" and shown["namespace"] == "lab" and shown["target"] == "openlineage"
