"""The operator's credential: the bearer tokens `pipelinejobs serve` accepts, kept only as sha256 digests.

Plain tokens come from ``--api-token``, ``PIPELINEJOBS_API_TOKENS`` or ``_REACTOR_SERVE_API_TOKENS``
and are never written anywhere; ``serve.api_token_sha256`` pins digests instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class ApiTokens:
    """The bearer tokens `serve` accepts, kept only as sha256 digests."""

    def __init__(self, digests: Iterable[str] = ()) -> None:
        self._digests = tuple(sorted({d.strip().lower() for d in digests if d and d.strip()}))

    @classmethod
    def from_plain(cls, tokens: Iterable[str], digests: Iterable[str] = ()) -> ApiTokens:
        return cls([*digests, *(sha256(t) for t in tokens if t)])

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        """Constant-time in the token; every digest is compared so timing tells nothing."""
        digest = sha256(presented)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
