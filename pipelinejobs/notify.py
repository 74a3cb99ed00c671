"""Outbound notifications (issue 10): subscriptions, matching, Standard Webhooks signing, delivery, the dispatcher.

A *subscription* names what to watch (one pipeline's jobs, or one job; optionally only some
target states and/or event names) and whom to tell: a webhook URL, signed the Standard
Webhooks way with a per-subscription secret, or an Abaco/Tapis actor, sent a message with
that actor's nonce or token so the next step of a pipeline starts when this one finishes.

The event path (``service.apply_event``) asks :func:`matching` which subscriptions an event
concerns (a cached list: nothing is read per event) and the store writes their ids with
the event's log record, in the same atomic step: the *outbox*. Nothing is pending for an
event that was refused, stale or replayed, and nothing is lost when serve dies after an
event is acknowledged. The :class:`Dispatcher` (a thread in `pipelinejobs serve`, or
`pipelinejobs notify --drain`) leases due items, delivers each at least once with capped
exponential backoff and full jitter, keeps one ``webhook-id`` per (event, subscription) across
retries, records every attempt, and gives up after the configured number of attempts.
It reads the outbox and the subscriptions; it never touches a job document.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from . import fsm
from .errors import ErrorKind, PipelineJobsError
from .logs import MASK, add_secrets, get_logger
from .settings import Settings
from .store.base import Document, EventRecord, JobStore

if TYPE_CHECKING:  # the event path imports this module: what only delivery needs is imported there
    import httpx

    from .store.outbox import OutboxItem

log = get_logger("notify")

SUBSCRIPTION_PREFIX = "sub_"
SECRET_PREFIX = "whsec_"
NOTIFICATION_TYPE = "pipelinejob.event"
TEST_TYPE = "pipelinejob.test"
USER_AGENT = "pipelinejobs-notify"
MAX_ERROR_CHARS = 200
GATHER_SECONDS = 0.05  # after a wake-up, serve's dispatcher waits at least this long so a burst makes one batch
GATHER_PER_PASS = 2.0  # ... and this many times as long as its last pass took: at most a third of its time in passes
MAX_GATHER_SECONDS = 0.5  # ... up to this
EXPIRE_EVERY_SECONDS = 3600  # serve forgets delivery records past delivery_days this often
RECHECK_SECONDS = 0.1  # (MongoDB) an item whose event is logged but not yet applied is looked at again after this
#: a subscription's fields that are secrets: stored, used, never shown after creation
SECRET_FIELDS = ("secret", "nonce", "bearer", "tapis_token")


# -- settings ---------------------------------------------------------------------------------
class Budget(NamedTuple):
    """How hard the dispatcher tries (config.yml ``notifications``; a null value takes the default).

    Attempt n (1-based) that fails is retried after a pause drawn uniformly from
    [0, min(cap, base * 2**(n-1))] ("full jitter"); after ``max_attempts`` the item is given up.
    With the defaults (8 attempts, base 60 s, cap 30 min) the pauses add up to at most 91 min,
    about 45 min on average.
    """

    max_attempts: int = 8
    backoff_base_seconds: float = 60.0
    backoff_cap_seconds: float = 1800.0
    timeout_seconds: float = 10.0  # one HTTP attempt
    lease_seconds: float = 120.0  # how long a claimed batch is the claimer's (a crashed one's expires)
    every_seconds: float = 2.0  # serve's dispatcher looks at the outbox this often (0: no dispatcher)
    refresh_seconds: float = 5.0  # a running process rereads the subscription list this often
    batch: int = 100  # items claimed at once
    grace_seconds: float = 30.0  # MongoDB: a logged event not applied after this is rolled forward
    delivery_days: int = 30  # delivery records are kept this long
    workers: int = 1  # deliveries of one batch in flight at once (threads; serial is cheapest beside serve)


def budget(settings: Settings) -> Budget:
    """The ``notifications`` section as a :class:`Budget` (typed and checked at load: ``settings_schema``)."""
    return Budget(**{name: settings.value("notifications", name) for name in Budget._fields})


def backoff(attempts: int, plan: Budget, draw: Callable[[float, float], float] | None = None) -> float:
    """Seconds to wait after ``attempts`` failed attempts: full jitter under a capped exponential."""
    import random

    draw = draw or random.uniform
    ceiling = min(plan.backoff_cap_seconds, plan.backoff_base_seconds * 2 ** max(0, attempts - 1))
    return draw(0.0, ceiling)


# -- signing (Standard Webhooks) ----------------------------------------------------------------
def new_secret() -> str:
    """A subscription's signing secret: ``whsec_`` + base64 of 24 random bytes."""
    import base64
    import os

    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64-decoded part (as the Standard Webhooks spec says)."""
    import base64

    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    import base64
    import hashlib
    import hmac

    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def webhook_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def message_id(record: EventRecord, subscription_id: str) -> str:
    """The ``webhook-id`` of an event for a subscription: derived, so it is the same on every retry,
    after a restart and from any dispatcher; receivers deduplicate on it."""
    import hashlib

    seed = f"{record.uuid}\n{record.seq}\n{record.slot}\n{record.event_uuid}\n{subscription_id}"
    return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


# -- subscriptions ------------------------------------------------------------------------------
def _bad(message: str, **details: Any) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.BAD_MESSAGE, message, **details)


def _names(values: Iterable[str] | None, known: Iterable[str], what: str) -> list[str]:
    chosen: list[str] = []
    allowed = {name.lower(): name for name in known}
    for raw in values or ():
        for part in str(raw).split(","):
            name = part.strip()
            if not name:
                continue
            if name.lower() not in allowed:
                raise _bad(f"unknown {what} {name[:40]!r} (known: {', '.join(sorted(allowed.values()))})")
            chosen.append(allowed[name.lower()])
    return sorted(set(chosen))


def _url(value: str, what: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(f"{what} must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise _bad(f"{what} must not hold credentials; give a nonce or a token instead")
    return value


def shown_url(url: str) -> str:
    """Scheme, host and path only: a URL's query may hold a key (Slack-style hooks, nonces)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def new_subscription(
    *,
    now: datetime,
    pipeline_uuid: str | None = None,
    job_uuid: str | None = None,
    url: str | None = None,
    actor: str | None = None,
    api_server: str | None = None,
    nonce: str | None = None,
    bearer: str | None = None,
    tapis_token: str | None = None,
    states: Iterable[str] | None = None,
    events: Iterable[str] | None = None,
    include_data: bool = True,
    description: str = "",
) -> Document:
    """A subscription document, checked (BAD_MESSAGE says what is wrong, never echoing a secret)."""
    import secrets

    if bool(pipeline_uuid) == bool(job_uuid):
        raise _bad("a subscription watches one pipeline (pipeline) or one job (job): give exactly one")
    if bool(url) == bool(actor):
        raise _bad("a subscription tells a webhook (url) or an actor (actor): give exactly one")
    scope = {"pipeline_uuid": pipeline_uuid} if pipeline_uuid else {"job_uuid": job_uuid}
    for name, value in (*scope.items(), ("description", description)):
        if not isinstance(value, str) or len(value) > 256:
            raise _bad(f"{name} must be text of at most 256 characters")
    doc: Document = {
        "id": SUBSCRIPTION_PREFIX + secrets.token_hex(12),
        **scope,
        "states": _names(states, (s.value for s in fsm.State), "state"),
        "events": _names(events, fsm.TRANSITIONS, "event"),
        "include_data": include_data is not False,
        "description": description,
        "created": now,
    }
    if url:
        if not isinstance(url, str) or len(url) > 2048:
            raise _bad("url must be a URL of at most 2048 characters")
        doc.update(target="webhook", url=_url(url, "url"), secret=new_secret())
    else:
        if not isinstance(actor, str) or not actor or len(actor) > 2048:
            raise _bad("actor must be an actor id or its messages URL")
        if not actor.startswith(("http://", "https://")) and not api_server:
            raise _bad("actor is an id: api_server (the tenant's base URL) is needed to reach it")
        if actor.startswith(("http://", "https://")):
            _url(actor, "actor")
        if api_server:
            _url(api_server, "api_server")
        credentials = {"nonce": nonce, "bearer": bearer, "tapis_token": tapis_token}
        given = {k: v for k, v in credentials.items() if v}
        if not given:
            raise _bad("an actor subscription needs the actor's nonce, bearer token or Tapis token")
        if any(not isinstance(v, str) or len(v) > 4096 for v in given.values()):
            raise _bad("a nonce or token must be text")
        doc.update(target="actor", actor=actor, api_server=api_server or None, **given)
    return doc


