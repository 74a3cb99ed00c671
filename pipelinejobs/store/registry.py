"""Where `pipelinejobs serve` keeps its Abaco records: nonces and executions, beside the jobs.

A nonce with N uses must admit exactly N requests even when they race, so a use
is one conditional write per backend (MongoDB ``find_one_and_update`` with a
``remainingUses > 0`` filter, SQLite ``UPDATE ... WHERE remaining_uses > 0``);
why a use was refused is for the caller to read afterwards, when nothing depends on it.
The registry lives where the jobs live: the same MongoDB database (through the
job store's one client), or a SQLite file next to the embedded job store, used
through a few pooled connections that stay open until ``close``. What the
records mean and how Abaco shows them is the server's (``server/abaco_records.py``).
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ..errors import ErrorKind, PipelineJobsError
from ..jsontext import dumps_utf8, surrogate_safe
from .files import private_store_file
from .sqlite import SqliteJobStore

Record = dict[str, Any]


class Level(enum.IntEnum):
    """Abaco's permission levels; a higher level includes the lower ones (a NONE nonce admits nothing).

    Stored as ``levelRank`` / ``level_rank`` so that a use is admitted by one conditional write.
    """

    NONE = 0
    READ = 1
    EXECUTE = 2
    UPDATE = 3


def abaco_time(moment: datetime) -> str:
    """UTC with milliseconds and a Z, as Abaco stores and displays times."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Totals:
    """What an actor's executions add up to (the summary counts all of them, not just the page shown)."""

    executions: int = 0
    runtime: float = 0.0


class Registry(Protocol):
    backend: str

    def create_nonce(self, nonce: Record) -> Record: ...

    def get_nonce(self, actor_id: str, nonce_id: str) -> Record | None: ...

    def list_nonces(self, actor_id: str) -> list[Record]: ...

    def delete_nonce(self, actor_id: str, nonce_id: str) -> bool: ...

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record | None:
        """Count one use atomically and return the nonce as it is now; None when the nonce does not
        exist for this actor, has too low a level or no uses left (the caller reads why)."""

    def save_execution(self, execution: Record) -> None: ...

    def save_executions(self, executions: list[Record]) -> None:
        """Store a batch in one round trip; a record already stored (same id) is kept as is."""

    def get_execution(self, actor_id: str, execution_id: str) -> Record | None: ...

    def execution_totals(self, actor_id: str) -> Totals: ...

    def list_executions(self, actor_id: str, limit: int = 100) -> list[Record]: ...

    def ensure_indexes(self) -> None:
        """Create what lookups need (serve at start, ``pipelinejobs db init``); never per request."""

    def close(self) -> None: ...

    # -- the web view's signed-out sessions ------------------------------------------------------
    def revoke_session(self, session_id: str, expires: datetime, now: datetime) -> None:
        """Remember that a web view session was signed out, until ``expires`` (when its cookie lapses
        anyway); forget the revocations already past theirs."""

    def session_revoked(self, session_id: str, now: datetime) -> bool:
        """Whether the session was signed out (and its cookie has not expired yet)."""


