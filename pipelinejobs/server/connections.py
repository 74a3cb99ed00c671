"""How long and how much a client may take to send a request to `pipelinejobs serve`, and how many may be open.

uvicorn closes a connection left idle after a response (``timeout_keep_alive``) and answers 503 past a
number of open connections (``limit_concurrency``), but with its httptools parser nothing bounds a request
that is slow to arrive or never ends: a client that sends half a head holds its connection (a file
descriptor and a slot) for good, and a head without an end grows in memory. :class:`GuardedProtocol` is
uvicorn's httptools protocol with three more rules:

- a request head must arrive within ``head_timeout_seconds`` of the connection's opening, or of the first
  byte of a following request; else 408 and the connection is closed;
- its body within ``body_timeout_seconds`` of the head's end; else 408 (or, once the answer has begun,
  only the close);
- a head longer than ``max_head_bytes`` is answered 431 and the connection closed.

Time counts only while serve reads: when it holds reading back itself (a pipelined request waiting for
the one before, a body the app has not consumed yet), the deadline waits too. Under TLS, asyncio already
bounds the handshake (60 s) before the protocol sees the connection. The settings are ``serve.*`` in
config.yml (:func:`connection_limits`); the protocol reaches uvicorn as a picklable ``functools.partial``
(:func:`uvicorn_options`), so ``serve --workers`` hands it to every worker.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    """The ``serve.*`` connection settings, with their defaults."""

    head_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    keep_alive_seconds: float = 5.0
    limit_concurrency: int = 500
    max_head_bytes: int = 65536


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits from the ``serve`` section (typed and checked at load: ``settings_schema``)."""
    return ConnectionLimits(**{name: settings.value("serve", name) for name in ConnectionLimits.__dataclass_fields__})


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """What ``uvicorn.Config`` takes to apply ``limits``: the guarded protocol and uvicorn's own two limits."""
    return {
        "http": functools.partial(GuardedProtocol, limits=limits),
        "limit_concurrency": limits.limit_concurrency,
        "timeout_keep_alive": limits.keep_alive_seconds,
    }


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's head and body and a bound on its head."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ConnectionLimits()
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = 0  # bytes received while a head is arriving; None between heads

    # -- the deadlines -------------------------------------------------------------------------------
    def _arm(self, seconds: float, late: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _waits_for_us(self, seconds: float, late: Any) -> bool:
        """Whether serve itself holds reading back: then the client is not late, and the deadline moves on."""
        if self.flow is not None and self.flow.read_paused:
            self._arm(seconds, late)
            return True
        return False

    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._waits_for_us(self.limits.head_timeout_seconds, self._head_late):
            return
        answering = self.cycle is not None and not self.cycle.response_complete  # a pipelined request's answer
        self._close(None if answering else (408, "The request head did not arrive in time."))

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._waits_for_us(self.limits.body_timeout_seconds, self._body_late):
            return
        started = self.cycle is not None and self.cycle.response_started
        self._close(None if started else (408, "The request body did not arrive in time."))

    def _close(self, answer: tuple[int, str] | None) -> None:
        """Answer (unless an answer is under way), tell the app the client is gone, and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says http.disconnect and its send() writes nothing
            cycle.message_event.set()
        if answer is not None:
            status, text = answer
            body = text.encode("ascii")
            head = [f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode("ascii")]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head.append(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n")
            head.append(b"content-length: %d\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        self.transport.close()

    # -- uvicorn's protocol, with the rules added -----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.head_timeout_seconds, self._head_late)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        too_long = self._head_bytes is not None and self._head_bytes > self.limits.max_head_bytes
        if too_long and not self.transport.is_closing():
            self._disarm()
            self._close((431, f"The request head is longer than {self.limits.max_head_bytes} bytes."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_bytes is None:  # a following request on a kept-alive connection
            self._head_bytes = 0
        if self._deadline is None:  # the first request's deadline runs from the connection's opening
            self._arm(self.limits.head_timeout_seconds, self._head_late)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_seconds, self._body_late)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
