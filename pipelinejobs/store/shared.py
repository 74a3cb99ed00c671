"""The algorithms both stores share, written once over small per-backend steps.

``MongoJobStore`` and ``SqliteJobStore`` derive from :class:`SharedStore`, which implements the
parts of the :class:`~.base.JobStore` contract whose logic does not depend on the backend: the
notification outbox's claim and retention's candidates. Each backend writes only the steps: one
indexed probe, one conditional write, one range read.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING

from .base import JobStore
from .records import Document

if TYPE_CHECKING:
    from .outbox import OutboxItem


class SharedStore(JobStore):
    """The contract's shared algorithms; a backend implements the ``_``-prefixed steps."""

    #: dispatcher -> (when it took the outbox's lease, until when): the store object's memory of its leases
    _held: dict[str, tuple[datetime, datetime]]

    # -- the outbox's claim --------------------------------------------------------------------
    def claim_notifications(self, now: datetime, *, until: datetime, owner: str, limit: int) -> list[OutboxItem]:
        """One dispatcher at a time holds the whole outbox (a lease that runs out when its holder dies),
        so a claim writes nothing per item. A holder whose lease is young skips the probe and the lease
        write, and renews it once half has passed: a busy pass is one read."""
        from .outbox import lease_is_young

        if not lease_is_young(self._held.get(owner), now):
            self._held.pop(owner, None)
            if not self._outbox_is_due(now):
                return []  # nothing due: no lease written (an idle dispatcher writes nothing)
            if not self._take_outbox_lease(owner, now, until):
                return []  # another dispatcher's lease is live
            self._held[owner] = (now, until)
        return self._due_outbox_items(now, limit)

    @abstractmethod
    def _outbox_is_due(self, now: datetime) -> bool:
        """Whether any outbox item is due at ``now`` (one indexed probe)."""

    @abstractmethod
    def _take_outbox_lease(self, owner: str, now: datetime, until: datetime) -> bool:
        """Make ``owner`` the outbox's holder until ``until`` unless another's lease is live at ``now``."""

    @abstractmethod
    def _due_outbox_items(self, now: datetime, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` items due at ``now``, earliest first, each with its log record."""

    # -- retention -------------------------------------------------------------------------------
    def retention_candidates(
        self, *, states: list[str], before: datetime, hidden_before: datetime | None, limit: int
    ) -> list[Document]:
        """One range of the (state, updated) index per state, and one of the hidden jobs' (updated) index;
        each job once, at most ``limit``."""
        limit = max(1, limit)
        heads: dict[str, Document] = {}
        for state in states:
            heads.update((head["uuid"], head) for head in self._heads_in_state(state, before, limit))
        if hidden_before is not None:
            heads.update((head["uuid"], head) for head in self._hidden_heads(hidden_before, limit))
        return list(heads.values())[:limit]

    @abstractmethod
    def _heads_in_state(self, state: str, before: datetime, limit: int) -> list[Document]:
        """Heads of up to ``limit`` jobs in ``state`` not updated since ``before``, oldest first."""

    @abstractmethod
    def _hidden_heads(self, before: datetime, limit: int) -> list[Document]:
        """Heads of up to ``limit`` hidden jobs not updated since ``before``, oldest first."""
