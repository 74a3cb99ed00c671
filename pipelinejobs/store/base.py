"""What the business code needs of storage, and nothing more.

Every write that business rules depend on is one atomic conditional statement
in the backend (a compare-and-set), so racing messages never lose an update;
business code never does read-check-write.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, Protocol

Document = dict[str, Any]


class JobStore(Protocol):
    """The storage protocol shared by the MongoDB and the embedded backends."""

    backend: str

    def ensure_indexes(self) -> None:
        """Create the indexes of compat §1; safe to call every time."""

    def find_pipeline(self, uuid: str) -> Document | None: ...

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        """Insert a pipeline unless its uuid exists; returns (stored, created)."""

    def find_job(self, uuid: str) -> Document | None:
        """The job, hidden or not, or None."""

    def list_jobs(
        self,
        *,
        state: str | None = None,
        pipeline_uuid: str | None = None,
        include_hidden: bool = False,
        limit: int = 100,
    ) -> list[Document]: ...

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        """Insert ``job`` unless its uuid exists; returns (stored, created). Never overwrites."""

    def apply_event(
        self,
        uuid: str,
        *,
        from_states: Collection[str] | None,
        entry: Document,
        new_state: str | None,
        now: datetime,
        audit: Document,
    ) -> Document | None:
        """Atomically append ``entry`` if the job is visible and in ``from_states``.

        Sets ``state`` (unless ``new_state`` is None), ``last_event``, ``updated``,
        ``_properties.modified_date`` and increments ``_properties.revision``.
        Returns the updated job, or None when the precondition did not hold.
        """

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        """Set ``_visible: false`` on a visible job; None when missing or already hidden."""

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        """Write ``tombstone`` to ``updates`` and delete the job, both or neither.

        False when the job changed (revision) or vanished; nothing is written then.
        """

    def close(self) -> None: ...
