"""Settings: the shipped defaults, config.yml over them, then the reactors SDK's ``_REACTOR_*`` overrides.

Everything is read from a mapping passed in (the process environment in production, a plain
dict in tests), and every value is parsed to its type once, here (``settings_schema``): a value
that does not fit is a ``configuration`` error at start, never a silent default. Under Abaco
every URL query parameter also becomes an environment variable, so the security sections
(``admin``, ``legacy``, ``durability``) are never taken from the environment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from .errors import ErrorKind, PipelineJobsError
from .settings_schema import (
    ENV_PREFIX,
    PROTECTED_SECTIONS,
    SCHEMA,
    Invalid,
    Origin,
    env_name,
    resolve,
    setting_for,
)

__all__ = ["ENV_PREFIX", "PROTECTED_SECTIONS", "Origin", "Secret", "Settings", "load_settings", "words"]
DEFAULT_ADMIN_KEY = "XB]6f^~T3)EDxB(3A6F@CE>JTU.T>whH"
DEFAULT_ADMIN_LIFETIME = 3600
ROOT_CONFIG = Path(__file__).resolve().parent.parent / "config.yml"
#: The checkout's config.yml, shipped inside the wheel under this name (pyproject's force-include), so an
#: installed package has every key and its default, and ``_REACTOR_*`` overrides find the keys they override.
PACKAGED_DEFAULTS = Path(__file__).resolve().parent / "defaults.yml"


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in a log line)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class AdminTokens:
    """How admin tokens are derived; ``secret`` is None when they are disabled."""

    secret: Secret | None
    key: Secret
    lifetime: int
    disabled_reason: str | None = None


@dataclass(frozen=True)
class Identity:
    """Who the manager writes jobs as (the ``_admin`` block) and the UUID domain."""

    owner: str
    project: str
    tenant: str
    dns_domain: str


@dataclass(frozen=True)
class Settings:
    config: dict[str, Any]  # section -> key -> typed value (settings_schema)
    admin: AdminTokens
    identity: Identity
    secrets: tuple[str, ...]  # every secret value, for the log redactor
    #: the environment's proxy variables (HTTPS_PROXY, NO_PROXY...), for notifications (none under Abaco)
    proxy_environment: Mapping[str, str] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)  # "section.key" -> where its value came from

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    def value(self, section: str, key: str) -> Any:
        """A setting's typed value; a KeyError for a setting that does not exist (a bug, not a configuration)."""
        return self.config[section][key]

    def override(self, section: str, **values: Any) -> Settings:
        """These settings with ``values`` set in ``section``, parsed as config.yml values are (tests, tools)."""
        parsed = dict(self.section(section))
        origins = dict(self.origins)
        for key, raw in values.items():
            if key not in parsed:
                raise KeyError(f"{section}.{key}")
            try:
                parsed[key] = setting_for(section, key, self.config).parse(raw)
            except Invalid as exc:
                raise PipelineJobsError(ErrorKind.CONFIGURATION, f"{section}.{key}: expected {exc}") from None
            origins[f"{section}.{key}"] = Origin("override", "code")
        config = {**self.config, section: parsed}
        secrets = set(self.secrets) | collect_secrets({}, config)
        uri = mongodb_uri(parsed) if section == "mongodb" else None
        if uri is not None:
            secrets.add(uri.reveal())
        ordered = tuple(sorted(secrets, key=len, reverse=True))
        return dataclasses.replace(self, config=config, origins=origins, secrets=ordered)

    @property
    def mongodb_uri(self) -> Secret | None:
        """The MongoDB URI, or None when no MongoDB is configured."""
        return mongodb_uri(self.section("mongodb"))

    @property
    def mongodb_database(self) -> str:
        return str(self.section("mongodb").get("database") or "catalog")

    @property
    def mongodb_timeout_ms(self) -> int:
        """How long to wait for MongoDB: ``mongodb.server_selection_timeout_ms`` (10 s)."""
        return int(self.value("mongodb", "server_selection_timeout_ms"))

    @property
    def history_window(self) -> int:
        """History entries a job document keeps (the event log has them all); at least 10."""
        return int(self.value("history", "window"))

    @property
    def history_inline_data_bytes(self) -> int:
        """An event's data larger than this stays in the event log only; the document's entry points to it."""
        return int(self.value("history", "inline_data_bytes"))

    @property
    def write_concern(self) -> dict[str, Any]:
        """MongoDB write concern for every write: ``durability.write_concern`` (w) and ``durability.journal``."""
        return {"w": self.value("durability", "write_concern"), "j": bool(self.value("durability", "journal"))}

    def positive(self, section: str, name: str, default: int) -> int:
        value = self.section(section).get(name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    @property
    def accept_unverified_tokens(self) -> bool:
        return self.section("legacy").get("accept_unverified_tokens") is True

    def limit(self, name: str, default: int) -> int:
        value = self.section("limits").get(name, default)
        return value if isinstance(value, int) and value > 0 else default


def mongodb_uri(mongo: Mapping[str, Any]) -> Secret | None:
    """Build the URI from ``authn`` or from host/port/credentials (compat §8)."""
    if mongo.get("authn"):
        return Secret(_decode_authn(str(mongo["authn"])))
    if not mongo.get("host"):
        return None
    auth = ""
    if mongo.get("username"):
        auth = quote_plus(str(mongo["username"]))
        if mongo.get("password"):
            auth += ":" + quote_plus(str(mongo["password"]))
        auth += "@"
    port = f":{mongo['port']}" if mongo.get("port") else ""
    source = f"/{mongo['auth_source']}" if mongo.get("auth_source") else ""
    return Secret(f"mongodb://{auth}{mongo['host']}{port}{source}")


def _decode_authn(authn: str) -> str:
    try:
        padded = authn + "=" * (-len(authn) % 4)
        uri = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION, "mongodb.authn is not url-safe base64 of a mongodb:// URI"
        ) from exc
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise PipelineJobsError(ErrorKind.CONFIGURATION, "mongodb.authn does not decode to a mongodb:// URI")
    return uri


