"""What a sink is, what it is given to deliver, and what it answers.

A sink is a :class:`Sink` subclass in a module of its own, registered by one line in
``registry.py``. The dispatcher hands it a :class:`Delivery` (the subscription, the event's log
record, the notification's id, and :class:`Facts` to read more of the job when the sink needs
it) and the pooled HTTP client; the sink answers an :class:`Attempt` whose :class:`Outcome` the
dispatcher records and acts on. No sink reads or writes the store itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..errors import ErrorKind, PipelineJobsError
from ..store.records import Document, EventRecord

if TYPE_CHECKING:
    from .http import Clients

MAX_ERROR_CHARS = 200
MAX_URL_CHARS = 2048


class Outcome(str, enum.Enum):
    """How one attempt went; the value is what the delivery record says."""

    DELIVERED = "delivered"
    RETRY = "failed"  # tried again after a backoff, until the budget's attempts are spent
    GIVE_UP = "gave_up"  # the receiver refused this notification for good (OpenLineage's 4xx): never again
    REFUSED = "refused"  # the outbound policy refused the destination: nothing was sent, nor will be
    SKIPPED = "skipped"  # nothing to tell this receiver of this event (an OpenLineage run already ended)


class Attempt(NamedTuple):
    """One try at telling a subscriber. ``error`` is short and holds no secret nor a URL's query."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSED


class Facts(Protocol):
    """More of a job than its outbox item holds, read on demand (and once per pass) by the dispatcher."""

    def job(self, uuid: str) -> Document | None:
        """The job document, or None."""

    def pipeline(self, uuid: str) -> Document | None:
        """The pipeline document, or None."""

    def history(self, uuid: str) -> list[EventRecord]:
        """The job's event log, oldest first."""


class NoFacts:
    """For a test send: a sample event of no job."""

    def job(self, uuid: str) -> Document | None:
        return None

    def pipeline(self, uuid: str) -> Document | None:
        return None

    def history(self, uuid: str) -> list[EventRecord]:
        return []


@dataclass(frozen=True)
class Delivery:
    """What one subscription is to be told of one event."""

    subscription: Document
    record: EventRecord
    pipeline_uuid: str | None
    msg_id: str  # the notification's id: the same on every retry (``webhook-id``, ``ce-id``)
    facts: Facts
    test: bool = False  # a sample sent by `subscription test`


class Sink:
    """One kind of subscription target. Subclasses set the class attributes and the three methods."""

    #: the subscription document's ``target``
    kind: ClassVar[str]
    #: the request field that chooses this sink (``url``, ``actor``, ``openlineage``); its value is the destination
    selector: ClassVar[str]
    #: the other request fields this sink takes
    options: ClassVar[tuple[str, ...]] = ()
    #: fields of the document that are secrets: stored, used, masked in listings, registered with the redactor
    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: fields of the document that are URLs: vetted by the outbound policy, shown without their query
    url_fields: ClassVar[tuple[str, ...]] = ()
    #: told only of events that change the job's state (the event path reads this from the document)
    changes_only: ClassVar[bool] = False
    #: how a listing names it ("webhook", "actor", "OpenLineage")
    label: ClassVar[str]

    def fields(self, given: Mapping[str, Any]) -> Document:
        """The document's fields for this sink from the request's (``selector`` and ``options``), checked:
        ``BAD_MESSAGE`` says what is wrong without echoing a secret."""
        raise NotImplementedError

    def deliver(self, delivery: Delivery, http: Clients) -> Attempt:
        """Make one attempt. ``egress.Refused`` may propagate (the caller records it as refused)."""
        raise NotImplementedError

    def destination(self, subscription: Document) -> str:
        """The destination as listings and delivery records show it."""
        return shown_url(str(subscription.get(self.selector) or ""))


# -- helpers the sinks share ------------------------------------------------------------------------
def bad(message: str, **details: Any) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.BAD_MESSAGE, message, **details)


def checked_url(value: Any, what: str) -> str:
    """An http(s) URL with a host and no credentials (a secret in a URL ends up in too many places:
    a subscription's secrets have fields of their own, stored and masked as secrets)."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise bad(f"{what} must be a URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1/": an unclosed IPv6 bracket
        raise bad(f"{what} must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad(f"{what} must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise bad(f"{what} must not hold credentials; give a secret of the subscription instead")
    return value


def checked_text(value: Any, what: str, *, limit: int = 256, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise bad(f"{what} is needed")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise bad(f"{what} must be text of at most {limit} characters")
    return value


def shown_url(url: str) -> str:
    """Scheme, host and path only: a URL's query may hold a key (Slack-style hooks, nonces)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def failure_name(exc: BaseException) -> str:
    """The most telling name of a failure: the operating system's (``ConnectionRefusedError``) under an
    HTTP client's wrapper (``ConnectError``), else the wrapper's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def judged(status: int, url: str, *, give_up_on_4xx: bool) -> Attempt:
    """A receiver's HTTP status as an attempt: 2xx delivered; 4xx given up when the sink says a refusal
    is final (OpenLineage: a 4xx will never be accepted), otherwise retried, as 5xx always are."""
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, status)
    if give_up_on_4xx and 400 <= status < 500 and status not in (408, 429):  # a timeout, a rate limit: later
        return Attempt(Outcome.GIVE_UP, status, f"HTTP {status} from {shown_url(url)}; not retried")
    return Attempt(Outcome.RETRY, status, f"HTTP {status}")
