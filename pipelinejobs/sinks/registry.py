"""The sinks a subscription may name, by kind. A new sink is a module beside this one and a line below."""

from __future__ import annotations

import time

from ..egress import Refused
from ..store.records import Document
from . import actor, openlineage, webhook
from .base import Attempt, Delivery, Outcome, Sink
from .http import Clients

SINKS: dict[str, Sink] = {
    sink.kind: sink
    for sink in (
        webhook.SINK,
        actor.SINK,
        openlineage.SINK,
    )
}
#: every field any sink keeps a secret in, for masking and for the log redactor
SECRET_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(name for sink in SINKS.values() for name in sink.secret_fields))
#: every field any sink keeps a URL in, shown without its query
URL_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(name for sink in SINKS.values() for name in sink.url_fields))


def sink_of(subscription: Document) -> Sink | None:
    """The sink a stored subscription names (None: a kind this version does not know)."""
    return SINKS.get(str(subscription.get("target")))


def secrets_of(subscription: Document) -> list[str]:
    return [str(subscription[name]) for name in SECRET_FIELDS if subscription.get(name)]


def deliver(delivery: Delivery, http: Clients) -> Attempt:
    """One attempt by the subscription's sink, timed; a destination the outbound policy refuses is
    REFUSED (nothing was sent), a kind this version does not know is given up."""
    start = time.perf_counter()
    sink = sink_of(delivery.subscription)
    if sink is None:
        tried = Attempt(Outcome.GIVE_UP, None, "a subscription of a kind this version cannot send")
    else:
        try:
            tried = sink.deliver(delivery, http)
        except Refused as exc:
            tried = Attempt(Outcome.REFUSED, None, exc.message)
    return tried._replace(duration_ms=round((time.perf_counter() - start) * 1000, 1))
