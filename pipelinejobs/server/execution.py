"""The execution side of `pipelinejobs serve`: its configuration, what it opens at start, and one message run.

A message is handled by the same path reactor.py runs (``runtime.handle_env``)
against the server's own settings and store, opened once at start. Each message
becomes an execution record holding the redacted log lines written while it was
handled, as under Abaco. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import egress, logs
from ..errors import ErrorKind, PipelineJobsError
from ..intake import Intake
from ..runtime import dumps, handle_env, handle_received, open_store
from ..settings import Settings, collect_secrets, words
from ..store.base import JobStore
from ..store.factory import open_registry
from ..store.registry import Record, Registry, abaco_time
from .abaco_records import nonce_tenant
from .api_tokens import ApiTokens
from .recorder import WriteBehind

MAX_LOG_CHARS = 1_000_000  # Abaco caps execution logs at 1 MB
#: The actor id serve answers for when neither --actor nor serve.actors names one: a 13-character id
#: shaped like Abaco's (and the one the README's examples use), so a first `pipelinejobs serve` just works.
DEFAULT_ACTOR = "pjmanager0001"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ServeConfig:
    """Who the server answers for and whom it trusts (from config.yml's ``serve`` and the CLI)."""

    actors: tuple[str, ...]
    api_tokens: ApiTokens
    owner: str = "pipelinejobs"  # the user bearer-token requests act as
    tenant: str = "SD2E"  # nonce ids are {TENANT}_{hashid}
    #: base URL for _links and _abaco_api_server (serve: ``--api-server``, else the address it listens on);
    #: never taken from a request's Host header
    api_server: str | None = None

    @property
    def https(self) -> bool:
        """Whether clients reach serve over HTTPS (its own TLS, or a TLS proxy named by ``api_server``)."""
        return (self.api_server or "").startswith("https://")


class _Capture(logging.Handler):
    """Keeps the package's log records per handling thread: they become the execution's logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._buffers: dict[int, list[logging.LogRecord]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        buffer = self._buffers.get(record.thread or 0)
        if buffer is not None:
            buffer.append(record)

    @contextmanager
    def records(self) -> Iterator[list[logging.LogRecord]]:
        ident, buffer = threading.get_ident(), list[logging.LogRecord]()
        self._buffers[ident] = buffer
        try:
            yield buffer
        finally:
            self._buffers.pop(ident, None)


@dataclass
class Server:
    """Everything a request needs, opened once at start."""

    config: ServeConfig
    settings: Settings
    store: JobStore
    registry: Registry
    secrets: tuple[str, ...] = ()  # settings secrets plus plain API tokens, for the log redactor
    clock: Callable[[], datetime] = utc_now
    capture: _Capture = field(default_factory=_Capture)
    #: told every message's outcome (the metrics' counters); None: nobody listens
    observe: Callable[[dict[str, Any]], None] | None = None

    def execute(
        self,
        env: dict[str, str],
        execution: Record,
        secrets: Iterable[str],
        parsed: dict[str, Any] | None = None,
        operator: bool = False,
    ) -> tuple[Record, Any]:
        """Handle one message like a container run; record and return (execution, result).

        ``parsed`` is the JSON object whose repr is ``env["MSG"]``, so it is not parsed again;
        ``operator``: the request held one of serve's API tokens (``runtime.handle_intake``).
        The logs hide what reactor.py's would (``collect_secrets`` of the message's environment),
        plus ``secrets`` (e.g. the caller's bearer token) and a token the result hands out.
        """
        start = self.clock()
        with self.capture.records() as records:
            code, result = handle_env(
                env,
                settings=self.settings,
                get_store=lambda: self.store,
                now=self.clock(),
                parsed=parsed,
                operator=operator,
            )
        finish = self.clock()
        if self.observe is not None:
            self.observe(result)
        hidden = [*self.secrets, *collect_secrets(env, {}), *secrets, *_tokens(result)]
        formatter = logs.RedactingFormatter(secrets=hidden)
        lines = [formatter.format(record) for record in records] + [formatter.redact(dumps(result))]
        execution.update(
            status="COMPLETE",
            exitCode=code,
            startTime=abaco_time(start),
            finishTime=abaco_time(finish),
            runtime=round((finish - start).total_seconds(), 3),
            logs="\n".join(lines)[-MAX_LOG_CHARS:],
            result={**result, "token": logs.MASK} if "token" in result else result,
        )
        self.registry.save_execution(execution)
        return execution, result

    def report(self, intake: Intake, operator: bool = False) -> tuple[int, dict[str, Any]]:
        """Handle a message an engine's route has read (``engines.py``): the same path as a message,
        no execution record (the engines do not speak Abaco). Returns (exit code, result)."""
        code, result = handle_received(
            intake, settings=self.settings, get_store=lambda: self.store, now=self.clock(), operator=operator
        )
        if self.observe is not None:
            self.observe(result)
        return code, result

    def close(self) -> None:
        """Flush and close the registry first: on MongoDB it writes through the store's client."""
        try:
            self.registry.close()
        finally:
            self.store.close()


def _tokens(result: dict[str, Any]) -> list[str]:
    token = result.get("token")
    return [token] if isinstance(token, str) else []


def serve_config(
    settings: Settings,
    *,
    actors: Iterable[str] = (),
    api_tokens: Iterable[str] = (),
    api_server: str | None = None,
) -> tuple[ServeConfig, tuple[str, ...]]:
    """The server's configuration: CLI values over config.yml's ``serve`` section (typed at load).

    Returns the config and the plain API tokens (for the log redactor only). With no actor id from
    either, serve answers for :data:`DEFAULT_ACTOR`.
    """
    chosen = tuple(dict.fromkeys(words(actors) or settings.value("serve", "actors"))) or (DEFAULT_ACTOR,)
    egress.Policy.from_settings(settings)  # a notifications.allowed_networks that is no CIDR stops serve here
    plain = tuple(dict.fromkeys([*words(api_tokens), *settings.value("serve", "api_tokens")]))
    tokens = ApiTokens.from_plain(plain, settings.value("serve", "api_token_sha256"))
    config = ServeConfig(
        actors=chosen,
        api_tokens=tokens,
        owner=str(settings.value("serve", "username") or settings.identity.owner),
        tenant=nonce_tenant(settings),
        api_server=api_server_url(api_server or settings.value("serve", "api_server")),
    )
    return config, plain


def api_server_url(value: Any) -> str | None:
    """``api_server`` as links use it (no trailing slash; a path prefix is kept, for a proxy serving serve
    under one); anything but an http(s) URL without credentials, query or fragment is refused."""
    if value in (None, ""):
        return None
    text = str(value).strip().rstrip("/")
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in ("http", "https") or rest[:1] in ("", "/") or any(c in rest for c in "?#@ \t"):
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION,
            "api_server must be the base URL clients use: http(s)://host[:port][/path], without credentials,"
            " query or fragment, like https://jobs.example.org",
        )
    return f"{scheme.lower()}://{rest}"


def open_server(settings: Settings, config: ServeConfig, plain_tokens: Iterable[str] = ()) -> Server:
    """Open the job store and the registry once, on the same backend, with the registry's indexes.

    Execution records are written behind (``recorder.WriteBehind``), in batches off the request path.
    """
    store = open_store(settings)
    try:
        store.ensure_indexes()  # serve prepares the store at start, so messages never pay for it
        inner = open_registry(settings, store)
        inner.ensure_indexes()
        registry = WriteBehind(inner)
    except BaseException:
        store.close()
        raise
    return Server(config, settings, store, registry, secrets=(*settings.secrets, *plain_tokens))


def describe(server: Server) -> str:
    """Where the data lives, without credentials: for the start-up log line."""
    if server.store.backend == "mongodb":
        uri = server.settings.mongodb_uri
        hosts = uri.reveal().split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1] if uri else "?"
        return f"mongodb database '{server.settings.mongodb_database}' on {hosts}"
    path = getattr(server.store, "path", None)
    registry_path = getattr(server.registry, "path", None)
    return f"{server.store.backend} file {path} (nonces and executions in {registry_path})"
