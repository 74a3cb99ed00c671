"""What Abaco hands the container: the message and its context, read from an env mapping.

Abaco passes a JSON message as the *Python repr* of the parsed object, plain
text as is, and every URL query parameter as an environment variable of the
same name (abaco-runtime.md §1). Parsing follows the reactors SDK: try
``ast.literal_eval`` (kept if it gives a dict), then ``json.loads``, then text.
Whatever is parsed is normalised to plain JSON types once, here.

`pipelinejobs serve` has already parsed a JSON object body, and hands it over
(``parsed=``) instead of having its repr parsed back: same result, one parse,
and no ``ast`` in its worker threads. Other values still go through MSG.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorKind, PipelineJobsError
from .limits import MAX_DEPTH, nesting_depth

#: URL parameters the manager reads (``event`` is the older name of ``name``).
MESSAGE_PARAMS = ("uuid", "token", "name", "event", "status", "session", "event_id")


@dataclass(frozen=True)
class Origin:
    """Where a message came from, for the job's ``agent``/``task`` fields and the logs."""

    api_server: str | None = None
    actor_id: str | None = None
    execution_id: str | None = None
    username: str | None = None

    @property
    def agent(self) -> str | None:
        if self.api_server and self.actor_id:
            return f"{self.api_server.rstrip('/')}/actors/v2/{self.actor_id}"
        return None

    @property
    def task(self) -> str | None:
        if self.agent and self.execution_id:
            return f"{self.agent}/executions/{self.execution_id}"
        return None


#: Where a message arrives unless a serve route of an engine says otherwise (``adapters``).
MESSAGES = "messages"


@dataclass(frozen=True)
class Intake:
    """A message as received: the parsed body, its content type and the URL parameters.

    ``channel`` is where it arrived: ``messages`` (Abaco's messages route, reactor.py, the CLI,
    the client), or the name of a serve route that only one intake format uses (``snakemake``).
    """

    body: Any
    content_type: str
    params: dict[str, str] = field(default_factory=dict)
    origin: Origin = field(default_factory=Origin)
    channel: str = MESSAGES


#: CPython 3.11's AST constructor is not thread-safe (gh-106905: "AST constructor recursion depth
#: mismatch" under concurrency), and serve parses text messages in worker threads.
_AST_LOCK = threading.Lock()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def to_plain_json(value: Any) -> Any:
    """Round-trip through JSON: tuples become lists; sets, bytes, NaN (and absurd nesting) are refused."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, "the message holds values that are not JSON (e.g. sets, bytes, NaN)"
        ) from exc


def parse_message(raw: str | None, content_type: str, max_bytes: int, *, parsed: dict[str, Any] | None = None) -> Any:
    """Parse MSG the way the reactors SDK does, within a size limit.

    ``parsed`` is the JSON object whose repr ``raw`` is (serve's case): it is what
    ``ast.literal_eval(raw)`` would give, so it is taken instead, after the same size check.
    """
    if raw is None:
        if content_type == "application/octet-stream":
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "binary messages are not accepted; send JSON")
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "no message was received (MSG is not set)")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            f"the message is {size} bytes; the limit is {max_bytes}",
            size=size,
            limit=max_bytes,
        )
    if parsed is not None:
        return to_plain_json(parsed)
    text = raw.strip()
    if not text:
        return None
    # JSON first: a Python repr with True/None/single quotes/\x escapes is never valid JSON, and where both
    # read a text, JSON's reading is the right one (it joins surrogate pairs, as a repr never needs);
    # so the SDK's literal_eval-then-JSON order gives the same dicts, and `ast` is loaded only for reprs.
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        pass
    import ast  # only Abaco's repr of a JSON message needs it
    import warnings

    try:
        # a text with an invalid escape (``'\&'``) would print a SyntaxWarning quoting it to stderr: the log
        with _AST_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
        if isinstance(value, dict):
            return to_plain_json(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if nesting_depth(text) > MAX_DEPTH:  # e.g. Abaco's repr of a deep message, beyond literal_eval
        why = f"the message nests objects and arrays deeper than the limit of {MAX_DEPTH} levels"
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, why)
    return raw  # plain text; classification will say why it fits no schema


def from_body(body: Any, max_bytes: int, *, origin: Origin | None = None) -> Intake:
    """A message given as a parsed JSON value (the CLI, the client's database transport), within the
    same size limit as one received: its size is that of its JSON text."""
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, "the message holds values that are not JSON (e.g. sets, bytes, NaN)"
        ) from exc
    return Intake(
        body=parse_message(text, "application/json", max_bytes, parsed=body),
        content_type="application/json",
        origin=origin or Origin(),
    )


def from_env(env: Mapping[str, str], max_bytes: int, *, parsed: dict[str, Any] | None = None) -> Intake:
    """Read the message and its context from the environment Abaco sets.

    ``parsed``: the message as an already parsed JSON object, whose repr is MSG (see ``parse_message``).
    """
    content_type = env.get("_abaco_Content_Type") or env.get("_abaco_Content-Type") or "str"
    body = parse_message(env.get("MSG"), content_type, max_bytes, parsed=parsed)
    params = {name: env[name] for name in MESSAGE_PARAMS if env.get(name)}
    origin = Origin(
        api_server=env.get("_abaco_api_server") or None,
        actor_id=env.get("_abaco_actor_id") or None,
        execution_id=env.get("_abaco_execution_id") or None,
        username=env.get("_abaco_username") or None,
    )
    return Intake(body=body, content_type=content_type, params=params, origin=origin)
