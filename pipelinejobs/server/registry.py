"""What `pipelinejobs serve` keeps besides jobs: API tokens, Abaco-style nonces and executions.

A nonce with N uses must admit exactly N requests even when they race, so a use
is one conditional write per backend (MongoDB ``find_one_and_update`` with a
``remainingUses > 0`` filter, SQLite ``UPDATE ... WHERE remaining_uses > 0``);
the reason for a refusal is read afterwards, when nothing depends on it.
The registry lives where the jobs live: the same MongoDB database (through the
job store's one client), or a SQLite file next to the embedded job store, used
through a few pooled connections that stay open until ``close``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import string
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ..errors import ErrorKind, PipelineJobsError
from ..settings import Settings
from ..store.sqlite import SqliteJobStore
from .jsontext import dumps_utf8, surrogate_safe

Record = dict[str, Any]

_ID_ALPHABET = string.ascii_letters + string.digits


class Level(enum.IntEnum):
    """Abaco's permission levels; a higher level includes the lower ones (a NONE nonce admits nothing)."""

    NONE = 0
    READ = 1
    EXECUTE = 2
    UPDATE = 3


class Refused(Exception):
    """A request refused with Abaco's wording; the HTTP front end answers 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


NONCE_MISSING = "Nonce does not exist."
NONCE_LEVEL = "Nonce does not have sufficient permissions level."
NONCE_USED_UP = "No remaining uses left for this nonce."


def hashid() -> str:
    """A 13-character id, shaped like Abaco's hashids: 80 random bits in base 62 (one read of the OS's randomness)."""
    number = int.from_bytes(secrets.token_bytes(10), "big")
    digits = []
    for _ in range(13):
        number, digit = divmod(number, 62)
        digits.append(_ID_ALPHABET[digit])
    return "".join(digits)


def abaco_time(moment: datetime) -> str:
    """UTC with milliseconds and a Z, as Abaco displays times."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class ApiTokens:
    """The bearer tokens `serve` accepts, kept only as sha256 digests."""

    def __init__(self, digests: Iterable[str] = ()) -> None:
        self._digests = tuple(sorted({d.strip().lower() for d in digests if d and d.strip()}))

    @classmethod
    def from_plain(cls, tokens: Iterable[str], digests: Iterable[str] = ()) -> ApiTokens:
        return cls([*digests, *(sha256(t) for t in tokens if t)])

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        """Constant-time in the token; every digest is compared so timing tells nothing."""
        digest = sha256(presented)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


INT64_MAX = 2**63 - 1  # the largest count either store keeps exactly (MongoDB's int64)

