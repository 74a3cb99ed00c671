"""The job counts' counter document: its id, and states and pipelines as its field names and back as labels."""

from __future__ import annotations

import re
from typing import Any

# -- job counts -----------------------------------------------------------------------------
_COUNTS_ID = "visible"
RECOUNT_SETTLE_SECONDS = 3.0  # between a recount's count and its compare-and-set (see recount_jobs)
_COUNTED = {"_id": False, "state": True, "pipeline_uuid": True, "_visible": True}  # what moves a job's count
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _count_key(value: Any) -> str:
    """A state or pipeline as a field name of the counter document: plain names as they are, anything that
    could be read as a path or an operator (``.``, ``$``) hex-encoded behind ``~``; null is ``~``."""
    if value is None:
        return "~"
    text = str(value)
    return text if _PLAIN_KEY.fullmatch(text) else "~" + text.encode().hex()


def _label_key(label: str) -> str:
    """A /metrics label back as a field name (``job_totals`` labels a null state or pipeline "None")."""
    return "~" if label == "None" else _count_key(label)


def _count_label(key: str) -> str:
    if key == "~":
        return "None"
    if key.startswith("~"):
        try:
            return bytes.fromhex(key[1:]).decode()
        except ValueError:
            return key
    return key


def _decode_counts(counts: Any) -> dict[tuple[str, str], int]:
    if not isinstance(counts, dict):
        return {}
    return {
        (_count_label(state), _count_label(pipeline)): int(n)
        for state, by_pipeline in counts.items()
        if isinstance(by_pipeline, dict)
        for pipeline, n in by_pipeline.items()
        if isinstance(n, int | float)
    }