def read_config_file(path: Path | None) -> dict[str, Any]:
    """config.yml as ``yaml.safe_load`` reads it (the reactors SDK's convention), as a mapping.

    Importing PyYAML costs a cold ``reactor.py`` 10-15 ms, more than the rest of the
    settings; a file in the plain two-level form of the shipped one is read without it
    (``_read_plain_yaml``, which gives exactly what ``safe_load`` gives or declines).
    Anything else goes to ``yaml.safe_load`` itself.
    """
    path = path or ROOT_CONFIG
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    loaded = _read_plain_yaml(text)
    if loaded is None:
        loaded = _load_yaml(text, path.name)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"{path.name} must hold a mapping")
    return loaded


def _load_yaml(text: str, name: str) -> Any:
    import yaml  # imported here: only a config file beyond the plain form needs it

    try:
        # Not libyaml's CSafeLoader: it accepts some text safe_load refuses (a tab inside a plain scalar).
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"{name} is not valid YAML") from exc


#: Plain scalars that YAML 1.1 (PyYAML's resolver) reads as booleans or null, not as text.
_YAML_WORDS = {
    **dict.fromkeys(("~", "null", "Null", "NULL"), None),
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}
_YAML_BOOL_1_1 = frozenset({"yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"})
_PLAIN_VALUE = (
    r"'[ -&(-~]*'"  # single-quoted, no quote inside
    r'|"[ !#-\[\]-~]*"'  # double-quoted, no quote or backslash inside
    r"|~|[A-Za-z/][A-Za-z0-9_./,-]*"  # null, or a word
    r"|0|[1-9][0-9]*|[0-9]+(?:\.[0-9]+){2,}"  # a decimal integer, or a dotted address
)
_PLAIN_ENTRY = re.compile(
    rf"(?P<indent>(?:  )?)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:[ ]+(?P<value>{_PLAIN_VALUE}))?(?:[ ]+#.*)?[ ]*"
)
_NOT_PLAIN = re.compile(r"[^\n\r -~]")


def _read_plain_yaml(text: str) -> dict[str, Any] | None:
    """The mapping ``yaml.safe_load(text)`` gives, for text in a plain form; None for anything else.

    The plain form: comments, ``key: value`` entries at the left margin, and sections
    (``key:`` alone) of such entries indented by two spaces; values are ``~``, a
    boolean or null word, a decimal integer without sign or leading zero, a quoted
    string without escapes, a word of ``[A-Za-z0-9_./,-]`` starting with a letter or
    ``/``, or digits with two dots or more (``127.0.0.1``): words that no YAML 1.1
    resolver reads as anything but text. Printable ASCII only.
    tests/test_config_yaml.py checks it against PyYAML on generated files.
    """
    if _NOT_PLAIN.search(text):
        return None
    config: dict[str, Any] = {}
    section: str | None = None
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = _PLAIN_ENTRY.fullmatch(line)
        if entry is None or entry["key"] in _YAML_WORDS or entry["key"] in _YAML_BOOL_1_1:
            return None
        raw = entry["value"]
        if raw in _YAML_BOOL_1_1:
            return None
        value = None if raw is None else _plain_scalar(raw)
        if not entry["indent"]:
            if entry["key"] in config:
                return None
            config[entry["key"]] = value
            section = entry["key"] if raw is None else None
        else:
            if section is None:
                return None
            block = config[section] if isinstance(config[section], dict) else {}
            if entry["key"] in block:
                return None
            block[entry["key"]] = value
            config[section] = block
    return config


