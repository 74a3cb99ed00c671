"""Telling the dispatcher that an outbox item was just committed, in this process or serve's supervisor.

The event path calls :func:`wake` after an append that wrote an outbox item; it costs a flag and,
under ``serve --workers``, at most one datagram per 10 ms.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from ..store.base import JobStore
from .matching import wake_event

if TYPE_CHECKING:  # a process that never sends a wake-up (reactor.py) never loads it
    import socket


def wake(store: JobStore) -> None:
    """Tell the dispatcher that an outbox item was just committed: this process's, if it runs one, and
    under ``serve --workers`` the supervisor's (see :class:`WakeSocket`)."""
    _wake_here(store)
    _WAKE_SENDER.send()


def _wake_here(store: JobStore) -> None:
    event = wake_event(store)
    if event is not None and not event.is_set():  # set() takes the event's lock and notifies
        event.set()


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
                import socket

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
        import socket
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
