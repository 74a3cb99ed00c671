"""Abaco's records as serve keeps and shows them: nonces (with Abaco's rules and refusal texts),
executions, and the hypermedia links of each (``models.py`` ``display()`` upstream).

Pure: no HTTP and no storage here. The records are stored by ``store.registry``; the
endpoints that answer with them are in ``server/abaco_api.py``.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..settings import Settings
from ..store.registry import Level, Record, Totals, abaco_time

_ID_ALPHABET = string.ascii_letters + string.digits


class Refused(Exception):
    """A request refused with Abaco's wording; the HTTP front end answers 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


NONCE_MISSING = "Nonce does not exist."
NONCE_LEVEL = "Nonce does not have sufficient permissions level."
NONCE_USED_UP = "No remaining uses left for this nonce."


def hashid() -> str:
    """A 13-character id, shaped like Abaco's hashids: 80 random bits in base 62 (one read of the OS's randomness)."""
    number = int.from_bytes(secrets.token_bytes(10), "big")
    digits = []
    for _ in range(13):
        number, digit = divmod(number, 62)
        digits.append(_ID_ALPHABET[digit])
    return "".join(digits)


INT64_MAX = 2**63 - 1  # the largest count either store keeps exactly (MongoDB's int64)

# Abaco's texts (actors/controllers.py, models.py; the parser's help text is the Nonce model's)
NONCE_NOT_FOUND = "Nonce not found."
MAX_USES_NOT_INTEGER = "The max uses parameter must be an integer."
MAX_USES_RANGE = "The max uses parameter must be a positive integer or -1 (to denote unlimited uses)."
MAX_USES_HELP = "Maximum number of times this nonce can be redeemed. Default is unlimited."
LEVEL_CHOICES = tuple(Level.__members__)
BAD_LEVEL = f"Invalid nonce description. The level attribute must be one of: {LEVEL_CHOICES}"
BAD_NONCE_BODY = "Invalid nonce description: Unable to process the JSON description."
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _max_uses(value: Any, field: str) -> int:
    """maxUses as Abaco's request parser reads it (an integer), then Abaco's range check.

    Deliberately stricter than Python's ``int()``: no booleans, fractions, Unicode digits or
    ``1_000``; and a count beyond int64 is refused rather than overflowing the store.
    """
    unparsable = Refused(f"Invalid nonce description: {{{field!r}: {MAX_USES_HELP!r}}}")
    if value is None:
        raise Refused(MAX_USES_NOT_INTEGER)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            raise unparsable
        if len(text.lstrip("+-").lstrip("0")) > 19:  # more digits than int64 holds: no int() of a huge string
            raise Refused(f"{MAX_USES_RANGE} The largest is {INT64_MAX}.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise unparsable
    if value == 0 or value < -1:
        raise Refused(MAX_USES_RANGE)
    if value > INT64_MAX:
        raise Refused(f"{MAX_USES_RANGE} The largest is {INT64_MAX}.")
    return value


def new_nonce(
    *,
    actor_id: str,
    owner: str,
    tenant: str,
    now: datetime,
    max_uses: Any = -1,
    level: Any = "EXECUTE",
    description: Any = "",
    roles: Iterable[str] = (),
    field: str = "maxUses",
) -> Record:
    """A nonce record as Abaco stores it, after Abaco's checks of maxUses and level.

    ``field`` is how the request spelled maxUses (``max_uses`` on Tapis v3), for the refusal text.
    Levels are case-sensitive, as in Abaco.
    """
    uses = _max_uses(max_uses, field)
    if not isinstance(level, str) or level not in LEVEL_CHOICES:
        raise Refused(BAD_LEVEL)
    return {
        "id": f"{tenant.upper()}_{hashid()}",
        "actorId": actor_id,
        "owner": owner,
        "roles": list(roles),
        "level": level,
        "maxUses": uses,
        "currentUses": 0,
        "remainingUses": uses,
        "description": "" if description is None else str(description)[:1000],
        "createTime": abaco_time(now),
        "lastUseTime": None,
    }


def refusal(nonce: Record | None, level: Level) -> Refused:
    """Why a use was refused, read after the conditional write missed."""
    if nonce is None:
        return Refused(NONCE_MISSING)
    if Level[nonce["level"]] < level:
        return Refused(NONCE_LEVEL)
    return Refused(NONCE_USED_UP)


# -- how Abaco displays records (models.py ``display()``; the API answers in these shapes) ------
@dataclass(frozen=True)
class Links:
    """Where Abaco's hypermedia points: the tenant's base URL, with v2 or v3 paths."""

    api_server: str
    v3: bool = False

    def actor(self, actor_id: str) -> str:
        return f"{self.api_server}/v3/actors/{actor_id}" if self.v3 else f"{self.api_server}/actors/v2/{actor_id}"

    def profile(self, user: str) -> str:
        return f"{self.api_server}/v3/oauth2/profiles/{user}" if self.v3 else f"{self.api_server}/profiles/v2/{user}"


def display_time(value: str | None) -> str:
    """Abaco shows a time that was never set as the string "None" (``display_time``)."""
    return value or "None"


def display_nonce(nonce: Record, links: Links) -> Record:
    actor = links.actor(nonce["actorId"])
    shown = {
        "id": nonce["id"],
        "actorId": nonce["actorId"],
        "owner": nonce["owner"],
        "roles": list(nonce.get("roles") or []),
        "apiServer": links.api_server,
        "level": nonce["level"],
        "maxUses": nonce["maxUses"],
        "currentUses": nonce["currentUses"],
        "remainingUses": nonce["remainingUses"],
        "description": nonce.get("description", ""),
        "createTime": display_time(nonce.get("createTime")),
        "lastUseTime": display_time(nonce.get("lastUseTime")),
    }
    shown["_links"] = {
        "self": f"{actor}/nonces/{nonce['id']}",
        "owner": links.profile(nonce["owner"]),
        "actor": actor,
    }
    return shown


def display_execution(execution: Record, links: Links) -> Record:
    """One execution; serve measures no container, so ``cpu`` and ``io`` are 0. Logs have their own endpoint."""
    actor = links.actor(execution["actorId"])
    shown = {k: v for k, v in execution.items() if k != "logs"}
    shown.setdefault("cpu", 0)
    shown.setdefault("io", 0)
    shown["apiServer"] = links.api_server
    shown["_links"] = {
        "self": f"{actor}/executions/{execution['id']}",
        "owner": links.profile(str(execution.get("executor") or "")),
        "logs": f"{actor}/executions/{execution['id']}/logs",
    }
    return shown


_SUMMARY_ROW = ("id", "status", "startTime", "finishTime", "messageReceivedTime", "exitCode")


def display_executions(actor_id: str, owner: str, rows: list[Record], totals: Totals, links: Links) -> Record:
    """Abaco's ExecutionsSummary: totals over all the actor's executions, then the rows (newest first)."""
    actor = links.actor(actor_id)
    return {
        "actorId": actor_id,
        "apiServer": links.api_server,
        "owner": owner,
        "totalExecutions": totals.executions,
        "totalCpu": 0,
        "totalIo": 0,
        "totalRuntime": totals.runtime,
        "executions": [{key: row.get(key) for key in _SUMMARY_ROW} for row in rows],
        "_links": {"self": f"{actor}/executions", "owner": links.profile(owner)},
    }


def display_logs(execution: Record, owner: str, links: Links) -> Record:
    url = f"{links.actor(execution['actorId'])}/executions/{execution['id']}"
    return {
        "logs": execution.get("logs", ""),
        "_links": {"self": f"{url}/logs", "owner": links.profile(owner), "execution": url},
    }


def nonce_tenant(settings: Settings) -> str:
    """The tenant part of nonce ids: ``serve.tenant``, else the identity's tenant."""
    return str(settings.section("serve").get("tenant") or settings.identity.tenant).upper()
