"""Every setting's type, so a value is parsed once, at load, whether config.yml or a ``_REACTOR_*`` variable gave it.

A setting is one line of :data:`SCHEMA`: its kind (how a YAML value or an environment string becomes
the typed value), what null means for it (``~`` in config.yml, an empty variable), and whether it is a
secret (hidden by ``pipelinejobs config show``). A value that does not fit is a ``configuration``
error naming the variable or the key and what was expected, never the value (it may be a password),
and never a silent default. Adding a setting is one line here plus its key in config.yml.

:func:`resolve` layers the shipped defaults, the config file and the environment and remembers where
each value came from. Only the file sets the protected sections (``admin``, ``legacy``,
``durability``): under Abaco every URL parameter of a message becomes an environment variable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ErrorKind, PipelineJobsError

ENV_PREFIX = "_REACTOR_"
PROTECTED_SECTIONS = frozenset({"admin", "legacy", "durability"})
#: strings that mean null for every kind but text (where only an empty string does)
_NULL_WORDS = frozenset({"", "~", "null", "none"})


class Invalid(ValueError):
    """A value that does not fit its kind; the message says what was expected (never the value)."""


class Kind:
    """How a value becomes a setting's type: ``convert`` raises ValueError/TypeError (or :class:`Invalid`
    with a sharper reason) when it cannot, and ``expected`` says what would have fitted."""

    def __init__(
        self, expected: str, convert: Callable[[Any], Any], *, text: bool = False, plain: bool = False
    ) -> None:
        self.expected = expected
        self.convert = convert
        self.text = text  # for text only "" is null: "none" may well be someone's name
        #: a value of this kind is a number, a duration, a boolean or a word from a fixed list: it cannot
        #: carry a credential, so the log redactor need not mask it (86400 would be masked everywhere)
        self.plain = plain

    def parse(self, value: Any) -> Any:
        try:
            return self.convert(value)
        except Invalid:
            raise
        except (ValueError, TypeError, OverflowError):
            raise Invalid(self.expected) from None

    def is_null(self, value: Any) -> bool:
        if value is None:
            return True
        if not isinstance(value, str):
            return False
        return value == "" if self.text else value.strip().lower() in _NULL_WORDS


# -- kinds -----------------------------------------------------------------------------------------
_DIGITS = re.compile(r"\s*\+?([0-9]{1,18})\s*")
_DURATION = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" >= {minimum:g}"
    return ""


def _check_range(number: float, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError("out of range")


def whole(minimum: int | None = None, maximum: int | None = None) -> Kind:
    """A whole number (YAML integer, or decimal digits)."""

    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and (match := _DIGITS.fullmatch(value)):
            number = int(match[1])
        else:
            raise TypeError("not a whole number")
        _check_range(number, minimum, maximum)
        return number

    return Kind(f"a whole number{_bounds(minimum, maximum)}", convert, plain=True)


def seconds(minimum: float = 0, *, whole_seconds: bool = True) -> Kind:
    """A duration: seconds as a number, or with a unit (``90``, ``90s``, ``15m``, ``2h``, ``1d``)."""

    def convert(value: Any) -> int | float:
        if isinstance(value, bool):
            raise TypeError("a boolean is not a duration")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
            number = float(match[1]) * _UNITS[match[2].lower()]
        else:
            raise TypeError("not a duration")
        if not math.isfinite(number):
            raise ValueError("not finite")
        _check_range(number, minimum, None)
        if whole_seconds:
            if number != int(number):
                raise ValueError("not whole seconds")
            return int(number)
        return number

    what = "a whole number of seconds" if whole_seconds else "a number of seconds"
    return Kind(f"{what}{_bounds(minimum, None)} (e.g. 600, 90s, 10m, 2h, 1d)", convert, plain=True)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise ValueError("not a boolean")


BOOLEAN = Kind("true or false", _boolean, plain=True)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):  # YAML read `tenant: 123` as a number
        return str(value)
    raise TypeError("not text")


TEXT = Kind("text (quote it in config.yml if YAML reads it as something else)", _text, text=True)


def choice(*options: str) -> Kind:
    """One of ``options``, in any case."""
    by_upper = {option.upper(): option for option in options}

    def convert(value: Any) -> str:
        found = by_upper.get(_text(value).strip().upper())
        if found is None:
            raise ValueError("not one of the options")
        return found

    return Kind(f"one of {', '.join(options)}", convert, plain=True)


def pattern(regex: str, expected: str, *, lower: bool = False) -> Kind:
    """Text that matches ``regex`` as a whole (compiled once; the patterns here are linear)."""
    compiled = re.compile(regex)

    def convert(value: Any) -> str:
        text = _text(value).strip()
        if not compiled.fullmatch(text):
            raise ValueError("no match")
        return text.lower() if lower else text

    return Kind(expected, convert)


def _json(value: str, what: type) -> Any:
    try:
        loaded = json.loads(value)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(loaded, what):
        raise TypeError("not the right JSON value")
    return loaded


def words(item: Kind = TEXT) -> Kind:
    """A list: a YAML list, a JSON list, or words separated by commas or spaces; each item is ``item``."""

    def convert(value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            stripped = value.strip()
            items = _json(stripped, list) if stripped.startswith("[") else re.split(r"[\s,]+", stripped)
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise TypeError("not a list")
        parsed = []
        for raw in items:
            if isinstance(raw, str) and not raw.strip():
                continue
            try:
                parsed.append(item.parse(raw.strip() if isinstance(raw, str) else raw))
            except Invalid as exc:
                raise Invalid(f"a list (comma-separated, or JSON) of {exc}") from None
        return tuple(parsed)

    return Kind(f"a list (comma-separated, or JSON) of {item.expected}", convert, plain=item.plain)


def mapping(value_kind: Kind, *, what: str = "pipeline uuid") -> Kind:
    """A mapping from ``what`` to ``value_kind``: YAML, or a JSON object in the environment."""

    def convert(value: Any) -> dict[str, Any]:
        loaded = _json(value, dict) if isinstance(value, str) else value
        if not isinstance(loaded, dict):
            raise TypeError("not a mapping")
        parsed: dict[str, Any] = {}
        for key, item in loaded.items():
            try:
                parsed[str(key)] = value_kind.parse(item)
            except Invalid as exc:
                raise Invalid(
                    f"a mapping (JSON object) of {what} to {value_kind.expected}; at {str(key)[:40]!r}: {exc}"
                ) from None
        return parsed

    return Kind(f"a mapping (JSON object) of {what} to {value_kind.expected}", convert)


#: The deadlines of ``deadlines`` (and of a pipeline's or a job's overrides), in seconds; null: no limit.
DEADLINE_NAMES = ("created_seconds", "silent_seconds", "running_seconds", "validating_seconds")
DEADLINE = seconds(1)
#: Terminal states retention may purge (fsm.TERMINAL_STATES; a test keeps them equal).
RETAINABLE_STATES = ("RETIRED", "FAILED", "REJECTED", "FINALIZED")


def _deadline_overrides(value: Any) -> dict[str, int | None]:
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    overrides: dict[str, int | None] = {}
    for name, limit in value.items():
        if name not in DEADLINE_NAMES:
            raise Invalid(f"{str(name)[:40]!r} is not a deadline ({', '.join(DEADLINE_NAMES)})")
        overrides[name] = None if DEADLINE.is_null(limit) else DEADLINE.parse(limit)
    return overrides


DEADLINE_OVERRIDES = Kind("{deadline: seconds or null}", _deadline_overrides)
RETENTION_DAYS = whole(1)


def _retention_days(value: Any) -> int | None:
    if isinstance(value, dict):  # {days: N}, as config.yml's comment shows it
        if set(value) != {"days"}:
            raise TypeError("only days")
        value = value["days"]
    return None if RETENTION_DAYS.is_null(value) else RETENTION_DAYS.parse(value)


RETENTION_OVERRIDE = Kind("{days: N} or N (null: keep forever)", _retention_days)


def _write_concern(value: Any) -> int | str:
    if isinstance(value, str) and not value.strip().isdigit():
        if not value.strip():
            raise ValueError("empty")
        return value.strip()
    return whole(1).parse(value)


WRITE_CONCERN = Kind("majority, a tag set name, or a whole number >= 1", _write_concern)
PORT = whole(1, 65535)
SHA256 = pattern(r"[0-9a-fA-F]{64}", "a sha256 digest (64 hexadecimal characters)", lower=True)
URL = pattern(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", "an http:// or https:// URL without query")


def _network(value: Any) -> str:
    import ipaddress

    return str(ipaddress.ip_network(str(value).strip(), strict=False))


CIDR = Kind("CIDRs such as 127.0.0.0/8 or fd00::/8", _network)
ACTOR_ID = pattern(r"[A-Za-z0-9_.-]{1,64}", "actor ids (letters, digits, '.', '_', '-')")


@dataclass(frozen=True)
class Setting:
    """One setting: its kind, the value null stands for, whether it is secret, whether the environment sets it."""

    kind: Kind
    null: Any = None
    secret: bool = False
    env: bool = True

    def parse(self, value: Any) -> Any:
        return self.null if self.kind.is_null(value) else self.kind.parse(value)


S = Setting
#: Every setting, by section. ``null`` is what ``~`` (or an empty variable) means for it.
SCHEMA: dict[str, dict[str, Setting]] = {
    "mongodb": {
        "authn": S(TEXT, secret=True),
        "host": S(TEXT),
        "port": S(PORT),
        "username": S(TEXT),
        "password": S(TEXT, secret=True),
        "auth_source": S(TEXT),
        "database": S(TEXT, null="catalog"),
        "server_selection_timeout_ms": S(whole(1), null=10000),
    },
    "history": {
        "window": S(whole(10), null=100),
        "inline_data_bytes": S(whole(1), null=65536),
    },
    "durability": {
        "write_concern": S(WRITE_CONCERN, null="majority"),
        "journal": S(BOOLEAN, null=True),
    },
    "store": {
        "sqlite_path": S(TEXT),
    },
    "serve": {
        "host": S(TEXT, null="127.0.0.1"),
        "port": S(PORT, null=8000),
        "actors": S(words(ACTOR_ID), null=()),
        "api_server": S(URL),
        "api_tokens": S(words(), null=(), secret=True),
        "api_token_sha256": S(words(SHA256), null=(), secret=True),
        "username": S(TEXT),
        "tenant": S(TEXT),
        "tls_cert": S(TEXT),
        "tls_key": S(TEXT),
        "workers": S(whole(1), null=1),
        "head_timeout_seconds": S(seconds(0.1, whole_seconds=False), null=10.0),
        "body_timeout_seconds": S(seconds(0.1, whole_seconds=False), null=60.0),
        "keep_alive_seconds": S(seconds(0.1, whole_seconds=False), null=5.0),
        "limit_concurrency": S(whole(1), null=500),
        "max_head_bytes": S(whole(1024), null=65536),
    },
    "admin": {
        "secret_sha256": S(SHA256, secret=True),
        "token_key": S(TEXT, secret=True),
        "token_lifetime": S(whole(1)),  # null: CATALOG_ADMIN_TOKEN_LIFETIME outside Abaco, else 3600
    },
    "legacy": {
        "accept_unverified_tokens": S(BOOLEAN, null=False),
    },
    "limits": {
        "max_message_bytes": S(whole(1), null=1048576),
        "max_data_bytes": S(whole(1), null=262144),
    },
    "logs": {
        "level": S(choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), null="INFO"),
    },
    "deadlines": {
        **{name: S(DEADLINE) for name in DEADLINE_NAMES},
        "heartbeat_log_interval_seconds": S(seconds(1), null=3600),
        "watch_every_seconds": S(seconds(0, whole_seconds=False), null=0.0),
        "pipelines": S(mapping(DEADLINE_OVERRIDES), null={}),
    },
    "retention": {
        "days": S(RETENTION_DAYS),
        "states": S(words(choice(*RETAINABLE_STATES)), null=("RETIRED",)),
        "hidden": S(BOOLEAN, null=True),
        "tombstone_days": S(whole(1), null=90),
        "pipelines": S(mapping(RETENTION_OVERRIDE), null={}),
    },
    "metrics": {
        "jobs_refresh_seconds": S(seconds(0, whole_seconds=False), null=1.0),
        "recount_seconds": S(seconds(0, whole_seconds=False), null=600.0),
    },
    "notifications": {
        "max_attempts": S(whole(1), null=8),
        "backoff_base_seconds": S(seconds(0, whole_seconds=False), null=60.0),
        "backoff_cap_seconds": S(seconds(0, whole_seconds=False), null=1800.0),
        "timeout_seconds": S(seconds(0, whole_seconds=False), null=10.0),
        "lease_seconds": S(seconds(0, whole_seconds=False), null=120.0),
        "every_seconds": S(seconds(0, whole_seconds=False), null=2.0),
        "refresh_seconds": S(seconds(0, whole_seconds=False), null=5.0),
        "batch": S(whole(1), null=100),
        "grace_seconds": S(seconds(0, whole_seconds=False), null=30.0),
        "delivery_days": S(whole(1), null=30),
        "workers": S(whole(1), null=1),
        "allowed_networks": S(words(CIDR), null=()),
        "proxy": S(TEXT),  # a proxy URL, or "none"; null: the environment's proxy variables
    },
}


def inferred(default: Any) -> Setting:
    """A key config.yml ships without a line in :data:`SCHEMA`: typed by its default (null: text, as the
    reactors SDK gives it). tests/test_settings_schema.py asks for a line for every shipped key."""
    if isinstance(default, bool):
        return S(BOOLEAN, null=default)
    if isinstance(default, int):
        return S(whole(), null=default)
    if isinstance(default, float):
        return S(seconds(0, whole_seconds=False), null=default)
    if isinstance(default, list):
        return S(words(), null=tuple(default))
    if isinstance(default, dict):
        return S(mapping(Kind("any value", lambda value: value), what="key"), null=default)
    return S(TEXT, null=default if isinstance(default, str) else None)


def env_name(section: str, key: str) -> str:
    """The variable that overrides ``section.key`` (the reactors SDK's convention)."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


# -- resolving: defaults, then the file, then the environment ----------------------------------------
class Origin(NamedTuple):
    """Where a setting's value came from: ``default``, ``file`` or ``environment``, and which one.

    ``ignored`` names a variable that was set but not used: the setting is the file's only.
    """

    source: str
    where: str
    ignored: str | None = None


def setting_for(section: str, key: str, defaults: Mapping[str, Any]) -> Setting:
    declared = SCHEMA.get(section, {}).get(key)
    if declared is not None:
        return declared
    return inferred((defaults.get(section) or {}).get(key))


def _refuse(where: str, expected: str) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.CONFIGURATION, f"{where}: expected {expected}", setting=where)