def _plain_scalar(raw: str) -> Any:
    if raw in _YAML_WORDS:
        return _YAML_WORDS[raw]
    if raw[0] in "'\"":
        return raw[1:-1]
    if raw.isdigit():
        return int(raw)
    return raw


def defaults_path() -> Path:
    """Where the shipped defaults are: inside the installed package, else the checkout's config.yml."""
    return PACKAGED_DEFAULTS if PACKAGED_DEFAULTS.exists() else ROOT_CONFIG


def default_config() -> dict[str, Any]:
    """Every setting and its default, whatever is (or is not) beside the code."""
    path = defaults_path()
    return read_config_file(path) if path.exists() else {}


def _admin_tokens(env: Mapping[str, str], config: dict[str, Any]) -> AdminTokens:
    """How admin tokens are made: the secret from the environment (pinned under Abaco), the key and the
    lifetime from config.yml's ``admin`` section, else (outside Abaco only) from python-datacatalog's variables.

    Under Abaco every URL parameter of a message becomes an environment variable, so a caller could choose
    the key or the lifetime there: a lifetime of 3601 instead of 3600 makes a token leaked ~5.7 days ago
    valid again for two hours (the token is derived from the window number alone). There both come from
    config.yml only.
    """
    section = config.get("admin") or {}  # typed at load (settings_schema); only the file sets it
    abaco = bool(env.get("_abaco_execution_id"))
    from_env = {} if abaco else env
    key = Secret(str(section.get("token_key") or from_env.get("CATALOG_ADMIN_TOKEN_KEY") or DEFAULT_ADMIN_KEY))
    lifetime = section.get("token_lifetime")
    if lifetime is None:
        try:
            lifetime = int(from_env.get("CATALOG_ADMIN_TOKEN_LIFETIME") or DEFAULT_ADMIN_LIFETIME)
        except ValueError:
            lifetime = DEFAULT_ADMIN_LIFETIME
    lifetime = max(int(lifetime), 1)
    raw_secret = env.get("CATALOG_ADMIN_TOKEN_SECRET") or ""
    if not raw_secret:
        return AdminTokens(None, key, lifetime, "CATALOG_ADMIN_TOKEN_SECRET is not set")
    pin = section.get("secret_sha256")
    if pin:
        digest = hashlib.sha256(raw_secret.encode()).hexdigest()
        if not hmac.compare_digest(digest, str(pin).lower()):
            return AdminTokens(None, key, lifetime, "the admin secret does not match its pin")
    elif abaco:
        return AdminTokens(None, key, lifetime, "under Abaco admin tokens need admin.secret_sha256 in config.yml")
    return AdminTokens(Secret(raw_secret), key, lifetime)


def _identity(env: Mapping[str, str]) -> Identity:
    owner = next(
        (
            env[name]
            for name in ("TACC_USERNAME", "AGAVE_USERNAME", "JUPYTERHUB_USER", "_abaco_username", "USER")
            if env.get(name)
        ),
        "pipelinejobs",
    )
    return Identity(
        owner=owner,
        project=env.get("TACC_PROJECT_NAME") or "SD2E-Community",
        tenant=env.get("TACC_TENANT") or "sd2e",
        dns_domain=env.get("CATALOG_DNS_DOMAIN") or "sd2e.org",
    )


#: ``_REACTOR_*`` settings that name things rather than grant access. The SDK redacts every
#: ``_REACTOR_*`` value; masking a database name or a file path would only blind the logs
#: (every occurrence of the word ``catalog`` would read ``*****``).
NOT_SECRET_ENV = frozenset(
    {
        "_REACTOR_MONGODB_DATABASE",
        "_REACTOR_STORE_SQLITE_PATH",
        "_REACTOR_LOGS_LEVEL",
        "_REACTOR_SERVE_HOST",
        "_REACTOR_SERVE_PORT",
        "_REACTOR_SERVE_ACTORS",
        "_REACTOR_SERVE_API_SERVER",
        "_REACTOR_SERVE_USERNAME",
        "_REACTOR_SERVE_TENANT",
        "_REACTOR_SERVE_TLS_CERT",
        "_REACTOR_SERVE_TLS_KEY",
        "_REACTOR_SERVE_HEAD_TIMEOUT_SECONDS",
        "_REACTOR_SERVE_BODY_TIMEOUT_SECONDS",
        "_REACTOR_SERVE_KEEP_ALIVE_SECONDS",
        "_REACTOR_SERVE_LIMIT_CONCURRENCY",
        "_REACTOR_SERVE_MAX_HEAD_BYTES",
        "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS",
    }
)