class MongoRegistry(Registry):
    """Collections ``abaco_nonces`` and ``abaco_executions`` in the catalog database.

    It borrows the job store's ``Database`` (one MongoClient per process), so ``close`` leaves it open.
    """

    backend = "mongodb"

    def __init__(self, database: Any) -> None:
        from .mongo import translate_errors

        self._translate = translate_errors
        self.nonces = database["abaco_nonces"]
        self.executions = database["abaco_executions"]

    def ensure_indexes(self) -> None:
        from pymongo import IndexModel

        self._ensure_session_indexes()
        with self._translate():
            self.nonces.create_indexes([IndexModel("id", unique=True, name="id_unique")])
            self.executions.create_indexes(
                [
                    IndexModel("id", unique=True, name="id_unique"),
                    IndexModel([("actorId", 1), ("messageReceivedTime", -1)], name="actor_time"),
                ]
            )

    @staticmethod
    def _plain(doc: Record | None) -> Record | None:
        if doc is None:
            return None
        return {k: v for k, v in doc.items() if k not in ("_id", "levelRank")}

    def create_nonce(self, nonce: Record) -> Record:
        nonce = surrogate_safe(nonce)  # BSON cannot hold a lone surrogate (e.g. in the description)
        with self._translate():
            self.nonces.insert_one({**nonce, "levelRank": int(Level[nonce["level"]])})
        return dict(nonce)

    def get_nonce(self, actor_id: str, nonce_id: str) -> Record | None:
        with self._translate():
            return self._plain(self.nonces.find_one({"id": nonce_id, "actorId": actor_id}))

    def list_nonces(self, actor_id: str) -> list[Record]:
        with self._translate():
            return [self._plain(d) for d in self.nonces.find({"actorId": actor_id}).sort("createTime", 1)]  # type: ignore[misc]

    def delete_nonce(self, actor_id: str, nonce_id: str) -> bool:
        with self._translate():
            return self.nonces.delete_one({"id": nonce_id, "actorId": actor_id}).deleted_count == 1

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record | None:
        from pymongo import ReturnDocument

        base = {"id": nonce_id, "actorId": actor_id, "levelRank": {"$gte": int(level)}}
        stamp = {"$set": {"lastUseTime": abaco_time(now)}}
        with self._translate():
            # limited nonces: the filter admits the use only while uses remain
            doc = self.nonces.find_one_and_update(
                {**base, "remainingUses": {"$gt": 0}},
                {**stamp, "$inc": {"remainingUses": -1, "currentUses": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:  # unlimited nonces keep remainingUses at -1
                doc = self.nonces.find_one_and_update(
                    {**base, "maxUses": -1},
                    {**stamp, "$inc": {"currentUses": 1}},
                    return_document=ReturnDocument.AFTER,
                )
        return self._plain(doc)

    def save_execution(self, execution: Record) -> None:
        self.save_executions([execution])

    def save_executions(self, executions: list[Record]) -> None:
        from pymongo.errors import BulkWriteError

        if not executions:
            return
        with self._translate():
            try:  # unordered: a duplicate (from a retried batch) does not stop the rest
                self.executions.insert_many([surrogate_safe(dict(e)) for e in executions], ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if exc.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
                    raise

    def get_execution(self, actor_id: str, execution_id: str) -> Record | None:
        with self._translate():
            return self._plain(self.executions.find_one({"id": execution_id, "actorId": actor_id}))

    def execution_totals(self, actor_id: str) -> Totals:
        pipeline = [
            {"$match": {"actorId": actor_id}},
            {"$group": {"_id": None, "executions": {"$sum": 1}, "runtime": {"$sum": "$runtime"}}},
        ]
        with self._translate():
            found = list(self.executions.aggregate(pipeline))
        if not found:
            return Totals()
        return Totals(int(found[0]["executions"]), round(float(found[0]["runtime"] or 0), 3))

    def list_executions(self, actor_id: str, limit: int = 100) -> list[Record]:
        with self._translate():
            cursor = self.executions.find({"actorId": actor_id}).sort("messageReceivedTime", -1).limit(limit)
            return [self._plain(d) for d in cursor]  # type: ignore[misc]

    def close(self) -> None:
        """The client belongs to the job store, which closes it."""

    # -- the web view's signed-out sessions (collection ``ui_revoked_sessions``) -------------------
    def _sessions(self) -> Any:
        return self.nonces.database["ui_revoked_sessions"]

    def _ensure_session_indexes(self) -> None:
        from pymongo import IndexModel

        with self._translate():
            self._sessions().create_indexes([IndexModel("expires", name="expires")])

    def revoke_session(self, session_id: str, expires: datetime, now: datetime) -> None:
        with self._translate():
            sessions = self._sessions()
            sessions.delete_many({"expires": {"$lte": now}})
            sessions.update_one({"_id": session_id}, {"$set": {"expires": expires}}, upsert=True)

    def session_revoked(self, session_id: str, now: datetime) -> bool:
        with self._translate():
            return self._sessions().find_one({"_id": session_id, "expires": {"$gt": now}}, {"_id": 1}) is not None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS abaco_nonces (
    id TEXT PRIMARY KEY,
    actor_id TEXT NOT NULL,
    level_rank INTEGER NOT NULL,
    max_uses INTEGER NOT NULL,
    remaining_uses INTEGER NOT NULL,
    current_uses INTEGER NOT NULL DEFAULT 0,
    last_use_time TEXT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS abaco_executions (
    id TEXT PRIMARY KEY,
    actor_id TEXT NOT NULL,
    received TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS abaco_executions_actor ON abaco_executions (actor_id, received);
"""
#: the web view's signed-out sessions, each kept until its cookie would have expired anyway
_SESSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS ui_revoked_sessions (id TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ui_revoked_sessions_expires ON ui_revoked_sessions (expires);
"""


class SqliteRegistry(Registry):
    """The same registry in a SQLite file, through a small pool of connections any thread may borrow.

    A borrowed connection is used by one thread at a time; the pool keeps at most
    ``pool_size`` idle ones open between calls, and ``close`` closes them all.
    """

    backend = "sqlite"

    def __init__(self, path: str | Path, *, pool_size: int = 8) -> None:
        self.path = Path(path)
        try:
            private_store_file(self.path)  # 0600 in a 0700 directory: nonces are credentials
        except OSError as exc:
            raise _unavailable(self.path, exc) from exc
        self._pool_size = pool_size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.ensure_indexes()

    def ensure_indexes(self) -> None:
        """Tables and index (idempotent, local and cheap: also run when the file is first opened)."""
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.executescript(_SESSIONS_SCHEMA)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection; driver failures become one clear error."""
        with self._lock:
            if self._closed:
                raise PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"the registry file {self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        healthy = False
        try:
            if conn is None:
                conn = self._open()
            yield conn
            healthy = not conn.in_transaction
        except sqlite3.DatabaseError as exc:
            raise _unavailable(self.path, exc) from exc
        finally:
            if conn is not None:
                self._give_back(conn, healthy)

    def _give_back(self, conn: sqlite3.Connection, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._pool_size:
                self._idle.append(conn)
                return
        conn.close()

    @staticmethod
    def _nonce(row: sqlite3.Row | None) -> Record | None:
        if row is None:
            return None
        record = json.loads(row["record"])
        record.update(currentUses=row["current_uses"], remainingUses=row["remaining_uses"])
        record["lastUseTime"] = row["last_use_time"]
        return record

    def create_nonce(self, nonce: Record) -> Record:
        nonce = surrogate_safe(nonce)  # stored and shown as the MongoDB registry would
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO abaco_nonces (id, actor_id, level_rank, max_uses, remaining_uses, current_uses, record)"
                " VALUES (?, ?, ?, ?, ?, 0, ?)",
                (
                    nonce["id"],
                    nonce["actorId"],
                    int(Level[nonce["level"]]),
                    nonce["maxUses"],
                    nonce["remainingUses"],
                    json.dumps(nonce),
                ),
            )
        return dict(nonce)

    def get_nonce(self, actor_id: str, nonce_id: str) -> Record | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM abaco_nonces WHERE id = ? AND actor_id = ?", (nonce_id, actor_id))
            return self._nonce(row.fetchone())

    def list_nonces(self, actor_id: str) -> list[Record]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM abaco_nonces WHERE actor_id = ? ORDER BY rowid", (actor_id,))
            return [self._nonce(r) for r in rows.fetchall()]  # type: ignore[misc]

    def delete_nonce(self, actor_id: str, nonce_id: str) -> bool:
        with self._connect() as conn:
            cursor = conn.execute("DELETE FROM abaco_nonces WHERE id = ? AND actor_id = ?", (nonce_id, actor_id))
            return cursor.rowcount == 1

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record | None:
        with self._connect() as conn:
            # one statement: SQLite takes the write lock for it, so racing uses are serialised
            cursor = conn.execute(
                "UPDATE abaco_nonces SET current_uses = current_uses + 1, last_use_time = ?,"
                " remaining_uses = CASE WHEN max_uses = -1 THEN -1 ELSE remaining_uses - 1 END"
                " WHERE id = ? AND actor_id = ? AND level_rank >= ? AND (max_uses = -1 OR remaining_uses > 0)",
                (abaco_time(now), nonce_id, actor_id, int(level)),
            )
            admitted = cursor.rowcount == 1
        return self.get_nonce(actor_id, nonce_id) if admitted else None

    def save_execution(self, execution: Record) -> None:
        self.save_executions([execution])

    def save_executions(self, executions: list[Record]) -> None:
        if not executions:
            return
        rows = [(e["id"], e["actorId"], e["messageReceivedTime"], dumps_utf8(e).decode()) for e in executions]
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # one transaction, one commit for the batch
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO abaco_executions (id, actor_id, received, record) VALUES (?, ?, ?, ?)", rows
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def get_execution(self, actor_id: str, execution_id: str) -> Record | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT record FROM abaco_executions WHERE id = ? AND actor_id = ?", (execution_id, actor_id)
            ).fetchone()
        return json.loads(row["record"]) if row else None

    def execution_totals(self, actor_id: str) -> Totals:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT COUNT(*), TOTAL(json_extract(record, '$.runtime')) FROM abaco_executions WHERE actor_id = ?",
                (actor_id,),
            ).fetchone()
        return Totals(int(row[0]), round(float(row[1]), 3))

    def list_executions(self, actor_id: str, limit: int = 100) -> list[Record]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM abaco_executions WHERE actor_id = ? ORDER BY received DESC, rowid DESC LIMIT ?",
                (actor_id, limit),
            ).fetchall()
        return [json.loads(r["record"]) for r in rows]

    def close(self) -> None:
        """Close the pooled connections; later calls are refused."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the web view's signed-out sessions (table ``ui_revoked_sessions``) ------------------------
    def revoke_session(self, session_id: str, expires: datetime, now: datetime) -> None:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM ui_revoked_sessions WHERE expires <= ?", (now.timestamp(),))
                conn.execute(
                    "INSERT OR REPLACE INTO ui_revoked_sessions (id, expires) VALUES (?, ?)",
                    (session_id, expires.timestamp()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def session_revoked(self, session_id: str, now: datetime) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM ui_revoked_sessions WHERE id = ? AND expires > ?", (session_id, now.timestamp())
            ).fetchone()
        return row is not None


def _unavailable(path: Path, exc: Exception) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"the registry file {path} cannot be used ({exc})")


def sqlite_path_for(store: SqliteJobStore) -> Path:
    """A file next to the embedded job store's (``<store>.abaco.sqlite``): serve and the CLI share it."""
    return store.path.with_name(store.path.stem + ".abaco.sqlite")
