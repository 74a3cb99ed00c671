"""Job and admin token checks, in constant time, never logging a token.

Decisions (datacatalog-compat.md §3): job tokens are enforced (the library
ignored the check), ``_salt`` is never rotated so a callback URL's token stays
valid, and admin tokens exist only when a secret is configured.
"""

from __future__ import annotations

import enum
import hmac
from datetime import datetime
from typing import Any

from . import identifiers
from .errors import ErrorKind, PipelineJobsError
from .logs import get_logger
from .settings import Settings

log = get_logger("auth")


class Grant(str, enum.Enum):
    JOB = "job"
    ADMIN = "admin"
    LEGACY = "legacy"
    #: trusted code in this process (the watchdog): granted by the caller, never by a token
    SYSTEM = "system"
    #: a request that carried one of serve's API tokens, for an engine's report (``service.apply_report``)
    OPERATOR = "operator"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_admin_token(token: str, settings: Settings, now: datetime) -> bool:
    """True for the admin token of the current or the previous time window."""
    admin = settings.admin
    if admin.secret is None:
        return False
    epoch = now.timestamp()
    secret, key = admin.secret.reveal(), admin.key.reveal()
    current = identifiers.admin_token(secret, key, admin.lifetime, epoch)
    previous = identifiers.admin_token(secret, key, admin.lifetime, epoch - admin.lifetime)
    # evaluate both comparisons so timing does not tell which window matched
    return _same(token, current) | _same(token, previous)


def authorize(
    job: dict[str, Any],
    token: str | None,
    settings: Settings,
    now: datetime,
    *,
    admin_only: bool = False,
    operator: bool = False,
) -> Grant:
    """Check ``token`` against ``job``; raise UNAUTHORIZED with a reason, never the token.

    ``operator``: the caller proved it holds one of serve's API tokens (the operator may drive any
    job, as it may already be told any job's token), so no job token is needed; admin-only events
    still need an admin token.
    """
    uuid = job.get("uuid")
    if operator and not admin_only:
        return Grant.OPERATOR
    if not token:
        raise PipelineJobsError(
            ErrorKind.UNAUTHORIZED, f"a token is required for job {uuid} (its own token or an admin token)"
        )
    if is_admin_token(token, settings, now):
        return Grant.ADMIN
    if admin_only:
        reason = settings.admin.disabled_reason
        hint = f" (admin tokens are disabled: {reason})" if reason else ""
        raise PipelineJobsError(ErrorKind.UNAUTHORIZED, f"this action needs an admin token{hint}")
    salt, admin = job.get("_salt"), job.get("_admin")
    if (
        isinstance(salt, str)
        and isinstance(admin, dict)
        and _same(token, identifiers.job_token(salt, str(uuid), admin))
    ):
        return Grant.JOB
    if settings.accept_unverified_tokens:
        log.warning("legacy mode: accepted a token that does not verify for job %s", uuid)
        return Grant.LEGACY
    raise PipelineJobsError(ErrorKind.UNAUTHORIZED, f"the token is not valid for job {uuid}")
