"""How ``ManagedPipelineJob``'s actions reach the PipelineJobs Manager: in this process, or as messages.

Both transports take the bodies the manager's schemas accept (a PipelineJobAction to
create a job, a PipelineJobEvent for an event) and answer with the manager's
outcome (``status``, ``uuid``, ``state``, ``token`` on create ...). A refusal is a
``PipelineJobsError`` carrying its kind and safe details; ``pipelinejobs.client``
re-raises it as a ``ManagedPipelineJobError``.

- ``DatabaseTransport`` applies each action here through the manager's one way in
  (``runtime.handle_body``, as the CLI and serve do) on
  a ``JobStore`` (the catalog's MongoDB by default), so the manager's validation,
  state machine and atomic conditional update are used, never a read-modify-replace.
- ``MessageTransport`` POSTs each action to the manager actor with
  ``pipelinejobs.abaco.send_message``; it never touches a database.

Neither driver is imported here: pymongo is loaded when a store is opened, httpx
when a message is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from .abaco import send_message
from .errors import ErrorKind, PipelineJobsError
from .intake import Origin
from .logs import get_logger
from .runtime import handle_body
from .settings import Settings
from .store.base import JobStore

log = get_logger("client.transports")


class Transport(Protocol):
    """What ``ManagedPipelineJob`` needs of a transport."""

    name: str

    def create(self, body: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Create the job, or answer for the one that exists; the outcome holds ``uuid`` and ``token``."""

    def event(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one event to the job."""

    def close(self) -> None:
        """Release what the transport opened itself."""


class DatabaseTransport:
    """Applies actions in this process, through the manager's own business path."""

    name = "database"

    def __init__(
        self, store: JobStore, settings: Settings, clock: Callable[[], datetime], *, owns_store: bool = False
    ) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self._owned: JobStore | None = store if owns_store else None

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], datetime]) -> DatabaseTransport:
        """A transport on the catalog named by ``settings``' ``mongodb`` section; ``close()`` closes it."""
        return cls(open_catalog_store(settings), settings, clock, owns_store=True)

    def create(self, body: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """The create, through the manager's one way in; a job whose UUID exists is answered from what is
        stored (history, ``_salt`` and ``archive_path`` kept; the library wiped them) with its token:
        a holder of the catalog's database credentials may compute it anyway."""
        return self._handle(body, origin)

    def event(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._handle(body, Origin())

    def _handle(self, body: dict[str, Any], origin: Origin) -> dict[str, Any]:
        return handle_body(
            body, settings=self.settings, store=self.store, now=self.clock(), operator=True, origin=origin
        )

    def close(self) -> None:
        """Close the store this transport opened (a store passed in is left to its owner)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None


class MessageTransport:
    """Sends every action to the PipelineJobs Manager actor as an Abaco message."""

    name = "message"

    def __init__(self, url: str, *, synchronous: bool, env: Mapping[str, str], **send_options: Any) -> None:
        self.url, self.synchronous, self.env, self.send_options = url, synchronous, env, send_options

    def create(self, body: dict[str, Any], origin: Origin) -> dict[str, Any]:
        answer = self._send(body, True)  # the token exists only in the manager's answer
        if not isinstance(answer.get("uuid"), str):
            raise PipelineJobsError(ErrorKind.INTERNAL, "the job manager's answer holds no job uuid")
        if not isinstance(answer.get("token"), str):  # the job existed: its token goes to its creator only
            raise PipelineJobsError(
                ErrorKind.UNAUTHORIZED,
                f"job {answer['uuid']} exists; the manager answers its token only to a create that shows it:"
                " pass the token you were given when it was created (ManagedPipelineJob(..., job_token=...))",
                uuid=answer["uuid"],
            )
        return answer

    def event(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._send(body, self.synchronous)

    def close(self) -> None:
        """Nothing to close: each message uses its own HTTP client, or the one passed in."""

    def _send(self, body: dict[str, Any], synchronous: bool) -> dict[str, Any]:
        answer = send_message(self.url, body, synchronous=synchronous, env=self.env, **self.send_options)
        if synchronous and answer.get("status") == "error":
            raise PipelineJobsError(
                ErrorKind.from_value(answer.get("kind")) or ErrorKind.INTERNAL,
                f"the job manager refused the message: {answer.get('message', 'no reason given')}",
                **{k: v for k, v in (answer.get("details") or {}).items() if k not in ("kind", "message")},
            )
        return answer


def open_catalog_store(settings: Settings) -> JobStore:
    """The catalog's MongoDB named by ``settings``' ``mongodb`` section.

    Unlike the manager's own store there is no embedded fallback: an actor's jobs belong
    in the shared catalog. Its indexes come from `pipelinejobs db init`, run once.
    """
    from .store.factory import open_job_store

    return open_job_store(settings, embedded=False)