def public_view(subscription: Document, *, reveal_secret: bool = False) -> Document:
    """A subscription as it may be shown: secrets masked (the webhook secret only at creation)."""
    shown = {k: v for k, v in subscription.items() if k != "_id"}
    for name in SECRET_FIELDS:
        if name in shown and not (reveal_secret and name == "secret"):
            shown[name] = MASK
    if "url" in shown:
        shown["url"] = shown_url(str(shown["url"]))
    if isinstance(shown.get("actor"), str) and str(shown["actor"]).startswith(("http://", "https://")):
        shown["actor"] = shown_url(str(shown["actor"]))
    return shown


class SubscriptionIndex:
    """The subscription list arranged for matching: by pipeline uuid and by job uuid."""

    def __init__(self) -> None:
        self.by_id: dict[str, Document] = {}
        self.by_pipeline: dict[str, list[Document]] = {}
        self.by_job: dict[str, list[Document]] = {}

    @classmethod
    def of(cls, subscriptions: Iterable[Document]) -> SubscriptionIndex:
        index = cls()
        for sub in subscriptions:
            index.by_id[str(sub["id"])] = sub
            if sub.get("pipeline_uuid"):
                index.by_pipeline.setdefault(str(sub["pipeline_uuid"]), []).append(sub)
            elif sub.get("job_uuid"):
                index.by_job.setdefault(str(sub["job_uuid"]), []).append(sub)
        return index

    def matching(self, pipeline_uuid: Any, job_uuid: str, state: str, event: str) -> tuple[str, ...]:
        found: list[str] = []
        for sub in (*self.by_pipeline.get(str(pipeline_uuid), ()), *self.by_job.get(job_uuid, ())):
            if (not sub.get("states") or state in sub["states"]) and (not sub.get("events") or event in sub["events"]):
                found.append(str(sub["id"]))
        return tuple(found)


class _Cached:
    __slots__ = ("index", "until", "wake")

    def __init__(self, index: SubscriptionIndex, until: float) -> None:
        self.index, self.until, self.wake = index, until, threading.Event()


_CACHE = "_pipelinejobs_subscriptions"  # the attribute of a store object holding its cache


def subscriptions(store: JobStore, settings: Settings, *, fresh: bool = False) -> SubscriptionIndex:
    """The store's subscriptions, reread at most every ``notifications.refresh_seconds`` per store object.

    So a subscription added elsewhere (another process, the CLI) takes effect in a running
    serve within that time; one added through this store object takes effect at once.
    """
    cached: _Cached | None = getattr(store, _CACHE, None)
    now = time.monotonic()
    if cached is not None and not fresh and now < cached.until:
        return cached.index
    lister = getattr(store, "list_subscriptions", None)
    index = SubscriptionIndex.of(lister() if lister is not None else ())
    for sub in index.by_id.values():
        add_secrets([str(sub[name]) for name in SECRET_FIELDS if sub.get(name)])
    refreshed = _Cached(index, now + budget(settings).refresh_seconds)
    if cached is not None:
        refreshed.wake = cached.wake
    setattr(store, _CACHE, refreshed)
    return index


def forget_cache(store: JobStore) -> None:
    """After this process changed the subscriptions: the next event rereads them."""
    cached: _Cached | None = getattr(store, _CACHE, None)
    if cached is not None:
        cached.until = 0.0


def matching(store: JobStore, settings: Settings, head: Document, event: str, state: str) -> tuple[str, ...]:
    """Ids of the subscriptions an event concerns (its job, the job's pipeline, the state it leads to)."""
    index = subscriptions(store, settings)
    if not index.by_id:
        return ()
    return index.matching(head.get("pipeline_uuid"), str(head.get("uuid")), state, event)


