"""The HTTP client every sink sends with: httpx, pooled, within the outbound policy, with a deadline.

One :class:`Clients` per dispatcher (and per test send) holds one ``httpx.Client``: kept-alive
connections per origin, redirects off (a 3xx is an answer, not an instruction to POST elsewhere),
TLS verified against the system's trust store (``ssl.create_default_context``, which honours
``SSL_CERT_FILE``), and a **total** timeout per attempt: every connect, TLS handshake, read and write
of the attempt gets only what is left of ``notifications.timeout_seconds`` (httpx's own timeouts
are per operation, so a receiver dripping a byte at a time could otherwise hold a delivery for hours).

Direct connections go to addresses the outbound policy vetted (``egress.VettedBackend``). A proxy
is used only when one is configured (``notifications.proxy``, or the environment's
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, never under Abaco), for destinations ``NO_PROXY`` does
not name: the destination's name is then resolved and vetted here first, and the proxy, which
resolves it again, is trusted not to be steered elsewhere by a rebinding DNS answer (SECURITY.md).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import egress
from ..errors import ErrorKind, PipelineJobsError

if TYPE_CHECKING:
    import ssl

    import httpcore
    import httpx

    from ..settings import Settings

USER_AGENT = "pipelinejobs-notify"
MAX_READ_BODY = 64 * 1024  # of a receiver's answer, at most this much is read; the connection is dropped after
#: what `notifications.proxy` may say besides a URL: use none, whatever the environment says
NO_PROXY_WORDS = frozenset({"none", "off", "direct"})
_deadline = threading.local()  # the current attempt's end (time.monotonic()) in this thread, if any


# -- proxies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proxies:
    """Which proxy a destination is reached through: per scheme, except hosts ``no_proxy`` names."""

    http: str | None = None
    https: str | None = None
    no_proxy: str = ""

    def for_url(self, url: str) -> str | None:
        from urllib import request

        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if not proxy or not parts.hostname:
            return None
        where = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        # urllib's reading of NO_PROXY (as curl's: names, domain suffixes, host:port, "*")
        if self.no_proxy and request.proxy_bypass_environment(where, {"no": self.no_proxy}):  # type: ignore[attr-defined]
            return None
        return proxy

    @classmethod
    def configured(cls, setting: Any, environment: Mapping[str, str]) -> Proxies | None:
        """From ``notifications.proxy`` (a URL, or none/off/direct) and, when that is unset, the
        environment's proxy variables (lower case first, as curl and urllib read them)."""

        def env(name: str) -> str:
            return (environment.get(name.lower()) or environment.get(name.upper()) or "").strip()

        no_proxy = env("no_proxy")
        if isinstance(setting, str) and setting.strip():
            chosen = setting.strip()
            if chosen.lower() in NO_PROXY_WORDS:
                return None
            found = cls(_proxy_url(chosen, "notifications.proxy"), _proxy_url(chosen, "notifications.proxy"), no_proxy)
        else:
            fallback = env("all_proxy")
            http, https = env("http_proxy") or fallback, env("https_proxy") or fallback
            found = cls(
                _proxy_url(http, "HTTP_PROXY") if http else None,
                _proxy_url(https, "HTTPS_PROXY") if https else None,
                no_proxy,
            )
        return found if (found.http or found.https) else None


def _proxy_url(value: str, what: str) -> str:
    """An http:// or https:// proxy URL (a bare ``host:port`` is taken as http://, as curl does)."""
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"{what}: an http:// proxy URL such as http://proxy:3128")
    return value


