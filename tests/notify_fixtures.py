"""A real HTTP receiver for notification tests: stdlib http.server on a loopback port, in a thread.

It verifies nothing itself; it keeps every request (path, headers, body) and answers
as the test scripts it: fail the first N requests, hang on the first until released, or
answer 204. Signatures are checked by the tests with implementations independent of
``pipelinejobs.notify`` (the Standard Webhooks reference library, and hmac by hand).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Scripted behaviour: ``fail_first`` requests get ``fail_status``; with ``hang_first`` the first
    request waits (up to 60 s) until :meth:`release` before it is answered."""

    fail_first: int = 0
    fail_status: int = 500
    hang_first: bool = False
    status: int = 204
    received: list[Received] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._arrived:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    number = len(receiver.received)
                    receiver._arrived.notify_all()
                if receiver.hang_first and number == 1:
                    receiver._released.wait(60)
                    return  # the connection is dropped without an answer
                code = receiver.fail_status if number <= receiver.fail_first else receiver.status
                answer = b"" if code == 204 else b'{"ok": false}'
                self.send_response(code)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} request(s), got {len(self.received)}")
                self._arrived.wait(left)
            return list(self.received)

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def verify_by_hand(secret: str, received: Received) -> None:
    """The Standard Webhooks scheme written out: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
    base64-decoded part of the secret, base64, after "v1,"."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_") :])
    msg_id, stamp = received.headers["webhook-id"], received.headers["webhook-timestamp"]
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in received.headers["webhook-signature"].split(" "))
    assert hmac.compare_digest(versions["v1"], expected)
    assert abs(int(stamp) - time.time()) < 300


def verify_with_library(secret: str, received: Received) -> Any:
    """The Standard Webhooks reference implementation (PyPI standardwebhooks)."""
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).verify(received.body, received.headers)