#: ... nor do the variables of settings that are numbers, durations, booleans or words from a fixed list
#: (``Kind.plain``): a value that must parse as one cannot carry a credential, and 86400 would otherwise be
#: masked everywhere. The security sections' variables are ignored, never parsed: masked as the SDK does.
_TYPED_NOT_SECRET_ENV = frozenset(
    env_name(section, key)
    for section, keys in SCHEMA.items()
    if section not in PROTECTED_SECTIONS
    for key, setting in keys.items()
    if setting.kind.plain and not setting.secret
)


def collect_secrets(env: Mapping[str, str], config: dict[str, Any]) -> set[str]:
    """Every value the log redactor must mask: credentials, tokens, nonces, ``_REACTOR_*`` values."""
    found: set[str] = set()
    for name, value in env.items():
        plain = name in NOT_SECRET_ENV or name in _TYPED_NOT_SECRET_ENV
        if name.startswith(ENV_PREFIX) and not plain and len(value) > 4:
            found.add(value)
    for name in ("_abaco_access_token", "x-nonce", "token", "CATALOG_ADMIN_TOKEN_SECRET", "CATALOG_ADMIN_TOKEN_KEY"):
        if env.get(name):
            found.add(env[name])
    for section, settings in SCHEMA.items():  # the secret settings, wherever they were given
        found_section = config.get(section)
        values: dict[str, Any] = found_section if isinstance(found_section, dict) else {}
        for key, setting in settings.items():
            given = values.get(key)
            items = given if isinstance(given, list | tuple) else [given]
            found.update(item for item in items if setting.secret and isinstance(item, str) and item)
    return found


#: the environment variables that name a proxy (curl's and urllib's), in either case
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def proxy_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables of ``env``. None under Abaco, where every URL parameter of a message becomes an
    environment variable: a caller must not choose where the manager's requests go."""
    if env.get("_abaco_execution_id"):
        return {}
    names = [*PROXY_VARIABLES, *(name.upper() for name in PROXY_VARIABLES)]
    return {name: env[name] for name in names if env.get(name)}


def _password(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url if "://" in url else "http://" + url).password or ""
    except ValueError:
        return ""


def load_settings(env: Mapping[str, str], config_path: Path | None = None) -> Settings:
    """Build the settings from the shipped defaults, config.yml over them, and the environment mapping ``env``.

    The ``_REACTOR_*`` overrides apply whether or not a config.yml was found: the defaults name every key.
    Every value is parsed to its type here; one that does not fit is a ``configuration`` error.
    """
    chosen = config_path or ROOT_CONFIG
    defaults_file = defaults_path()
    defaults = default_config()
    if chosen.exists() and defaults_file.exists() and chosen.samefile(defaults_file):
        file: dict[str, Any] = {}  # a checkout's config.yml is also its defaults: read it once, not twice
    else:
        file = read_config_file(config_path)
    config, origins = resolve(
        defaults, file, env, defaults_name=defaults_file.name, file_name=str(chosen) if file else chosen.name
    )
    secrets = set(collect_secrets(env, config))
    proxies = proxy_environment(env)
    secrets.update(_password(value) for value in proxies.values() if "@" in value)  # http://user:PASSWORD@proxy
    try:
        uri = mongodb_uri(config.get("mongodb") or {})
    except PipelineJobsError as exc:  # name where the bad authn came from, as for any other setting
        origin = origins["mongodb.authn"]
        where = origin.where if origin.source == "environment" else f"{origin.where} mongodb.authn"
        raise PipelineJobsError(exc.kind, f"{where}: {exc.message}", setting=where) from None
    if uri is not None:
        secrets.add(uri.reveal())
    return Settings(
        config=config,
        admin=_admin_tokens(env, config),
        identity=_identity(env),
        secrets=tuple(sorted(secrets, key=len, reverse=True)),
        proxy_environment=proxies,
        origins=origins,
    )


def words(value: Any) -> list[str]:
    """A list from a YAML list or a comma/space separated string (config values, env variables)."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[\s,]+", str(value))
    return [str(item).strip() for item in items if str(item).strip()]
