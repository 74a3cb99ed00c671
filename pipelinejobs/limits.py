"""What a message may hold so that both stores keep it unchanged, and delivery ids' shape.

A parsed message is plain JSON, but JSON admits values the stores cannot keep:
a lone surrogate (``"\\ud800"``) is not Unicode text, so it cannot be encoded as
UTF-8 for BSON, SQLite text or an HTTP answer; MongoDB stores integers in at
most 64 bits; a number such as ``1e400`` parses to infinity, which JSON cannot
say; and BSON refuses documents nested deeper than 100 levels, where a job's
``history`` entry already takes a few. Each is refused here, before anything is
stored, with the field path and never the value, so the two stores cannot
disagree about what they accept.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from .errors import ErrorKind, PipelineJobsError

#: Objects and arrays may nest this deep in a message (the message itself is level 1).
#: Below BSON's 100 levels with room for the job document and history entry around ``data``.
MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: A delivery id (``event_id``): 1-128 printable ASCII characters, no whitespace.
EVENT_ID_MAX = 128
_EVENT_ID = re.compile(f"[!-~]{{1,{EVENT_ID_MAX}}}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_BRACKETS = re.compile(r"[^\[\]{}()]+")
_QUOTES = "\"'"


@cache  # compiled on first use: only a message that could not be parsed needs them
def _string_splitter(live: str) -> re.Pattern[str]:
    """Splits text at closed string literals quoted by ``live``; an unclosed one takes the rest of the text.

    Each closed string is the unrolled loop ``q [^q\\]* (\\. [^q\\]*)* q``, which has one way to
    match; the last alternative, a quote with everything after it, ends the scan at the first quote that
    opens no closed string, so no later position is tried again (see ``_outside_strings``).
    """
    closed = [rf"{q}[^{q}\\]*(?:\\.[^{q}\\]*)*{q}" for q in live]
    return re.compile("|".join([*closed, f"([{live}].*)"]), re.DOTALL)


def valid_event_id(value: object) -> bool:
    """Whether ``value`` has the shape the PipelineJobEvent schema gives ``event_id``."""
    return isinstance(value, str) and _EVENT_ID.fullmatch(value) is not None


def event_id_or_none(candidate: str | None) -> str | None:
    """A derived delivery id when it has the schema's shape; None (no id) rather than a refusal."""
    return candidate if valid_event_id(candidate) else None


def _refuse(where: str, why: str) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.BAD_MESSAGE, f"{where}: {why}", field=where)


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _short(path: str) -> str:
    return path if len(path) <= 160 else path[:157] + "..."


def check_json_value(value: Any, where: str = "(message)", depth: int = 0) -> None:
    """Refuse what no store can keep anywhere in ``value``: say where, never what.

    ``where`` names ``value`` in the error (``data``, ``URL parameter 'session'``);
    ``depth`` is how many levels of the message are above it.
    """
    _walk(value, where, depth)


def _walk(value: Any, path: str, depth: int) -> None:
    if isinstance(value, str):
        if _has_surrogate(value):
            raise _refuse(_short(path), "holds a lone surrogate (U+D800..U+DFFF), which is not Unicode text")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _refuse(_short(path), "the integer is outside the 64-bit range that MongoDB stores")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(_short(path), "the number is too large to be a JSON number (not a finite double)")
    elif isinstance(value, dict | list):
        depth += 1
        if depth > MAX_DEPTH:
            raise _refuse(_short(path), f"objects and arrays are nested deeper than the limit of {MAX_DEPTH} levels")
        if isinstance(value, list):
            for index, item in enumerate(value):
                _walk(item, f"{path}[{index}]", depth)
            return
        prefix = "" if path == "(message)" else path + "."
        for key, item in value.items():
            if isinstance(key, str) and _has_surrogate(key):
                raise _refuse(_short(path), "a field name holds a lone surrogate (U+D800..U+DFFF)")
            _walk(item, f"{prefix}{str(key)[:40]}", depth)


def _outside_strings(text: str, live: str = _QUOTES) -> str:
    """``text`` without its string literals (JSON or Python repr), in linear time.

    The same text as removing every closed literal from left to right, where a quote that opens
    none is an ordinary character. Once a quote of one kind opens no closed literal, no later quote
    of that kind does: the scan from it meets the same escapes in step and runs off the end too. So
    that quote ends the pass, and the rest is scanned once more with only the other kind of quote
    live: at most three passes, where trying every quote again made ``"`` + ``\\"`` x n quadratic
    (a 24 KB message held serve's event loop for 2 s).
    """
    parts = _string_splitter(live).split(text)
    head = "".join(parts[0::2])
    unclosed = parts[-2] if len(parts) > 1 else None  # the last match, if it is the unclosed one
    if not unclosed:
        return head
    quote, rest = unclosed[0], unclosed[1:]
    others = live.replace(quote, "")
    return head + quote + (_outside_strings(rest, others) if others else rest)


def nesting_depth(text: str) -> int:
    """How deep brackets nest in ``text`` outside string literals (JSON or Python repr), in linear time.

    Used only to explain a message that could not be parsed, so a rough reading is enough.
    """
    deepest = depth = 0
    for bracket in _NOT_BRACKETS.sub("", _outside_strings(text)):
        if bracket in "[{(":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif depth:
            depth -= 1
    return deepest
