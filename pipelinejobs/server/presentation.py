"""How the web view shows things: times for people, event data, and a job's life as a timeline.

Pure functions of their arguments (the clock is passed in), so they are tested directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import fsm

DATA_SHOWN_CHARS = 20_000  # an event's data is cut here on the page (the API has all of it)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 text (as ``queries.jsonable`` writes times) or a datetime, as aware UTC; else None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def absolute(value: Any) -> str:
    moment = _moment(value)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def iso(value: Any) -> str:
    moment = _moment(value)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if moment else ""


def duration(seconds: float) -> str:
    """A span for people: ``4 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def relative(value: Any, now: datetime) -> str:
    moment = _moment(value)
    if moment is None:
        return ""
    delta = (now - moment).total_seconds()
    if abs(delta) < 5:
        return "just now"
    return f"{duration(abs(delta))} ago" if delta > 0 else f"in {duration(delta * -1)}"


def data_text(data: Any) -> tuple[str, int]:
    """Event or job data as indented JSON, cut at :data:`DATA_SHOWN_CHARS`; and its full length."""
    if data is None:
        return "", 0
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        text = "(this data cannot be shown as JSON)"
    return text[:DATA_SHOWN_CHARS], len(text)


def safe_text(text: str) -> str:
    """``text`` that UTF-8 can carry: each lone surrogate becomes U+FFFD (as serve's JSON answers do)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


@dataclass(frozen=True)
class Band:
    state: str
    start: datetime
    end: datetime
    left: float  # percent of the timeline
    width: float


def state_path(events: list[dict[str, Any]]) -> list[str]:
    """The states a job went through, in order: each applied event's resulting state, repeats folded."""
    path: list[str] = []
    for event in events:
        state = event.get("state")
        if event.get("outcome") == "applied" and state and (not path or path[-1] != state):
            path.append(state)
    return path


def timeline(job: Mapping[str, Any], events: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Bands of time in each state, event ticks and the total per state, as percentages of the span.

    The span runs from the job's creation to ``now``, or to its last event once it is in a
    terminal state (where it stays for good: a band up to today would only say how old it is).
    """
    changes = [
        (moment, str(e["state"]))
        for e in events
        if e.get("outcome") == "applied" and e.get("state") and (moment := _moment(e.get("date"))) is not None
    ]
    stamped = [(moment, e) for e in events if (moment := _moment(e.get("date"))) is not None]
    created = _moment((job.get("_properties") or {}).get("created_date")) or (changes[0][0] if changes else None)
    if created is None:
        return {"bands": [], "ticks": [], "totals": [], "start": None, "end": None}
    last = max([created, *(m for m, _ in stamped)])
    end = last if job.get("state") in {s.value for s in fsm.TERMINAL_STATES} else max(now, last)
    start = min([created, *(m for m, _ in stamped)])
    span = max((end - start).total_seconds(), 1e-9)

    def at(moment: datetime) -> float:
        return round(100 * (moment - start).total_seconds() / span, 3)

    bands: list[Band] = []
    if not changes or changes[0][0] > start:  # the time before the first recorded change: CREATED
        changes.insert(0, (start, fsm.State.CREATED.value))
    for i, (moment, state) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else end
        if bands and bands[-1].state == state:
            previous = bands.pop()
            moment = previous.start
        bands.append(Band(state, moment, until, at(moment), max(at(until) - at(moment), 0.0)))
    totals: dict[str, float] = {}
    for band in bands:
        totals[band.state] = totals.get(band.state, 0.0) + (band.end - band.start).total_seconds()
    ticks = [
        {"left": at(moment), "name": e.get("name"), "date": e.get("date"), "outcome": e.get("outcome")}
        for moment, e in stamped
    ]
    return {
        "bands": bands,
        "ticks": ticks,
        "totals": [(state, seconds) for state, seconds in totals.items()],
        "start": start,
        "end": end,
        "ongoing": end > last,
    }