# Abaco's texts (actors/controllers.py, models.py; the parser's help text is the Nonce model's)
NONCE_NOT_FOUND = "Nonce not found."
MAX_USES_NOT_INTEGER = "The max uses parameter must be an integer."
MAX_USES_RANGE = "The max uses parameter must be a positive integer or -1 (to denote unlimited uses)."
MAX_USES_HELP = "Maximum number of times this nonce can be redeemed. Default is unlimited."
LEVEL_CHOICES = tuple(Level.__members__)
BAD_LEVEL = f"Invalid nonce description. The level attribute must be one of: {LEVEL_CHOICES}"
BAD_NONCE_BODY = "Invalid nonce description: Unable to process the JSON description."
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _max_uses(value: Any, field: str) -> int:
    """maxUses as Abaco's request parser reads it (an integer), then Abaco's range check.

    Deliberately stricter than Python's ``int()``: no booleans, fractions, Unicode digits or
    ``1_000``; and a count beyond int64 is refused rather than overflowing the store.
    """
    unparsable = Refused(f"Invalid nonce description: {{{field!r}: {MAX_USES_HELP!r}}}")
    if value is None:
        raise Refused(MAX_USES_NOT_INTEGER)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise unparsable
        if len(text.lstrip("+-").lstrip("0")) > 19:  # more digits than int64 holds: no int() of a huge string
            raise Refused(f"{MAX_USES_RANGE} The largest is {INT64_MAX}.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise unparsable
    if value == 0 or value < -1:
        raise Refused(MAX_USES_RANGE)
    if value > INT64_MAX:
        raise Refused(f"{MAX_USES_RANGE} The largest is {INT64_MAX}.")
    return value


def new_nonce(
    *,
    actor_id: str,
    owner: str,
    tenant: str,
    now: datetime,
    max_uses: Any = -1,
    level: Any = "EXECUTE",
    description: Any = "",
    roles: Iterable[str] = (),
    field: str = "maxUses",
) -> Record:
    """A nonce record as Abaco stores it, after Abaco's checks of maxUses and level.

    ``field`` is how the request spelled maxUses (``max_uses`` on Tapis v3), for the refusal text.
    Levels are case-sensitive, as in Abaco.
    """
    uses = _max_uses(max_uses, field)
    if not isinstance(level, str) or level not in LEVEL_CHOICES:
        raise Refused(BAD_LEVEL)
    return {
        "id": f"{tenant.upper()}_{hashid()}",
        "actorId": actor_id,
        "owner": owner,
        "roles": list(roles),
        "level": level,
        "maxUses": uses,
        "currentUses": 0,
        "remainingUses": uses,
        "description": "" if description is None else str(description)[:1000],
        "createTime": abaco_time(now),
        "lastUseTime": None,
    }


def refusal(nonce: Record | None, level: Level) -> Refused:
    """Why a use was refused, read after the conditional write missed."""
    if nonce is None:
        return Refused(NONCE_MISSING)
    if Level[nonce["level"]] < level:
        return Refused(NONCE_LEVEL)
    return Refused(NONCE_USED_UP)


# -- how Abaco displays records (models.py ``display()``; the API answers in these shapes) ------
@dataclass(frozen=True)
class Links:
    """Where Abaco's hypermedia points: the tenant's base URL, with v2 or v3 paths."""

    api_server: str
    v3: bool = False

    def actor(self, actor_id: str) -> str:
        return f"{self.api_server}/v3/actors/{actor_id}" if self.v3 else f"{self.api_server}/actors/v2/{actor_id}"

    def profile(self, user: str) -> str:
        return f"{self.api_server}/v3/oauth2/profiles/{user}" if self.v3 else f"{self.api_server}/profiles/v2/{user}"


def display_time(value: str | None) -> str:
    """Abaco shows a time that was never set as the string "None" (``display_time``)."""
    return value or "None"


def display_nonce(nonce: Record, links: Links) -> Record:
    actor = links.actor(nonce["actorId"])
    shown = {
        "id": nonce["id"],
        "actorId": nonce["actorId"],
        "owner": nonce["owner"],
        "roles": list(nonce.get("roles") or []),
        "apiServer": links.api_server,
        "level": nonce["level"],
        "maxUses": nonce["maxUses"],
        "currentUses": nonce["currentUses"],
        "remainingUses": nonce["remainingUses"],
        "description": nonce.get("description", ""),
        "createTime": display_time(nonce.get("createTime")),
        "lastUseTime": display_time(nonce.get("lastUseTime")),
    }
    shown["_links"] = {
        "self": f"{actor}/nonces/{nonce['id']}",
        "owner": links.profile(nonce["owner"]),
        "actor": actor,
    }
    return shown


def display_execution(execution: Record, links: Links) -> Record:
    """One execution; serve measures no container, so ``cpu`` and ``io`` are 0. Logs have their own endpoint."""
    actor = links.actor(execution["actorId"])
    shown = {k: v for k, v in execution.items() if k != "logs"}
    shown.setdefault("cpu", 0)
    shown.setdefault("io", 0)
    shown["apiServer"] = links.api_server
    shown["_links"] = {
        "self": f"{actor}/executions/{execution['id']}",
        "owner": links.profile(str(execution.get("executor") or "")),
        "logs": f"{actor}/executions/{execution['id']}/logs",
    }
    return shown


_SUMMARY_ROW = ("id", "status", "startTime", "finishTime", "messageReceivedTime", "exitCode")


def display_executions(actor_id: str, owner: str, rows: list[Record], totals: Totals, links: Links) -> Record:
    """Abaco's ExecutionsSummary: totals over all the actor's executions, then the rows (newest first)."""
    actor = links.actor(actor_id)
    return {
        "actorId": actor_id,
        "apiServer": links.api_server,
        "owner": owner,
        "totalExecutions": totals.executions,
        "totalCpu": 0,
        "totalIo": 0,
        "totalRuntime": totals.runtime,
        "executions": [{key: row.get(key) for key in _SUMMARY_ROW} for row in rows],
        "_links": {"self": f"{actor}/executions", "owner": links.profile(owner)},
    }


def display_logs(execution: Record, owner: str, links: Links) -> Record:
    url = f"{links.actor(execution['actorId'])}/executions/{execution['id']}"
    return {
        "logs": execution.get("logs", ""),
        "_links": {"self": f"{url}/logs", "owner": links.profile(owner), "execution": url},
    }


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

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record:
        """Count one use atomically, or raise Refused with Abaco's reason."""

    def save_execution(self, execution: Record) -> None: ...

    def save_executions(self, executions: list[Record]) -> None:
        """Store a batch in one round trip; a record already stored (same id) is kept as is."""

    def get_execution(self, actor_id: str, execution_id: str) -> Record | None: ...

    def execution_totals(self, actor_id: str) -> Totals: ...

    def list_executions(self, actor_id: str, limit: int = 100) -> list[Record]: ...

    def ensure_indexes(self) -> None:
        """Create what lookups need (serve at start, ``pipelinejobs db init``); never per request."""

    def close(self) -> None: ...


class MongoRegistry:
    """Collections ``abaco_nonces`` and ``abaco_executions`` in the catalog database.

    It borrows the job store's ``Database`` (one MongoClient per process), so ``close`` leaves it open.
    """

    backend = "mongodb"

    def __init__(self, database: Any) -> None:
        from ..store.mongo import translate_errors

        self._translate = translate_errors
        self.nonces = database["abaco_nonces"]
        self.executions = database["abaco_executions"]

    def ensure_indexes(self) -> None:
        from pymongo import IndexModel

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

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record:
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
        if doc is None:
            raise refusal(self.get_nonce(actor_id, nonce_id), level)
        return self._plain(doc)  # type: ignore[return-value]

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


class SqliteRegistry:
    """The same registry in a SQLite file, through a small pool of connections any thread may borrow.

    A borrowed connection is used by one thread at a time; the pool keeps at most
    ``pool_size`` idle ones open between calls, and ``close`` closes them all.
    """

    backend = "sqlite"

    def __init__(self, path: str | Path, *, pool_size: int = 8) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def use_nonce(self, actor_id: str, nonce_id: str, level: Level, now: datetime) -> Record:
        with self._connect() as conn:
            # one statement: SQLite takes the write lock for it, so racing uses are serialised
            cursor = conn.execute(
                "UPDATE abaco_nonces SET current_uses = current_uses + 1, last_use_time = ?,"
                " remaining_uses = CASE WHEN max_uses = -1 THEN -1 ELSE remaining_uses - 1 END"
                " WHERE id = ? AND actor_id = ? AND level_rank >= ? AND (max_uses = -1 OR remaining_uses > 0)",
                (abaco_time(now), nonce_id, actor_id, int(level)),
            )
            admitted = cursor.rowcount == 1
        nonce = self.get_nonce(actor_id, nonce_id)
        if not admitted or nonce is None:
            raise refusal(nonce, level)
        return nonce

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


def _unavailable(path: Path, exc: Exception) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"the registry file {path} cannot be used ({exc})")


def words(value: Any) -> list[str]:
    """A list from a YAML list or a comma/space separated string (config values, env variables)."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[\s,]+", str(value))
    return [str(item).strip() for item in items if str(item).strip()]


def nonce_tenant(settings: Settings) -> str:
    """The tenant part of nonce ids: ``serve.tenant``, else the identity's tenant."""
    return str(settings.section("serve").get("tenant") or settings.identity.tenant).upper()


def sqlite_path_for(store: SqliteJobStore) -> Path:
    """A file next to the embedded job store's (``<store>.abaco.sqlite``): serve and the CLI share it."""
    return store.path.with_name(store.path.stem + ".abaco.sqlite")
