"""The OpenLineage sink: one OpenLineage 2-0-2 RunEvent per state change of a job, for Marquez and friends.

The job is the *run* (``run.runId`` = the job's uuid); its pipeline is the OpenLineage *job*
(``job.namespace`` = the subscription's namespace, ``job.name`` = the pipeline's id, else its
uuid); its archive path is the run's output dataset; its first parent (``child_of``) is the
``parent`` run facet. States map to event types as :data:`EVENT_TYPES` says; a failure carries
the ``errorMessage`` run facet. OpenLineage wants one START and one terminal event (COMPLETE,
FAIL, ABORT) per run, so:

- only events that change the job's state are sent (``changes_only``: the event path writes no
  outbox item for the others);
- a second entry into RUNNING (after an admin's reset) is a RUNNING event, not a second START;
- nothing is sent after the run's terminal event, whatever happens to the job later (a reset,
  a retirement): such an event is recorded as ``skipped``.

The event is POSTed as JSON to the subscription's endpoint (Marquez's ``/api/v1/lineage`` when the
URL has no path), with ``Authorization: Bearer <api_key>`` when the subscription has a key. A 2xx
is delivered; a 4xx (the endpoint will never take this event; 408 and 429 aside) is given up at
once and recorded; a 5xx or no answer is retried. The key is a secret: stored like the other
subscription secrets, masked in listings, never in a log line, an error or a delivery record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .. import __version__, fsm
from ..notify.notification import encode, iso_time
from ..store.records import Document, EventRecord
from ..store.records import Outcome as RecordOutcome
from .base import (
    Attempt,
    Delivery,
    Facts,
    Outcome,
    Sink,
    bad,
    checked_text,
    checked_url,
    failure_name,
    judged,
    shown_url,
)

if TYPE_CHECKING:
    from .http import Clients

#: ``producer`` (and facets' ``_producer``): a URI naming this software and its version
PRODUCER = f"urn:pipelinejobs-manager:{__version__}"
RUN_EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
ERROR_FACET_SCHEMA = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"
PARENT_FACET_SCHEMA = "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet"
DEFAULT_PATH = "/api/v1/lineage"  # Marquez's; the generic spec path is /lineage
DEFAULT_NAMESPACE = "pipelinejobs"

S = fsm.State
#: the RunEvent type of the state an event leads to (RESET: an admin starts the job over; not in the issue's table)
EVENT_TYPES: dict[str, str] = {
    S.CREATED.value: "OTHER",
    S.RUNNING.value: "START",
    S.FINISHED.value: "RUNNING",
    S.INDEXING.value: "RUNNING",
    S.VALIDATING.value: "RUNNING",
    S.VALIDATED.value: "RUNNING",
    S.FINALIZED.value: "COMPLETE",
    S.FAILED.value: "FAIL",
    S.REJECTED.value: "FAIL",
    S.RETIRED.value: "ABORT",
    S.RESET.value: "OTHER",
}
TERMINAL_TYPES = frozenset({"COMPLETE", "FAIL", "ABORT"})
#: where a failing event's data may carry its reason, first found wins
ERROR_KEYS = ("errorMessage", "error", "message", "reason")


def endpoint(url: str) -> str:
    """The lineage endpoint of ``url``: Marquez's path when the URL names none."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=DEFAULT_PATH))
    return url


