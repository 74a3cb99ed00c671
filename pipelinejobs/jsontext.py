"""JSON that is always valid UTF-8, for serve's answers and the records it stores.

JSON parsed from a request can hold lone surrogates (``"\\ud800"``): Python keeps
them in ``str``, but UTF-8 (an HTTP body) and BSON cannot carry them, so echoing
one used to fail *after* the message had been applied. Here each lone surrogate
becomes U+FFFD, the Unicode replacement character; everything else is unchanged.
Surrogates can only sit inside JSON strings, so replacing them in the text is exact.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a Python str holds no valid pairs, only lone halves


def _replaced(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


def dumps_utf8(value: Any, **options: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False)`` as UTF-8, lone surrogates replaced."""
    text = json.dumps(value, ensure_ascii=False, **options)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _replaced(text).encode("utf-8")


def surrogate_safe(value: Any) -> Any:
    """The JSON value ``value`` with lone surrogates replaced (itself when there are none)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.loads(_replaced(text))
    return value
