"""The web view's sign-in sessions: signed cookie values that every serve process accepts.

A session is ``EXPIRY.ID.MAC`` in an HTTP-only, SameSite=Strict cookie: an HMAC-SHA256 under a key
derived from serve's API tokens, so the cookie never carries a token and any worker (``--workers``)
accepts what another gave out. Signing out is recorded in the registry until the cookie would have
expired, so it holds in every process, after restarts too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..store.registry import Registry

COOKIE = "pj_ui_session"
SESSION_SECONDS = 12 * 3600


class Sessions:
    """Signed-in browsers, as signed cookie values: ``EXPIRY.ID.MAC`` with an HMAC-SHA256 over the rest.

    Every serve process (``--workers``) that shares the key accepts a cookie any of them gave out. The key
    is derived from serve's plain API tokens (:func:`session_key`): whoever could forge a cookie already
    holds a token, and changing the tokens signs everyone out. Signing out records the session's id in the
    registry until the cookie's expiry (``Registry.revoke_session``), and each request with a cookie looks
    there, so a copy of the cookie kept elsewhere is refused by every worker, after restarts too.
    """

    def __init__(
        self, key: bytes, clock: Callable[[], datetime], registry: Registry, ttl: float = SESSION_SECONDS
    ) -> None:
        self._key = key
        self._clock = clock
        self._registry = registry
        self._ttl = ttl

    def _mac(self, expiry: int, session_id: str, owner: str) -> str:
        message = f"{expiry}.{session_id}.{owner}".encode("utf-8", "replace")
        return base64.urlsafe_b64encode(hmac.new(self._key, message, hashlib.sha256).digest()).decode().rstrip("=")

    def open(self, owner: str) -> str:
        expiry = int(self._clock().timestamp() + self._ttl)
        session_id = secrets.token_urlsafe(16)
        return f"{expiry}.{session_id}.{self._mac(expiry, session_id, owner)}"

    def _signed(self, value: str | None, owner: str) -> tuple[int, str] | None:
        """(expiry, id) of a cookie this key signed and that has not expired; None otherwise (no I/O)."""
        parts = (value or "").split(".")
        if len(value or "") > 200 or len(parts) != 3 or not parts[0].isdigit():
            return None
        expiry, session_id, mac = int(parts[0]), parts[1], parts[2]
        if expiry <= self._clock().timestamp() or not hmac.compare_digest(mac, self._mac(expiry, session_id, owner)):
            return None
        return expiry, session_id

    def owner(self, value: str | None, owner: str) -> str | None:
        """``owner`` (who sessions act as) when ``value`` is a live cookie this key signed; else None.

        A signed cookie costs one registry read (a worker thread's work: the registry may be a server away).
        """
        found = self._signed(value, owner)
        if found is None or self._registry.session_revoked(found[1], self._clock()):
            return None
        return owner

    def close(self, value: str | None, owner: str) -> None:
        """Sign the cookie's session out everywhere, until the cookie would have expired anyway."""
        found = self._signed(value, owner)
        if found is not None:
            expiry = datetime.fromtimestamp(found[0], timezone.utc)
            self._registry.revoke_session(found[1], expiry, self._clock())


SESSION_KEY_ENV = "PIPELINEJOBS_UI_SESSION_KEY"  # 32 random bytes in hex, from serve's supervisor to its workers


def session_key(server: Any) -> bytes:
    """The cookies' HMAC key, the same in every serve process: derived from the plain API tokens.

    Serve holds its plain tokens among ``server.secrets`` (for the log redactor); those that
    its token check accepts are the tokens. A server that knows its tokens only as sha256
    digests has nothing secret to derive from, so it signs with a random key: the one
    ``serve --workers`` hands its workers (``SESSION_KEY_ENV``), else one of its own.
    """
    plain = sorted({s for s in server.secrets if s and server.config.api_tokens.check(s)})
    if not plain:
        try:
            shared = bytes.fromhex(os.environ.get(SESSION_KEY_ENV, ""))
        except ValueError:
            shared = b""
        return shared if len(shared) == 32 else secrets.token_bytes(32)
    material = "\0".join(plain).encode("utf-8", "surrogatepass")
    return hmac.new(b"pipelinejobs web view sessions v1", material, hashlib.sha256).digest()
