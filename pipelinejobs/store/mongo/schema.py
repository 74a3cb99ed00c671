"""The catalog's indexes (what `pipelinejobs db init` creates and drops) and the shape of a delivery document."""

from __future__ import annotations

from typing import Any

from ..records import (
    Document,
)

CREATED = "_properties.created_date"  # the job list's order: (created desc, uuid desc)
#: index name -> (collection, keys, options): what `pipelinejobs db init` creates
INDEXES: dict[str, tuple[str, list[tuple[str, int]], dict[str, Any]]] = {
    "jobs.uuid_unique": ("jobs", [("uuid", 1)], {"unique": True}),
    "jobs.updated": ("jobs", [("updated", -1)], {}),
    # the read API: one index per list filter, each ending in the list's order
    "jobs.created_uuid": ("jobs", [(CREATED, -1), ("uuid", -1)], {}),
    "jobs.state_created": ("jobs", [("state", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.pipeline_created": ("jobs", [("pipeline_uuid", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.session_created": ("jobs", [("session", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.child_of_created": ("jobs", [("child_of", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.archive_path": ("jobs", [("archive_path", 1)], {}),
    "pipelines.uuid_unique": ("pipelines", [("uuid", 1)], {"unique": True}),
    "pipelines.id_unique": ("pipelines", [("id", 1)], {"unique": True}),
    "updates.uuid": ("updates", [("uuid", 1)], {}),
    "events.uuid_seq_unique": ("events", [("uuid", 1), ("seq", 1), ("slot", 1)], {"unique": True}),
    "events.uuid_event_id_unique": (
        "events",
        [("uuid", 1), ("event_id", 1)],
        {"unique": True, "partialFilterExpression": {"event_id": {"$exists": True}}},
    ),
    # -- watch: deadlines, heartbeats, retention --
    "watch.uuid_unique": ("watch", [("uuid", 1)], {"unique": True}),
    "watch.due_at": ("watch", [("due_at", 1)], {}),
    "jobs.state_updated": ("jobs", [("state", 1), ("updated", 1)], {}),
    "jobs.hidden_updated": ("jobs", [("updated", 1)], {"partialFilterExpression": {"_visible": False}}),
    # purge tombstones carry expires_at; MongoDB's TTL monitor removes them then (other records lack the field)
    "updates.expires_at_ttl": ("updates", [("expires_at", 1)], {"expireAfterSeconds": 0}),
    # -- notifications: the outbox is fields of the log records still to be told of --
    # sparse, not partial: some MongoDB-wire servers (secantusd-py) only use a partial index for its own filter
    "events.notify_due": ("events", [("notify_due", 1)], {"sparse": True}),
    "subscriptions.id_unique": ("subscriptions", [("id", 1)], {"unique": True}),
    # a delivery document holds one pass's attempts (``rows``), listed under the jobs and subscriptions they name
    "deliveries.jobs_at": ("deliveries", [("jobs", 1), ("at", -1)], {}),
    "deliveries.subscriptions_at": ("deliveries", [("subscriptions", 1), ("at", -1)], {}),
    "deliveries.expires_at_ttl": ("deliveries", [("expires_at", 1)], {"expireAfterSeconds": 0}),
}
#: indexes of earlier versions that `db init` drops. `state` and `pipeline_uuid` are prefixes of the
#: (state|pipeline, created) indexes above, which answer the same queries; (state, pipeline) served the
#: metrics totals, which read every visible job anyway. Each index is one more entry a server may rewrite
#: on every event's job update (secantusd-py rewrites them all), so fewer is faster, not just smaller.
SUPERSEDED_INDEXES = {
    "jobs": ("state", "pipeline_uuid", "state_pipeline"),
    "deliveries": ("job_at", "subscription_at"),  # a document per attempt, before pass documents
}
#: what the event path relies on: the log's two unique keys (one listIndexes; `db init` makes all at once)
_EVENT_INDEXES = ("events.uuid_seq_unique", "events.uuid_event_id_unique")


def _pass_document(rows: list[Document]) -> Document:
    """One pass's delivery records as one document: one insert and a few index entries, not a document
    and three index entries per attempt (on a MongoDB-wire server that costs ~1 ms of CPU per statement,
    the difference is a twentieth of an event's cost). It expires with its last row."""
    return {
        "at": min(row["at"] for row in rows),
        "expires_at": max(row["expires_at"] for row in rows),
        "jobs": sorted({str(row["job_uuid"]) for row in rows if row.get("job_uuid") is not None}),
        "subscriptions": sorted({str(row["subscription"]) for row in rows}),
        "rows": [dict(row) for row in rows],
    }
