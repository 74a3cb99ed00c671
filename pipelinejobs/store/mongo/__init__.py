"""The MongoDB backend (pymongo), on datacatalog's collections (jobs, pipelines, updates) plus the event log.

An event costs three round trips and no transaction: the caller reads the job's
head (a projection), then :meth:`MongoJobStore.append_event` inserts the log
record, whose unique ``(uuid, seq, slot)`` key makes it the compare-and-set, and
applies it to the job document with an update conditional on the revision read.
A writer that dies between the two leaves a record the document does not show
yet; the next writer meets it on the unique key, applies it ("rolls it
forward") and goes on, so the log stays the truth and nothing is applied twice.

The store is one class built from a mixin per concern (see each module's docstring); this module puts
it together and re-exports the names the rest of the package, the tests and the benchmarks import.
"""

from __future__ import annotations

from .base import hosts_of, translate_errors
from .eventlog import MongoEventLog
from .notifications import MongoNotifications
from .reads import MongoReads, job_query
from .schema import INDEXES, SUPERSEDED_INDEXES
from .watch import MongoWatch

__all__ = [
    "INDEXES",
    "SUPERSEDED_INDEXES",
    "MongoJobStore",
    "hosts_of",
    "job_query",
    "translate_errors",
]


class MongoJobStore(MongoEventLog, MongoWatch, MongoNotifications, MongoReads):
    backend = "mongodb"
    local = False

    def __enter__(self) -> MongoJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
