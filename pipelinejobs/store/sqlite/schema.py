"""The SQLite file's tables, indexes and triggers, its schema version and the migration from version 1.

The DDL in one place: the base class runs it, the read side's queries name its JSON expressions.
"""

from __future__ import annotations

SCHEMA_VERSION = 5  # 3: notifications (outbox, subscriptions, deliveries); 4: one lease on the outbox; 5: job_counts

#: fields of the job document written once at creation that the read API filters and orders on
_CREATED = """json_extract(doc, '$._properties.created_date."$date"')"""  # ISO 8601 UTC text: sorts as time
_SESSION = "json_extract(doc, '$.session')"
_ARCHIVE_PATH = "json_extract(doc, '$.archive_path')"

# -- job counts: visible jobs per (state, pipeline), kept by triggers in the writing transaction --
#: '' stands for a null state or pipeline (a key column cannot be null); read back as "None", as str() shows it
_COUNT_KEY = "IFNULL({row}.state, ''), IFNULL({row}.pipeline_uuid, '')"
_COUNT_IN = (
    "INSERT INTO job_counts (state, pipeline, n) SELECT {key}, 1 WHERE {when}"
    " ON CONFLICT (state, pipeline) DO UPDATE SET n = n + 1;"
)
_COUNT_OUT = "UPDATE job_counts SET n = n - 1 WHERE {when} AND (state, pipeline) = ({key});"
_JOB_COUNTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS job_counts (
        state TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (state, pipeline)
    ) WITHOUT ROWID""",
    "CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN "
    + _COUNT_IN.format(key=_COUNT_KEY.format(row="NEW"), when="NEW.visible = 1")
    + " END",
    "CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN "
    + _COUNT_OUT.format(key=_COUNT_KEY.format(row="OLD"), when="OLD.visible = 1")
    + " END",
    # fires only when a statement assigns one of these columns (an event that keeps the state does not)
    "CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state, visible, pipeline_uuid ON jobs"
    " WHEN OLD.state IS NOT NEW.state OR OLD.visible IS NOT NEW.visible OR OLD.pipeline_uuid IS NOT NEW.pipeline_uuid"
    " BEGIN "
    + _COUNT_OUT.format(key=_COUNT_KEY.format(row="OLD"), when="OLD.visible = 1")
    + _COUNT_IN.format(key=_COUNT_KEY.format(row="NEW"), when="NEW.visible = 1")
    + " END",
    # a file of an earlier version: its jobs counted once (afterwards the triggers keep the counts)
    f"""INSERT INTO job_counts (state, pipeline, n)
        SELECT {_COUNT_KEY.format(row="jobs")}, COUNT(*) FROM jobs
        WHERE visible = 1 AND NOT EXISTS (SELECT 1 FROM job_counts) GROUP BY 1, 2""",
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        uuid TEXT NOT NULL UNIQUE,
        state TEXT,
        pipeline_uuid TEXT,
        visible INTEGER NOT NULL,
        updated REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)",
    "CREATE INDEX IF NOT EXISTS jobs_pipeline_uuid ON jobs (pipeline_uuid)",
    "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated)",
    """CREATE TABLE IF NOT EXISTS pipelines (
        uuid TEXT NOT NULL UNIQUE,
        id TEXT UNIQUE,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS updates (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT,
        action TEXT,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS updates_uuid ON updates (uuid)",
    """CREATE TABLE IF NOT EXISTS events (
        uuid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        slot TEXT NOT NULL,
        event_id TEXT,
        outcome TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (uuid, seq, slot),
        UNIQUE (uuid, event_id)
    )""",
    # -- watch: deadlines, heartbeats, retention --
    """CREATE TABLE IF NOT EXISTS watch (
        uuid TEXT NOT NULL UNIQUE,
        revision INTEGER NOT NULL,
        due_at REAL,
        logged_at REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS watch_due_at ON watch (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated)",
    "CREATE INDEX IF NOT EXISTS jobs_hidden_updated ON jobs (updated) WHERE visible = 0",
    "CREATE INDEX IF NOT EXISTS updates_action ON updates (action)",
    # -- the read API: an index per list filter, each ending in the list's order --
    f"CREATE INDEX IF NOT EXISTS jobs_created ON jobs ({_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_pipeline_created ON jobs (pipeline_uuid, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_session_created ON jobs ({_SESSION}, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_archive_path ON jobs ({_ARCHIVE_PATH})",
    "CREATE INDEX IF NOT EXISTS jobs_state_pipeline ON jobs (state, pipeline_uuid, visible)",
    # a job's parents (its child_of array) as rows, kept by triggers, so "children of X" is an index lookup
    """CREATE TABLE IF NOT EXISTS job_parents (
        parent TEXT NOT NULL,
        uuid TEXT NOT NULL,
        PRIMARY KEY (parent, uuid)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS jobs_parents_insert AFTER INSERT ON jobs BEGIN
        INSERT OR IGNORE INTO job_parents (parent, uuid)
            SELECT value, NEW.uuid FROM json_each(NEW.doc, '$.child_of') WHERE type = 'text';
    END""",
    """CREATE TRIGGER IF NOT EXISTS jobs_parents_delete AFTER DELETE ON jobs BEGIN
        DELETE FROM job_parents WHERE uuid = OLD.uuid;
    END""",
    # -- notifications: an outbox row is written in its event's transaction --
    """CREATE TABLE IF NOT EXISTS outbox (
        uuid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        slot TEXT NOT NULL,
        pending TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        lease TEXT,
        PRIMARY KEY (uuid, seq, slot)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due)",
    # one dispatcher at a time holds the outbox, until its lease runs out (outbox.lease is unused since)
    """CREATE TABLE IF NOT EXISTS notify_lease (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        until REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS subscriptions (
        id TEXT PRIMARY KEY,
        created REAL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_uuid TEXT,
        subscription TEXT,
        expires_at REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_uuid, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_subscription ON deliveries (subscription, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_expires ON deliveries (expires_at) WHERE expires_at IS NOT NULL",
    # jobs written before the table existed (runs once: afterwards the table is not empty)
    """INSERT OR IGNORE INTO job_parents (parent, uuid)
        SELECT p.value, jobs.uuid FROM jobs, json_each(jobs.doc, '$.child_of') AS p
        WHERE p.type = 'text' AND NOT EXISTS (SELECT 1 FROM job_parents)""",
    *_JOB_COUNTS_SCHEMA,
)
#: version 1 files kept each job's whole history in its document; these columns take over what changes
_MIGRATE_TO_2 = (
    "ALTER TABLE jobs ADD COLUMN last_event TEXT",
    "ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN logged INTEGER NOT NULL DEFAULT 0",
    "UPDATE jobs SET last_event = json_extract(doc, '$.last_event'),"
    " revision = COALESCE(json_extract(doc, '$._properties.revision'), 0)",
)
_NEW_COLUMNS = {"last_event", "revision", "logged"}
