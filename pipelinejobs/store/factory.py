"""The one place that opens a job store from settings.

MongoDB when one is configured, else the embedded SQLite file. Stores are
context managers (``with open_job_store(settings) as store:``). Nothing else
constructs a client or a connection; serve's registry (nonces and executions) is
opened here too, beside the job store, sharing its MongoDB client or next to its
SQLite file.
Indexes are not created here: that is ``pipelinejobs db init`` (and serve's
start), so a message never pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ErrorKind, PipelineJobsError
from ..settings import Settings
from .base import JobStore

if TYPE_CHECKING:
    from .registry import Registry


def open_job_store(settings: Settings, env: Mapping[str, str] | None = None, *, embedded: bool = True) -> JobStore:
    """The configured job store. ``embedded=False`` refuses the SQLite fallback (a shared catalog is needed).

    ``env`` (default: the process environment) supplies HOME/XDG_DATA_HOME for the default SQLite location.
    """
    uri = settings.mongodb_uri
    if uri is None:
        if not embedded:
            raise PipelineJobsError(
                ErrorKind.CONFIGURATION, "this needs mongodb settings: authn, or host (and credentials)"
            )
        from .sqlite import SqliteJobStore, sqlite_path

        path = sqlite_path(settings.section("store").get("sqlite_path"), os.environ if env is None else env)
        return SqliteJobStore(
            path, history_window=settings.history_window, inline_data_bytes=settings.history_inline_data_bytes
        )
    from pymongo.write_concern import WriteConcern

    from .mongo import MongoJobStore

    return MongoJobStore(
        uri.reveal(),
        settings.mongodb_database,
        server_selection_timeout_ms=settings.mongodb_timeout_ms,
        write_concern=WriteConcern(**settings.write_concern),
        history_window=settings.history_window,
        inline_data_bytes=settings.history_inline_data_bytes,
    )


def open_registry(settings: Settings, store: JobStore) -> Registry:
    """Serve's registry beside the job store: in its MongoDB database (sharing its client), else a SQLite file.

    It creates no MongoDB indexes (``ensure_indexes``, which ``pipelinejobs db init`` and serve run).
    """
    from .mongo import MongoJobStore
    from .registry import MongoRegistry, SqliteRegistry, sqlite_path_for
    from .sqlite import SqliteJobStore

    if isinstance(store, MongoJobStore):
        return MongoRegistry(store.database)
    if isinstance(store, SqliteJobStore):
        return SqliteRegistry(sqlite_path_for(store))
    raise PipelineJobsError(ErrorKind.CONFIGURATION, f"no registry can be opened beside the {store.describe()}")