class OpenLineageSink(Sink):
    kind = "openlineage"
    selector = "openlineage"
    options = ("namespace", "dataset_namespace", "api_key")
    secret_fields = ("api_key",)
    url_fields = ("openlineage",)
    changes_only = True
    label = "OpenLineage"

    def fields(self, given: Mapping[str, Any]) -> Document:
        url = endpoint(checked_url(given.get("openlineage"), "openlineage"))
        namespace = checked_text(given.get("namespace"), "namespace") or DEFAULT_NAMESPACE
        doc: Document = {
            "openlineage": url,
            "namespace": namespace,
            "dataset_namespace": checked_text(given.get("dataset_namespace"), "dataset_namespace") or namespace,
        }
        key = given.get("api_key")
        if key:
            if not isinstance(key, str) or len(key) > 4096 or not key.isprintable():
                raise bad("api_key must be printable text of at most 4096 characters")
            doc["api_key"] = key
        return doc

    def deliver(self, delivery: Delivery, http: Clients) -> Attempt:
        import httpx

        event = run_event(delivery)
        if event is None:
            return Attempt(Outcome.SKIPPED, None, "the OpenLineage run had ended at an earlier event")
        sub = delivery.subscription
        headers = {"content-type": "application/json"}
        if sub.get("api_key"):
            headers["authorization"] = f"Bearer {sub['api_key']}"
        url = str(sub["openlineage"])
        try:
            status = http.post(url, encode(event), headers)
        except httpx.InvalidURL:
            return Attempt(Outcome.RETRY, None, f"the URL cannot be sent to ({shown_url(url)})")
        except httpx.HTTPError as exc:
            return Attempt(Outcome.RETRY, None, f"{failure_name(exc)} reaching {shown_url(url)}")
        return judged(status, url, give_up_on_4xx=True)


SINK = OpenLineageSink()


def run_event(delivery: Delivery) -> dict[str, Any] | None:
    """The RunEvent telling of ``delivery``'s event, or None when its run had already ended."""
    record, sub, facts = delivery.record, delivery.subscription, delivery.facts
    before = [r.state for r in facts.history(record.uuid) if r.outcome is RecordOutcome.APPLIED and r.seq < record.seq]
    if any(EVENT_TYPES.get(state) in TERMINAL_TYPES for state in before):
        return None
    event_type = "OTHER" if delivery.test else EVENT_TYPES.get(record.state, "OTHER")
    if event_type == "START" and S.RUNNING.value in before:
        event_type = "RUNNING"  # started once already (the job was reset since): one START per run
    namespace = str(sub.get("namespace") or DEFAULT_NAMESPACE)
    job = facts.job(record.uuid) or {}
    run_facets: dict[str, Any] = {}
    if event_type == "FAIL":
        run_facets["errorMessage"] = _facet(
            ERROR_FACET_SCHEMA, message=_error_message(record), programmingLanguage="unknown"
        )
    parents = job.get("child_of")
    if isinstance(parents, list) and parents and isinstance(parents[0], str):
        parent = facts.job(parents[0]) or {"uuid": parents[0]}
        run_facets["parent"] = _facet(
            PARENT_FACET_SCHEMA,
            run={"runId": parents[0], "facets": {}},
            job={"namespace": namespace, "name": _job_name(parent, facts), "facets": {}},
        )
    outputs = []
    if isinstance(job.get("archive_path"), str) and job["archive_path"]:
        dataset_namespace = str(sub.get("dataset_namespace") or namespace)
        outputs.append({"namespace": dataset_namespace, "name": job["archive_path"], "facets": {}, "outputFacets": {}})
    name = "subscription-test" if delivery.test else _job_name({**job, "uuid": record.uuid}, facts)
    return {
        "eventTime": iso_time(record.date),
        "producer": PRODUCER,
        "schemaURL": RUN_EVENT_SCHEMA,
        "eventType": event_type,
        "run": {"runId": record.uuid, "facets": run_facets},
        "job": {"namespace": namespace, "name": name, "facets": {}},
        "inputs": [],
        "outputs": outputs,
    }


def _facet(schema: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": PRODUCER, "_schemaURL": schema, **fields}


def _job_name(job: Document, facts: Facts) -> str:
    """The OpenLineage job of a PipelineJob: its pipeline's id, else the pipeline's uuid, else its own uuid."""
    pipeline_uuid = job.get("pipeline_uuid")
    pipeline = facts.pipeline(str(pipeline_uuid)) if pipeline_uuid else None
    if pipeline and isinstance(pipeline.get("id"), str) and pipeline["id"]:
        return str(pipeline["id"])
    return str(pipeline_uuid or job.get("uuid") or "unknown")


def _error_message(record: EventRecord) -> str:
    data = record.data if isinstance(record.data, dict) else {}
    for key in ERROR_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value[:2000]
    return f"the job became {record.state} by its '{record.name}' event"