def resolve(
    defaults: Mapping[str, Any],
    file: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    defaults_name: str,
    file_name: str,
) -> tuple[dict[str, Any], dict[str, Origin]]:
    """Every setting, typed, and where each came from (keys ``section.key``).

    Sections neither shipped nor declared are kept as the file has them (config.yml may be shared
    with other tools of the reactors SDK); an unknown key in a known section is a configuration error,
    as a misspelt setting would otherwise do nothing.
    """
    sections = dict.fromkeys([*(k for k, v in defaults.items() if isinstance(v, dict)), *SCHEMA])
    config: dict[str, Any] = {k: v for k, v in file.items() if k not in sections}
    origins: dict[str, Origin] = {}
    for section in sections:
        found = defaults.get(section)
        shipped: dict[str, Any] = found if isinstance(found, dict) else {}
        given = file.get(section)
        if given is None:
            given = {}
        elif not isinstance(given, dict):
            raise PipelineJobsError(ErrorKind.CONFIGURATION, f"{file_name}: {section} must be a section of settings")
        keys = dict.fromkeys([*shipped, *SCHEMA.get(section, {})])
        unknown = [str(key) for key in given if key not in keys]
        if unknown:
            raise PipelineJobsError(
                ErrorKind.CONFIGURATION,
                f"{file_name}: unknown setting {section}.{unknown[0][:60]} (the {section} settings: {', '.join(keys)})",
            )
        values: dict[str, Any] = {}
        for key in keys:
            setting = setting_for(section, key, defaults)
            name, full = env_name(section, key), f"{section}.{key}"
            origin, raw, where = Origin("default", defaults_name), shipped.get(key), f"{defaults_name} {full}"
            if key in given:
                origin, raw, where = Origin("file", file_name), given[key], f"{file_name} {full}"
            if name in env:
                if section in PROTECTED_SECTIONS or not setting.env:
                    origin = origin._replace(ignored=name)
                else:
                    origin, raw, where = Origin("environment", name), env[name], name
            try:
                values[key] = setting.parse(raw)
            except Invalid as exc:
                raise _refuse(where, str(exc)) from None
            origins[full] = origin
        config[section] = values
    return config, origins


def unknown_variables(env: Mapping[str, str], origins: Mapping[str, Origin]) -> list[str]:
    """``_REACTOR_<SECTION>_*`` variables of a known section that name no setting of it (a misspelling,
    or a setting of another version): ignored, so ``config show`` and serve's start say so."""
    names = [name.split(".", 1) for name in origins]
    known = {env_name(section, key) for section, key in names}
    prefixes = tuple({f"{ENV_PREFIX}{section.upper()}_" for section, _ in names})
    return sorted(name for name in env if name.startswith(prefixes) and name not in known)


def shown(setting: Setting, value: Any) -> Any:
    """A setting's value as ``config show`` prints it: secrets only say whether they are set."""
    if setting.secret:
        return "(set, hidden)" if value not in (None, "", ()) else None
    return value
