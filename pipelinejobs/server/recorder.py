"""Execution records written behind: serve answers a message without a registry round trip.

``WriteBehind`` wraps a registry. ``save_execution`` puts the record in memory
and returns; a background thread stores what is pending in one batch (one
``insert_many`` or one SQLite transaction) every ``interval`` seconds, or as soon
as ``batch`` records wait, and everything left at ``close``. Reads look at the
pending records first, so ``GET .../executions/{id}`` and the list see a record
from the moment its POST was answered.

What a crash can lose: a record is buffered only after ``handle_env`` returned,
that is after the message's effect (the event, the job) was written to the job
store with its own durability. A crash of serve (SIGKILL, power loss) can lose
the records still pending, at most ``interval`` seconds or ``batch`` records'
worth: the Abaco-style execution record and logs of messages whose effects are
already durable, never an effect. A registry that stays unreachable keeps
records pending (retrying) up to ``max_pending``, after which the oldest are
dropped with an error in the log.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from datetime import datetime

from .. import logs
from ..errors import PipelineJobsError
from ..jsontext import surrogate_safe
from ..store.registry import Level, Record, Registry, Totals

log = logs.get_logger("server.recorder")


class WriteBehind(Registry):
    """A registry whose execution records are stored in batches by a background thread."""

    def __init__(
        self, inner: Registry, *, interval: float = 0.05, batch: int = 200, max_pending: int = 100_000
    ) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.path = getattr(inner, "path", None)  # the SQLite file, for the start-up line
        self.interval, self.batch, self.max_pending = interval, batch, max_pending
        self._pending: OrderedDict[str, Record] = OrderedDict()  # execution id -> record, oldest first
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="pipelinejobs-executions", daemon=True)
        self._thread.start()

    # -- executions: buffered -----------------------------------------------------------------------
    def save_execution(self, execution: Record) -> None:
        """Buffer the record as it will be stored (``storable``), so reads before and after agree."""
        execution = storable(execution)
        with self._wake:
            self._pending[execution["id"]] = execution
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                log.error("execution record %s dropped: the registry has been unreachable too long", dropped)
            if len(self._pending) >= self.batch:
                self._wake.notify()

    def save_executions(self, executions: list[Record]) -> None:
        for execution in executions:
            self.save_execution(execution)

    def get_execution(self, actor_id: str, execution_id: str) -> Record | None:
        with self._wake:
            pending = self._pending.get(execution_id)
        if pending is not None:
            return pending if pending["actorId"] == actor_id else None
        return self.inner.get_execution(actor_id, execution_id)

    def list_executions(self, actor_id: str, limit: int = 100) -> list[Record]:
        """Newest first, pending records included (a record being flushed may be in both: shown once)."""
        with self._wake:
            pending = [r for r in reversed(self._pending.values()) if r["actorId"] == actor_id]
        stored = self.inner.list_executions(actor_id, limit)
        seen = {r["id"] for r in pending}
        rows = pending + [r for r in stored if r["id"] not in seen]
        rows.sort(key=lambda r: r["messageReceivedTime"], reverse=True)  # stable: ties keep newest first
        return rows[:limit]

    # -- the writer ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._closing and len(self._pending) < self.batch:
                    self._wake.wait(self.interval)
                closing = self._closing
            if not self._flush() and not closing:
                with self._wake:  # the registry failed: back off before retrying
                    self._wake.wait(min(1.0, self.interval * 50))
            if closing:
                return

    def _flush(self) -> bool:
        """Store the pending records; they leave the buffer only once stored. True if nothing failed."""
        while True:
            with self._wake:
                batch = list(itertools.islice(self._pending.values(), self.batch))
            if not batch:
                return True
            try:
                self.inner.save_executions(batch)
            except PipelineJobsError as exc:
                log.warning("execution records not stored yet (%s); retrying", exc.message)
                return False
            except Exception:  # a bug: keep the records, say why once per attempt
                log.exception("execution records not stored yet; retrying")
                return False
            with self._wake:
                for record in batch:
                    if self._pending.get(record["id"]) is record:
                        del self._pending[record["id"]]

    def flush(self) -> bool:
        """Store what is pending now (tests, shutdown). True if the buffer is empty afterwards."""
        return self._flush()

    def close(self) -> None:
        """Stop the writer after a last flush, then close the registry."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)
        with self._wake:
            lost = len(self._pending)
        if lost:
            log.error("%d execution record(s) could not be stored before shutdown", lost)
        self.inner.close()

    # -- everything else goes straight to the registry ---------------------------------------------
    def create_nonce(self, nonce: Record) -> Record:
        return self.inner.create_nonce(nonce)

    def get_nonce(self, actor_id: str, nonce_id: str) -> Record | None:
        return self.inner.get_nonce(actor_id, nonce_id)

    def list_nonces(self, actor_id: str) -> list[Record]:
        return self.inner.list_nonces(actor_id)

    def delete_nonce(self, actor_id: str, nonce_id: str) -> bool:
        return self.inner.delete_nonce(actor_id, nonce_id)

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record | None:
        return self.inner.use_nonce(actor_id, nonce_id, level, now)

    def ensure_indexes(self) -> None:
        self.inner.ensure_indexes()

    def execution_totals(self, actor_id: str) -> Totals:
        self.flush()  # the totals count every execution, the ones still pending too
        return self.inner.execution_totals(actor_id)

    def revoke_session(self, session_id: str, expires: datetime, now: datetime) -> None:
        self.inner.revoke_session(session_id, expires, now)

    def session_revoked(self, session_id: str, now: datetime) -> bool:
        return self.inner.session_revoked(session_id, now)


def storable(execution: Record) -> Record:
    """The record with lone surrogates replaced; what cannot be encoded at all is dropped, and said so."""
    try:
        return surrogate_safe(execution)
    except (RecursionError, ValueError, TypeError):
        kept = {k: v for k, v in execution.items() if k not in ("msg", "result")}
        return {**kept, "result": {"note": "the result was too deeply nested to store"}}