# -- the deadline ---------------------------------------------------------------------------------
def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of this thread's attempt; ``expired`` raised when nothing is."""
    end = getattr(_deadline, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the attempt's time is up")
    return left if timeout is None else min(timeout, left)


class DeadlineStream:
    """An httpcore network stream whose every operation ends by the attempt's deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        return bytes(self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout)))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> DeadlineStream:
        import httpcore

        left = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend:
    """An httpcore network backend (the outbound policy's, or httpcore's own for a proxy) whose
    connections end by the attempt's deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> DeadlineStream:
        import httpcore

        left = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise egress.Refused("a Unix socket is not a notification destination")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# -- the client -----------------------------------------------------------------------------------
class Clients:
    """The pooled HTTP client of one dispatcher (or test send), made on first use."""

    def __init__(self, timeout: float, policy: egress.Policy, proxies: Proxies | None = None) -> None:
        self.timeout = timeout
        self.policy = policy
        self.proxies = proxies
        self._lock = threading.Lock()
        self._transport: httpx.BaseTransport | None = None
        self._client: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, policy: egress.Policy | None = None) -> Clients:
        from ..notify.budget import budget

        setting = settings.value("notifications", "proxy")
        proxies = Proxies.configured(setting, settings.proxy_environment)
        return cls(budget(settings).timeout_seconds, policy or egress.Policy.from_settings(settings), proxies)

    def transport(self) -> httpx.BaseTransport:
        """The pooled transport: direct to vetted addresses, or through the configured proxy."""
        with self._lock:
            if self._transport is None:
                self._transport = _router(self.policy, self.proxies)
            return self._transport

    def client(self) -> httpx.Client:
        """An ``httpx.Client`` over the same pool, for code that takes one (``abaco.send_message``)."""
        import httpx

        transport = self.transport()
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    transport=transport,
                    timeout=self.timeout,
                    follow_redirects=False,
                    trust_env=False,  # proxies and certificates as configured here, nothing else
                    headers={"user-agent": USER_AGENT},
                )
            return self._client

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        """Everything sent in this block (in this thread) ends within ``timeout`` seconds."""
        _deadline.end = time.monotonic() + self.timeout
        try:
            yield
        finally:
            _deadline.end = None

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; the answer's status. At most 64 KiB of the answer is read (the rest drops the
        connection instead of being read). Raises ``egress.Refused``, ``httpx.HTTPError`` (could not
        send, no valid answer, out of time) or ``httpx.InvalidURL``.

        The request goes to the transport itself: a client's cookie jar, auth flow and redirect logic
        have nothing to do here (no cookie is kept, no redirect followed) and cost a third of the CPU.
        """
        import httpx

        seconds = self.timeout
        limits = {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}
        request = httpx.Request(
            "POST", url, content=body, headers={"user-agent": USER_AGENT, **headers}, extensions={"timeout": limits}
        )
        with self.deadline():
            answer = self.transport().handle_request(request)
            try:
                read = 0
                for chunk in answer.iter_raw():
                    read += len(chunk)
                    if read > MAX_READ_BODY:
                        break
                return answer.status_code
            finally:
                answer.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()  # and its transport
            elif self._transport is not None:
                self._transport.close()
            self._client = self._transport = None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The system's trust store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured by OpenSSL itself), loaded once
    per process (~40 ms each time; a context is safe to share between threads and pools)."""
    import ssl

    return ssl.create_default_context()


def _pool(backend: Any, context: ssl.SSLContext, proxy: str | None = None) -> httpcore.ConnectionPool:
    import httpcore
    import httpx

    if proxy is None:  # httpx's default limits
        return httpcore.ConnectionPool(
            ssl_context=context,
            network_backend=backend,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
        )
    parsed = httpx.Proxy(proxy)
    return httpcore.HTTPProxy(
        proxy_url=httpcore.URL(
            scheme=parsed.url.raw_scheme, host=parsed.url.raw_host, port=parsed.url.port, target=parsed.url.raw_path
        ),
        proxy_auth=parsed.raw_auth,
        proxy_headers=parsed.headers.raw,
        ssl_context=context,
        network_backend=backend,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
    )


def _router(policy: egress.Policy, proxies: Proxies | None) -> httpx.BaseTransport:
    """An httpx transport: direct to a vetted address, or through the configured proxy once the
    destination's addresses were vetted here."""
    import httpcore
    import httpx

    context = _ssl_context()

    def transport(pool: httpcore.ConnectionPool) -> httpx.HTTPTransport:
        made = httpx.HTTPTransport(verify=context, trust_env=False)  # our context: httpx would build another
        made._pool.close()
        made._pool = pool  # httpx takes no network backend: its pool is replaced by one with ours
        return made

    class Router(httpx.BaseTransport):
        def __init__(self) -> None:
            self._direct = transport(_pool(DeadlineBackend(egress.VettedBackend(policy)), context))
            self._via: dict[str, httpx.HTTPTransport] = {}
            self._lock = threading.Lock()

        def _through(self, proxy: str) -> httpx.HTTPTransport:
            with self._lock:
                if proxy not in self._via:
                    self._via[proxy] = transport(_pool(DeadlineBackend(httpcore.SyncBackend()), context, proxy))
                return self._via[proxy]

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            proxy = proxies.for_url(str(request.url)) if proxies else None
            if proxy is None:
                return self._direct.handle_request(request)
            port = request.url.port or (443 if request.url.scheme == "https" else 80)
            try:
                policy.vet(request.url.host, port)  # egress.Refused propagates: nothing is sent
            except OSError as exc:
                raise httpx.ConnectError(f"{type(exc).__name__} resolving the host", request=request) from exc
            return self._through(proxy).handle_request(request)

        def close(self) -> None:
            self._direct.close()
            for through in self._via.values():
                through.close()

    return Router()
