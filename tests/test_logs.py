"""The redacting formatter: secrets never reach a log line."""

from __future__ import annotations

import io
import logging
import time

from pipelinejobs import logs


def _emit(text: str, secrets: tuple[str, ...] = ()) -> str:
    stream = io.StringIO()
    logs.configure("INFO", secrets=secrets, stream=stream)
    logs.get_logger("test").info(text)
    return stream.getvalue()


def test_known_secret_values_are_masked() -> None:
    out = _emit("authn=bW9uZ29kYjovL3U6cEBoOjEv and value bW9uZ29kYjovL3U6cEBoOjEv", ("bW9uZ29kYjovL3U6cEBoOjEv",))
    assert "bW9uZ29kYjovL3U6cEBoOjEv" not in out and logs.MASK in out


def test_token_shapes_are_masked_without_registration() -> None:
    out = _emit(
        "url ?uuid=1&token=0dc73dc3ff39b49a&x-nonce=TACC_XXXXxxxxYz356 body {'token': 'abcdef0123456789'} "
        "Authorization: Bearer 969d11396c43b0b810387e4da840cb37 mongodb://user:pa55word@host/db"
    )
    for secret in (
        "0dc73dc3ff39b49a",
        "TACC_XXXXxxxxYz356",
        "abcdef0123456789",
        "969d11396c43b0b810387e4da840cb37",
        "pa55word",
    ):
        assert secret not in out
    assert "uuid=1" in out and "mongodb://user:" in out


def test_secrets_added_later_are_masked() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    logs.add_secrets(["late-secret-value"])
    logs.get_logger("t").info("the late-secret-value")
    assert "late-secret-value" not in stream.getvalue()


def test_set_level_ignores_nonsense() -> None:
    logs.configure("INFO", stream=io.StringIO())
    logs.set_level("not-a-level")
    assert logging.getLogger(logs.LOGGER_NAME).level == logging.INFO
    logs.set_level("debug")
    assert logging.getLogger(logs.LOGGER_NAME).level == logging.DEBUG


def test_recent_secrets_are_bounded_for_long_running_servers() -> None:
    formatter = logs.RedactingFormatter(secrets=["fixed-secret-value"])
    formatter.add_secrets(f"token-number-{i:05d}" for i in range(formatter.MAX_RECENT + 10))
    oldest_kept, newest = f"token-number-{10:05d}", f"token-number-{formatter.MAX_RECENT + 9:05d}"
    text = formatter.redact(f"fixed-secret-value token-number-00000 token-number-00009 {oldest_kept} {newest}")
    assert "fixed-secret-value" not in text and oldest_kept not in text and newest not in text
    assert "token-number-00000" in text and "token-number-00009" in text  # evicted: the newest MAX_RECENT are kept
    assert formatter.MAX_RECENT >= 40, "at least as many as serve handles at once (its thread pool)"


def test_line_times_read_as_loggings_own() -> None:
    """The formatter remembers the seconds part of its time stamps; the text stays logging's, second by second."""
    ours, standard = logs.RedactingFormatter(), logging.Formatter("%(asctime)s %(message)s")
    for created in (1700000000.0004, 1700000000.9996, 1700000001.25, 1700000001.5, 1699999999.0, time.time()):
        record = logging.LogRecord("pipelinejobs.x", logging.INFO, "", 0, "event", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.formatTime(record) == standard.formatTime(record)
        assert ours.format(record).startswith(standard.formatTime(record) + " INFO pipelinejobs.x: event")