def wake(store: JobStore) -> None:
    """Tell the dispatcher that an outbox item was just committed: this process's, if it runs one, and
    under ``serve --workers`` the supervisor's (see :class:`WakeSocket`)."""
    _wake_here(store)
    _WAKE_SENDER.send()


def _wake_here(store: JobStore) -> None:
    cached: _Cached | None = getattr(store, _CACHE, None)
    if cached is not None and not cached.wake.is_set():  # set() takes the event's lock and notifies
        cached.wake.set()


#: serve --workers: the path of the supervisor's wake-up socket, in its workers' environment
WAKE_SOCKET_ENV = "PIPELINEJOBS_NOTIFY_WAKE"
WAKE_EVERY_SECONDS = 0.01  # a process sends at most one wake-up in this long (the dispatcher gathers for 50 ms)


class _WakeSender:
    """A worker's side of :class:`WakeSocket`: one datagram, without waiting, at most every 10 ms."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._sent = 0.0

    def send(self) -> None:
        """To the socket named in the environment, if any (looked up only when a datagram is due)."""
        now = time.monotonic()
        if now - self._sent < WAKE_EVERY_SECONDS:
            return
        self._sent = now
        path = os.environ.get(WAKE_SOCKET_ENV)
        if not path:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(b"!", path)
        except OSError:  # full (the dispatcher is awake already) or gone: its poll finds the item
            pass


_WAKE_SENDER = _WakeSender()


class WakeSocket:
    """Where serve's workers tell the supervisor's dispatcher of new outbox items (``serve --workers``).

    The dispatcher runs once, in the supervisor; without this it found the workers' items only by its
    ``every_seconds`` poll, so under a steady flow of events notifications went out in 2 s lumps and
    piled up behind a busy serve. A Unix datagram socket in a private directory: a worker sends a byte
    after committing an item (``wake``), and a thread here wakes the dispatcher. A lost datagram costs
    a poll's delay, nothing else.
    """

    def __init__(self) -> None:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="pipelinejobs-notify-")  # mode 0700: this user only
        self.path = os.path.join(self.directory, "wake")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.5)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def listen(self, store: JobStore) -> None:
        """Wake ``store``'s dispatcher (this process's) for each datagram, until ``close``."""

        def loop() -> None:
            while not self._stopping.is_set():
                try:
                    self._sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                _wake_here(store)

        self._thread = threading.Thread(target=loop, name="pipelinejobs-notify-wake", daemon=True)
        self._thread.start()

    def close(self) -> None:
        import shutil

        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def add_subscription(store: Any, settings: Settings, subscription: Document) -> Document:
    store.save_subscription(subscription)
    add_secrets([str(subscription[name]) for name in SECRET_FIELDS if subscription.get(name)])
    forget_cache(store)
    log.info("subscription %s added (%s)", subscription["id"], subscription["target"])
    return subscription


def remove_subscription(store: Any, subscription_id: str) -> None:
    if not store.delete_subscription(subscription_id):
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no subscription {subscription_id[:64]}")
    forget_cache(store)
    log.info("subscription %s removed", subscription_id)


# -- one delivery -------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def notification_body(
    subscription: Document, record: EventRecord, pipeline_uuid: str | None, msg_id: str
) -> dict[str, Any]:
    """What a subscriber is told: never a token, a nonce or a secret."""
    body: dict[str, Any] = {
        "type": NOTIFICATION_TYPE,
        "id": msg_id,
        "subscription": subscription["id"],
        "job_uuid": record.uuid,
        "pipeline_uuid": pipeline_uuid,
        "state": record.state,
        "event": record.name,
        "event_uuid": record.event_uuid,
        "revision": record.seq,
        "time": _iso(record.date),
    }
    if subscription.get("include_data", True) is not False:
        body["data"] = record.data
    return body


class Attempt(NamedTuple):
    """One try at telling a subscriber: ``ok`` for a 2xx (webhook) or an accepted message (actor)."""

    ok: bool
    status: int | None
    error: str | None
    duration_ms: float


def _encode(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class BadAnswer(Exception):
    """The receiver's answer is not HTTP/1.x (or its head is too long to be one)."""


