"""`pipelinejobs config show`: every effective setting, typed, and where it came from; secrets hidden."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from ..settings_schema import PROTECTED_SECTIONS, env_name, setting_for, unknown_variables
from .common import emit, settings_of

HIDDEN = "*****"


def _shown(value: Any) -> Any:
    """A typed value as JSON holds it (tuples as lists)."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _text(value: Any) -> str:
    """A value as a person reads it in config.yml's terms: ``~`` for null, lists comma-separated."""
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ", ".join(str(item) for item in value) if value else "[]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(", ", ": ")) if value else "{}"
    return str(value)


def effective(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every setting ``section.key``: its value (secrets only say whether they are set), where it came
    from, the variable that overrides it, and a variable that was set but ignored (security sections)."""
    shown: dict[str, dict[str, Any]] = {}
    for name, origin in settings.origins.items():
        section, key = name.split(".", 1)
        setting = setting_for(section, key, settings.config)
        value = settings.value(section, key)
        if setting.secret:
            value = HIDDEN if value not in (None, "", ()) else None
        protected = section in PROTECTED_SECTIONS or not setting.env
        row: dict[str, Any] = {
            "value": _shown(value),
            "source": origin.source,
            "from": origin.where,
            "variable": None if protected else env_name(section, key),
        }
        if setting.secret:
            row["secret"] = True
        if origin.ignored:
            row["ignored"] = origin.ignored
        shown[name] = row
    return shown


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective settings: defaults, then config.yml, then the ``_REACTOR_*`` environment."""
    settings = settings_of(args)
    rows = effective(settings)
    unknown = unknown_variables(os.environ, settings.origins)
    texts = {name: _text(row["value"]) for name, row in rows.items()}
    width = max(len(name) for name in rows)
    value_width = min(max(len(text) for text in texts.values()), 32)
    lines = []
    for name, row in rows.items():
        line = f"{name:<{width}}  {texts[name]:<{value_width}}  {row['source']}: {row['from']}"
        if row.get("ignored"):
            line += f" ({row['ignored']} ignored: only config.yml sets {name.split('.')[0]} settings)"
        lines.append(line.rstrip())
    lines += [f"{name} is not a setting: ignored (see the names above)" for name in unknown]
    emit(args, {"settings": rows, "unknown_variables": unknown}, "\n".join(lines))
    return 0


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    config = commands.add_parser("config", help="the settings in effect").add_subparsers(metavar="ACTION")
    leaf(config, "show", cmd_config_show, "print every setting in effect and where it came from (secrets hidden)")
