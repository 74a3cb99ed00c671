"""`pipelinejobs db init`: prepare a store once per deployment (safe to repeat)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..errors import ErrorKind, PipelineJobsError
from .common import emit, log, open_store, settings_of


def cmd_db_init(args: argparse.Namespace) -> int:
    """Create the store's indexes (MongoDB) or tables (SQLite): once per deployment, safe to repeat."""
    from ..store.factory import open_registry

    settings = settings_of(args)
    with open_store(settings) as store:
        store.ensure_indexes()
        registry = open_registry(settings, store)  # serve's nonces and executions
        try:
            registry.ensure_indexes()
        finally:
            registry.close()
        missing = store.missing_indexes()
        if not missing:
            copied = store.log_unlogged_jobs()
            if copied:
                log.warning("%d job(s) of an earlier version now have their history in the event log", copied)
        where = store.describe()
    if missing:
        raise PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"{where}: still missing {', '.join(missing)}")
    emit(args, {"store": where, "ready": True}, f"{where}: indexes ready")
    return 0


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    db = commands.add_parser("db", help="prepare the store").add_subparsers(metavar="ACTION")
    leaf(db, "init", cmd_db_init, "create the indexes (MongoDB) or tables (SQLite); run once per deployment")
