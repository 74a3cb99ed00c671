"""Making, checking, saving, showing and removing subscriptions (the API's and the CLI's side).

A subscription document holds the scope (``pipeline_uuid`` or ``job_uuid``), the filters
(``states``, ``events``, ``include_data``), ``target`` (the sink's kind) and the sink's own fields,
secrets among them (a webhook's signing secret, an actor's nonce, an OpenLineage API key). The
sink checks its fields (``pipelinejobs.sinks``); destinations must pass the outbound policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import fsm
from ..errors import ErrorKind, PipelineJobsError
from ..logs import MASK, add_secrets, get_logger
from ..settings import Settings
from ..store.base import JobStore
from ..store.records import Document
from .matching import forget_cache

if TYPE_CHECKING:
    from .. import egress

log = get_logger("notify")

SUBSCRIPTION_PREFIX = "sub_"


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


def new_subscription(
    *,
    now: datetime,
    pipeline_uuid: str | None = None,
    job_uuid: str | None = None,
    states: Iterable[str] | None = None,
    events: Iterable[str] | None = None,
    include_data: bool = True,
    description: str = "",
    **target: Any,
) -> Document:
    """A subscription document, checked (BAD_MESSAGE says what is wrong, never echoing a secret).

    ``target`` holds exactly one sink's selector (``url``, ``actor``, ``openlineage``) and, as
    needed, that sink's options (``nonce``, ``api_server``, ``namespace``, ``api_key``...).
    """
    import secrets

    from ..sinks.registry import SINKS

    if bool(pipeline_uuid) == bool(job_uuid):
        raise _bad("a subscription watches one pipeline (pipeline) or one job (job): give exactly one")
    given = {name: value for name, value in target.items() if value is not None and value != ""}
    chosen = [sink for sink in SINKS.values() if sink.selector in given]
    if len(chosen) != 1:
        kinds = ", ".join(f"{sink.label} ({sink.selector})" for sink in SINKS.values())
        raise _bad(f"a subscription tells one of: {kinds}; give exactly one")
    sink = chosen[0]
    foreign = sorted(set(given) - {sink.selector, *sink.options})
    if foreign:
        raise _bad(f"{', '.join(name[:40] for name in foreign[:5])}: not an option of a {sink.label} subscription")
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
        "target": sink.kind,
        **sink.fields(given),
    }
    if sink.changes_only:
        doc["changes_only"] = True
    return doc


def public_view(subscription: Document, *, reveal_secret: bool = False) -> Document:
    """A subscription as it may be shown: secrets masked (the webhook's signing secret only at creation),
    URLs without their query."""
    from ..sinks.base import shown_url
    from ..sinks.registry import SECRET_FIELDS, URL_FIELDS

    shown = {k: v for k, v in subscription.items() if k != "_id"}
    for name in SECRET_FIELDS:
        if name in shown and not (reveal_secret and name == "secret"):
            shown[name] = MASK
    for name in URL_FIELDS:
        value = shown.get(name)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            shown[name] = shown_url(value)
    return shown


def describe(subscription: Document) -> str:
    """Where a subscription sends, for people: "webhook https://host/path"."""
    from ..sinks.registry import sink_of

    sink = sink_of(subscription)
    if sink is None:
        return f"{subscription.get('target')} (unknown kind)"
    return f"{sink.label} {sink.destination(subscription)}"


def check_destinations(subscription: Document, policy: egress.Policy) -> None:
    """Refuse (``BAD_MESSAGE``) a subscription whose URLs the outbound policy would not send to, as
    resolved now; every send checks again (``egress``)."""
    from ..sinks.registry import URL_FIELDS

    for name in URL_FIELDS:
        value = subscription.get(name)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            policy.check_url(value, name)


def add_subscription(
    store: JobStore, settings: Settings, subscription: Document, *, policy: egress.Policy | None = None
) -> Document:
    """Save a subscription that ``new_subscription`` built, once its destinations pass the outbound policy."""
    from .. import egress
    from ..sinks.registry import secrets_of

    check_destinations(subscription, policy or egress.Policy.from_settings(settings))
    add_secrets(secrets_of(subscription))
    store.save_subscription(subscription)
    forget_cache(store)
    log.info("subscription %s added (%s)", subscription["id"], subscription["target"])
    return subscription


def remove_subscription(store: JobStore, subscription_id: str) -> None:
    if not store.delete_subscription(subscription_id):
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no subscription {subscription_id[:64]}")
    forget_cache(store)
    log.info("subscription %s removed", subscription_id)