MAX_ANSWER_HEAD = 64 * 1024  # bytes of status line and headers a receiver may send
MAX_KEPT_BODY = 64 * 1024  # a longer answer body is not read: the connection is closed instead


def _ascii_digits(text: str) -> bool:
    """0-9 only: ``str.isdigit`` also takes "²" (a byte of a latin-1 answer), which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def read_answer(sock: socket.socket) -> tuple[int, bool]:
    """Read the answer to a POST from ``sock``: (status, whether the connection can carry another).

    A delivery needs the status and the answer's end, nothing else: after a 1xx, the status line
    and headers; then no body (204, 304), a body of ``Content-Length`` (read and dropped), or
    anything else (chunked, until-close, or too long to bother) ends the connection unread. This
    costs a fifth of ``http.client``, whose header parser is the email package's: the dispatcher
    shares serve's cores (see ``make bench``'s notify part).
    """
    buffer = b""
    while True:
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_ANSWER_HEAD:
                raise BadAnswer("an answer head over 64 KiB")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the receiver closed the connection before answering")
            buffer += chunk
        if end > MAX_ANSWER_HEAD:
            raise BadAnswer("an answer head over 64 KiB")
        head, buffer = buffer[:end].decode("latin-1").split("\r\n"), buffer[end + 4 :]
        version, _, rest = head[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not _ascii_digits(code) or rest[3:4] not in ("", " "):
            raise BadAnswer("not an HTTP/1.x status line")
        status = int(code)
        if not 100 <= status <= 199 or status == 101:
            break  # a 1xx (100 Continue, 103 Early Hints) comes before the real answer
    fields: dict[str, str] = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadAnswer("a header line without a colon")
        fields[name.strip().lower()] = value.strip().lower()
    keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "") and status != 101
    if status in (204, 304):
        return status, keep and not buffer
    length = fields.get("content-length", "")
    if "transfer-encoding" in fields or not _ascii_digits(length) or int(length) > MAX_KEPT_BODY:
        return status, False  # chunked, until close, or long: not worth reading to keep the connection
    remaining = int(length) - len(buffer)
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionResetError("the receiver closed the connection in the middle of its answer")
        remaining -= len(chunk)
    return status, keep and remaining == 0


class Senders:
    """The HTTP clients a dispatcher delivers with, kept between deliveries (keep-alive).

    Webhooks go over kept-alive sockets, one idle pool per origin, each request in one write
    and each answer read by :func:`read_answer`: a POST costs a fraction of httpx's CPU, and
    serve's requests share the cores with its dispatcher (see ``make bench``'s notify part).
    Actor messages go through ``abaco.send_message`` (httpx), as every other message the
    package sends.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()
        self._httpx: httpx.Client | None = None

    def actor_client(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._httpx is None:
                self._httpx = httpx.Client(timeout=self.timeout, follow_redirects=False)
            return self._httpx

    def _connect(self, scheme: str, netloc: str) -> Any:
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
        sock = socket.create_connection((host, port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        return sock

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST and read the answer; the status. A kept connection the receiver closed is replaced once.

        The request goes out in one write; the answer is read by :func:`read_answer`.
        """
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body  # ValueError: not an ASCII URL
        with self._lock:
            idle = self._idle.get(key) or []
            kept: Any = idle.pop() if idle else None
        for fresh in (kept is None, True):
            sock = self._connect(*key) if fresh else kept
            try:
                sock.sendall(request)
                status, keep = read_answer(sock)
            except (OSError, BadAnswer) as exc:
                sock.close()
                if fresh or isinstance(exc, BadAnswer):
                    raise
                continue  # a kept-alive connection the receiver had closed: once more on a new one
            if keep:
                with self._lock:
                    self._idle.setdefault(key, []).append(sock)
            else:
                sock.close()
            return status
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()
            if self._httpx is not None:
                self._httpx.close()
                self._httpx = None


def deliver(subscription: Document, body: dict[str, Any], *, senders: Senders) -> Attempt:
    """Send ``body`` once; an error is a short text without the URL's query, a token or a secret."""
    from .abaco import send_message

    start = time.perf_counter()

    def took() -> float:
        return round((time.perf_counter() - start) * 1000, 1)

    if subscription.get("target") == "actor":
        try:
            send_message(
                str(subscription["actor"]),
                body,
                api_server=subscription.get("api_server"),
                nonce=subscription.get("nonce"),
                bearer=subscription.get("bearer"),
                tapis_token=subscription.get("tapis_token"),
                timeout=senders.timeout,
                retries=0,  # the outbox retries, with its own backoff and records
                client=senders.actor_client(),
            )
        except PipelineJobsError as exc:
            status = getattr(exc, "status_code", None)
            return Attempt(False, status, exc.message[:MAX_ERROR_CHARS], took())
        return Attempt(True, 200, None, took())
    payload = _encode(body)
    headers = webhook_headers(str(subscription["secret"]), str(body["id"]), int(time.time()), payload)
    url = str(subscription["url"])
    try:
        status = senders.post(url, payload, headers)
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad host
        return Attempt(False, None, f"{type(exc).__name__} reaching {shown_url(url)}", took())
    except BadAnswer as exc:
        return Attempt(False, None, f"{exc} from {shown_url(url)}", took())
    if 200 <= status < 300:
        return Attempt(True, status, None, took())
    return Attempt(False, status, f"HTTP {status}", took())


def delivery_record(
    *,
    subscription: Document | None,
    subscription_id: str,
    record: EventRecord | None,
    msg_id: str,
    attempt: int,
    outcome: str,
    tried: Attempt | None,
    at: datetime,
    plan: Budget,
    note: str | None = None,
) -> Document:
    """One row of ``pipelinejobs subscription deliveries``: what was tried, when and how it went."""
    target = None
    if subscription is not None:
        target = shown_url(str(subscription.get("url") or subscription.get("actor") or ""))
    return {
        "webhook_id": msg_id,
        "subscription": subscription_id,
        "job_uuid": record.uuid if record else None,
        "event": record.name if record else None,
        "event_uuid": record.event_uuid if record else None,
        "revision": record.seq if record else None,
        "target": target,
        "attempt": attempt,
        "outcome": outcome,  # delivered | failed (will retry) | gave_up | dropped | test
        "status": tried.status if tried else None,
        "error": (tried.error if tried else None) or note,
        "duration_ms": tried.duration_ms if tried else None,
        "at": at,
        "expires_at": at + timedelta(days=plan.delivery_days),
    }


# -- the dispatcher -----------------------------------------------------------------------------
class DrainReport:
    """What a pass or a drain did: delivered, retrying, gave up, dropped, waiting (MongoDB: logged,
    not yet applied; looked at again later)."""

    def __init__(self) -> None:
        self.delivered = self.retrying = self.gave_up = self.dropped = self.waiting = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, other: DrainReport) -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Dispatcher:
    """Delivers the outbox: claim a batch (a lease), deliver, record, settle; over and over.

    Several dispatchers on one store (serve replicas, serve and a cron `notify --drain`) never
    deliver one item at the same time: the claim is a conditional write, and a crashed
    dispatcher's lease runs out after ``lease_seconds``.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store: Any = store
        self.settings = settings
        self.clock = clock
        self.plan = budget(settings)
        self.senders = Senders(self.plan.timeout_seconds)
        import secrets

        self.owner = "dispatcher-" + secrets.token_hex(6)  # this dispatcher's name on its leases
        self._pool: Any = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.senders.close()
        try:
            self.store.release_notifications(self.owner)
        except PipelineJobsError as exc:  # the lease runs out by itself
            log.info("notification lease not released (%s)", exc.kind.value)

    def run_pass(self) -> DrainReport:
        """One batch: whatever is due now, up to ``batch`` items."""
        from .store.outbox import EventFate, Settled

        report = DrainReport()
        now = self.clock()
        owner = self.owner
        until = now + timedelta(seconds=self.plan.lease_seconds)
        items = self.store.claim_notifications(now, until=until, owner=owner, limit=self.plan.batch)
        if not items:
            return report
        fates = self.store.event_fates(items, now=now, grace_seconds=self.plan.grace_seconds)
        index = subscriptions(self.store, self.settings)
        jobs: list[tuple[OutboxItem, str | None]] = []
        settled: list[Settled] = []
        deliveries: list[Document] = []
        for item, (fate, pipeline_uuid) in zip(items, fates, strict=True):
            if fate is EventFate.PENDING:
                report.waiting += 1
                later = now + timedelta(seconds=RECHECK_SECONDS)  # its writer is most likely a few ms from done
                settled.append(Settled(item, item.pending, item.attempts, later))
            elif fate is EventFate.GONE:
                report.dropped += 1
                log.info("job %s: event %s was not applied or is gone; nobody is told of it", item.uuid, item.seq)
                settled.append(Settled(item, (), item.attempts, now))
            else:
                jobs.append((item, pipeline_uuid))
        for item, outcome in zip([i for i, _ in jobs], self._deliver_all(jobs, index), strict=True):
            still, rows = outcome
            deliveries += rows
            attempts = item.attempts + 1
            pending = tuple(still)
            report.delivered += sum(1 for row in rows if row["outcome"] == "delivered")
            report.dropped += sum(1 for row in rows if row["outcome"] == "dropped")
            if pending and attempts >= self.plan.max_attempts:
                report.gave_up += len(pending)
                for row in rows:
                    if row["subscription"] in pending and row["outcome"] == "failed":
                        row["outcome"] = "gave_up"
                log.warning(
                    "job %s: gave up telling %d subscriber(s) of event %s after %d attempts",
                    item.uuid,
                    len(pending),
                    item.seq,
                    attempts,
                )
                pending = ()
            report.retrying += len(pending)
            due = now + timedelta(seconds=backoff(attempts, self.plan))
            settled.append(Settled(item, pending, attempts, due))
        self.store.settle_notifications(owner, settled, deliveries)
        return report

    def _deliver_all(
        self, jobs: list[tuple[OutboxItem, str | None]], index: SubscriptionIndex
    ) -> list[tuple[list[str], list[Document]]]:
        """Deliver a batch; a receiver that did not answer (refused, timed out) is not tried again in it,
        so a dead or black-holed receiver costs a pass one timeout, not one per notification."""
        unreachable: set[str] = set()
        if len(jobs) <= 1 or self.plan.workers <= 1:
            return [self._deliver_item(item, pipeline, index, unreachable) for item, pipeline in jobs]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.plan.workers, thread_name_prefix="pipelinejobs-notify")
        return list(self._pool.map(lambda job: self._deliver_item(job[0], job[1], index, unreachable), jobs))

    def _deliver_item(
        self, item: OutboxItem, pipeline_uuid: str | None, index: SubscriptionIndex, unreachable: set[str]
    ) -> tuple[list[str], list[Document]]:
        """Try each pending subscription of one item once; (still pending, delivery records)."""
        assert item.record is not None
        still: list[str] = []
        rows: list[Document] = []
        for sub_id in item.pending:
            sub = index.by_id.get(sub_id)
            msg_id = message_id(item.record, sub_id)

            def row(
                outcome: str,
                tried: Attempt | None,
                at: datetime,
                note: str | None = None,
                *,
                sub_id: str = sub_id,
                msg_id: str = msg_id,
            ) -> Document:
                return delivery_record(
                    subscription=index.by_id.get(sub_id),
                    subscription_id=sub_id,
                    record=item.record,
                    msg_id=msg_id,
                    attempt=item.attempts + 1,
                    outcome=outcome,
                    tried=tried,
                    at=at,
                    plan=self.plan,
                    note=note,
                )

            if sub is None:  # removed since the event: nobody to tell
                rows.append(row("dropped", None, self.clock(), "the subscription was removed"))
                continue
            body = notification_body(sub, item.record, pipeline_uuid, msg_id)
            at = self.clock()
            if sub_id in unreachable:
                tried = Attempt(False, None, "not sent: the receiver did not answer earlier in this pass", 0.0)
            else:
                tried = deliver(sub, body, senders=self.senders)
                if tried.status is None and not tried.ok:
                    unreachable.add(sub_id)
            rows.append(row("delivered" if tried.ok else "failed", tried, at))
            if not tried.ok:
                still.append(sub_id)
                log.info(
                    "notification %s (job %s) attempt %d failed: %s", msg_id, item.uuid, item.attempts + 1, tried.error
                )
        return still, rows

    def drain(self, *, max_passes: int = 1000) -> DrainReport:
        """Passes until nothing is due (what `pipelinejobs notify --drain` runs)."""
        total = DrainReport()
        for _ in range(max_passes):
            report = self.run_pass()
            total.add(report)
            handled = sum(report.__dict__.values())
            if handled < self.plan.batch:
                break
        self.store.expire_deliveries(self.clock())
        return total


def send_test(store: Any, settings: Settings, subscription: Document, *, now: datetime) -> Document:
    """Send a signed sample notification to a subscription now, record it, and say how it went."""
    import secrets

    plan = budget(settings)
    sample = EventRecord(
        uuid="00000000-0000-0000-0000-000000000000",
        seq=0,
        event_uuid="test-" + secrets.token_hex(8),
        name="test",
        date=now.replace(microsecond=0),
        data={"test": True},
        state="RUNNING",
    )
    msg_id = "msg_test_" + secrets.token_hex(12)
    body = notification_body(subscription, sample, subscription.get("pipeline_uuid"), msg_id)
    body["type"] = TEST_TYPE
    body["job_uuid"] = subscription.get("job_uuid")
    senders = Senders(plan.timeout_seconds)
    try:
        tried = deliver(subscription, body, senders=senders)
    finally:
        senders.close()
    row = delivery_record(
        subscription=subscription,
        subscription_id=str(subscription["id"]),
        record=None,
        msg_id=msg_id,
        attempt=1,
        outcome="test",
        tried=tried,
        at=now,
        plan=plan,
    )
    row["job_uuid"] = subscription.get("job_uuid")
    store.settle_notifications("test", [], [row])
    return {"ok": tried.ok, "webhook_id": msg_id, "status": tried.status, "error": tried.error}


def start_background(store: JobStore, settings: Settings, clock: Callable[[], datetime]) -> Callable[[], None] | None:
    """serve's dispatcher: a daemon thread running passes every ``every_seconds``, and at once when
    this process commits an outbox item. None (no thread) when ``every_seconds`` is 0.

    Returns the function that stops it (waiting for a pass in progress).
    """
    plan = budget(settings)
    if plan.every_seconds <= 0:
        return None
    dispatcher = Dispatcher(store, settings, clock)
    subscriptions(store, settings, fresh=True)
    cached: _Cached = getattr(store, _CACHE)
    stopping = threading.Event()

    expired_at = [0.0]

    def loop() -> None:
        took = 0.0  # the last pass's duration
        while not stopping.is_set():
            pause = plan.every_seconds
            began = time.monotonic()
            try:
                if time.monotonic() - expired_at[0] > EXPIRE_EVERY_SECONDS:  # SQLite has no TTL index
                    expired_at[0] = time.monotonic()
                    dispatcher.store.expire_deliveries(clock())
                report = dispatcher.run_pass()
                busy = sum(report.__dict__.values()) >= plan.batch
                if report.waiting:
                    pause = min(pause, RECHECK_SECONDS)
            except PipelineJobsError as exc:
                log.warning("notification pass failed (%s): %s", exc.kind.value, exc.message)
                busy = False
            except Exception as exc:  # a bug must not stop the deliveries for good
                log.error("notification pass failed (%s)", type(exc).__name__, exc_info=exc)
                busy = False
            took = time.monotonic() - began
            if busy:
                continue
            woken = getattr(store, _CACHE, cached).wake
            woken.wait(pause)
            woken.clear()
            # let a burst gather into a batch: under load, bigger batches cost less per notification (the
            # batch's reads are shared), and the dispatcher leaves two thirds of its time to the events
            gather = min(max(GATHER_SECONDS, GATHER_PER_PASS * took), MAX_GATHER_SECONDS, plan.every_seconds)
            stopping.wait(gather)

    thread = threading.Thread(target=loop, name="pipelinejobs-notify", daemon=True)
    thread.start()
    log.info("notification dispatcher started: a pass every %s s and after each notified event", plan.every_seconds)

    def stop() -> None:
        stopping.set()
        getattr(store, _CACHE, cached).wake.set()
        thread.join(timeout=30)
        dispatcher.close()

    return stop
