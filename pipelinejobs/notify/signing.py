"""Standard Webhooks signing: a subscription's secret and the three headers that carry a signature.

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")),
the key being the base64-decoded part of the ``whsec_`` secret (https://www.standardwebhooks.com/).
Receivers verify it with the reference library; tests do so too, and by hand.
"""

from __future__ import annotations

import base64

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A subscription's signing secret: ``whsec_`` + base64 of 24 random bytes."""
    import os

    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64-decoded part (as the Standard Webhooks spec says)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    import hashlib
    import hmac

    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` of ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }
