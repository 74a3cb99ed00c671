"""Where the embedded store's file is: the configured path or the XDG default (the factory asks, before any store)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


# -- locations -------------------------------------------------------------------------------
def default_sqlite_path(env: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/pipelinejobs/pipelinejobs.sqlite3``, else under ``~/.local/share``."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        base = Path(xdg)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "share"
    return base / "pipelinejobs" / "pipelinejobs.sqlite3"


def sqlite_path(configured: Any, env: Mapping[str, str]) -> Path:
    """The configured path (``~`` means ``$HOME``), or the default when none is set."""
    if not configured:
        return default_sqlite_path(env)
    text = str(configured)
    if (text == "~" or text.startswith("~/")) and env.get("HOME"):
        text = env["HOME"] + text[1:]
    return Path(text)
