"""Store files private to their owner: 0600 files in a 0700 directory, made so or put right at every open.

The embedded job store and serve's registry hold job salts (job tokens derive from them), nonces, webhook
secrets and actor credentials. SQLite creates a database file with mode 0644 (less the umask), so here the
file is created empty with 0600 before SQLite opens it; SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the database file's mode. Files and a directory of an earlier version, or made by hand,
are narrowed when opened. A directory is narrowed only when it is the store's own (it holds nothing but
files named like the store's): a shared one (``/tmp``, a home or project directory) keeps its mode, with a
warning, since narrowing it would lock its other users out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..logs import get_logger

log = get_logger("store.files")

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
#: what SQLite and the store put beside a database file
SIBLING_SUFFIXES = ("-wal", "-shm", "-journal", "-lock")


def private_store_file(path: Path) -> None:
    """Make ``path`` (a SQLite file, created empty if missing), its siblings and its directory private."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=PRIVATE_DIRECTORY, exist_ok=True)
    _narrow_directory(directory, path.name.split(".", 1)[0])
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SIBLING_SUFFIXES)):
        _narrow(candidate, PRIVATE_FILE)


def _narrow(path: Path, mode: int) -> bool:
    """Take group and other permissions off ``path`` if it has any; False when that is not allowed."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return True
    if current & 0o077 == 0:
        return True
    try:
        path.chmod(mode)
    except PermissionError:
        log.warning("%s is readable by other users (mode %o) and cannot be narrowed: make it %o", path, current, mode)
        return False
    log.info("%s was mode %o; now %o (it holds secrets)", path, current, mode)
    return True


def _narrow_directory(directory: Path, stem: str) -> None:
    """Narrow the store's own directory; warn about a shared one that others can list."""
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077 == 0:
        return
    if _holds_only_the_store(directory, stem):
        _narrow(directory, PRIVATE_DIRECTORY)
    else:
        log.warning(
            "the store's directory %s is shared (mode %o): its files are private, but a directory of its own "
            "(mode 700) also hides their names and sizes",
            directory,
            mode,
        )


def _holds_only_the_store(directory: Path, stem: str) -> bool:
    """Whether every entry of ``directory`` is a file named like the store's (``<stem>.…``); stops at the first not."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.split(".", 1)[0] == stem and entry.is_file(follow_symlinks=False)):
                return False
    return True
