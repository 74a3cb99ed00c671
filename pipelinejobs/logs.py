"""The one redacting log formatter: secrets are removed at the last moment, in one place.

Known secret values (from settings and from the message being handled) are
replaced, and anything shaped like a token assignment, a nonce or URI
credentials is masked even when its value was never registered.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

MASK = "*****"
LOGGER_NAME = "pipelinejobs"

#: Each pattern matches in time linear in the text as ``re.sub`` scans it: what follows a keyword is a run
#: of whitespace (which holds no keyword), and a URI's password runs to its end whether or not an ``@``
#: follows, so no later position rescans it. The old password pattern ended in a required ``@``, and
#: ``mongodb://a:b`` x 5,000 in a request path took seconds.
_ASSIGNMENT = re.compile(r"(?i)((?:token|x-nonce|nonce|password|authn|secret)[\"']?\s*[:=]\s*[\"']?)([^\"'&\s,}]+)")
_BEARER = re.compile(r"(?i)(bearer\s+)(\S+)")
_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)([^@\s]+)(@?)")


def _masked_value(match: re.Match[str]) -> str:
    # token=abc, x-nonce=abc, "token": "abc", 'x-nonce': 'abc', Bearer abc, X-Tapis-Token: abc
    return match.group(1) + MASK


def _masked_password(match: re.Match[str]) -> str:
    """``mongodb://user:*****@``; without the ``@`` it was no password, and the text stays as it was."""
    return match.group(1) + MASK + "@" if match.group(3) else match.group(0)


_PATTERNS = ((_ASSIGNMENT, _masked_value), (_BEARER, _masked_value), (_URI_PASSWORD, _masked_password))


class RedactingFormatter(logging.Formatter):
    """Formats a record, then removes every secret from the text."""

    #: Secrets added after start-up (job tokens of messages at hand). A long-running server
    #: keeps only the most recent ones; the token patterns below still mask older ones. A token
    #: matters while its message is handled, and serve handles at most 40 at once (its thread pool);
    #: every one kept costs each line a substring search (256 made a line 45 us instead of 27).
    MAX_RECENT = 64

    def __init__(self, fmt: str | None = None, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._fixed = {s for s in secrets if s and len(s) >= 4}
        self._recent: dict[str, None] = {}  # insertion-ordered set
        self._ordered: tuple[str, ...] | None = None  # the known secrets, longest first
        self._second, self._second_text = -1, ""  # formatTime's cache

    def add_secrets(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and len(secret) >= 4 and secret not in self._fixed:
                if secret in self._recent:
                    self._recent[secret] = self._recent.pop(secret)  # most recent again; the set is unchanged
                    continue
                self._recent[secret] = None
                self._ordered = None
        while len(self._recent) > self.MAX_RECENT:
            del self._recent[next(iter(self._recent))]

    def redact(self, text: str) -> str:
        if self._ordered is None:  # sorted again only when a new secret arrives, not for every line
            self._ordered = tuple(sorted({*self._fixed, *self._recent}, key=len, reverse=True))
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, masked in _PATTERNS:
            text = pattern.sub(masked, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own text, with the seconds part made once per second rather than once per line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime(self.default_time_format, self.converter(second))
        return f"{self._second_text},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream=None) -> RedactingFormatter:
    """Send the package's logs to stderr through the redacting formatter."""
    formatter = RedactingFormatter(secrets=secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper() if isinstance(level, str) else logging.INFO)
    logger.propagate = False
    # The logging docs' "Optimization": our format shows no caller or process, so don't collect
    # them for every record (findCaller walks the stack on each line). The thread id stays:
    # serve files each record under the execution its thread is handling.
    logging._srcfile = None
    logging.logProcesses = logging.logMultiprocessing = False
    return formatter


def add_secrets(secrets: Iterable[str]) -> None:
    """Register more secret values (e.g. the token of the message at hand)."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.add_secrets(secrets)


#: the level names config.yml may use (logging.getLevelNamesMapping() is Python 3.11+)
LEVEL_NAMES = frozenset({"CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"})


def set_level(level: object) -> None:
    """Apply a level name from config.yml; anything else leaves the level alone."""
    if isinstance(level, str) and level.upper() in LEVEL_NAMES:
        logging.getLogger(LOGGER_NAME).setLevel(level.upper())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
