"""How ``ManagedPipelineJob``'s actions reach the PipelineJobs Manager: in this process, or as messages.

Both transports take the bodies the manager's schemas accept (a PipelineJobAction to
create a job, a PipelineJobEvent for an event) and answer with the manager's
outcome (``status``, ``uuid``, ``state``, ``token`` on create ...). A refusal is a
``PipelineJobsError`` carrying its kind and safe details; ``pipelinejobs.client``
re-raises it as a ``ManagedPipelineJobError``.

- ``DatabaseTransport`` applies each action here through ``pipelinejobs.service`` on
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

from . import identifiers, service
from .abaco import send_message
from .errors import ErrorKind, PipelineJobsError
from .intake import Intake, Origin
from .logs import get_logger
from .messages import CreateMessage, Message, classify
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
        """``service.create_job``, except that a job whose UUID exists is answered from what is stored.

        The existing job is reused as it is, history and ``_salt`` included (the library
        wiped it), before the pipeline is looked up or a new document is drawn.
        """
        message = _classify(body)
        if not isinstance(message, CreateMessage):
            raise PipelineJobsError(ErrorKind.INTERNAL, "the job's fields did not make a create message")
        domain = self.settings.identity.dns_domain
        uuid = identifiers.job_uuid(message.pipeline_uuid, list(message.child_of), message.data, domain)
        existing = self.store.find_job(uuid)
        if existing is not None:
            token = identifiers.job_token(str(existing.get("_salt")), uuid, existing.get("_admin") or {})
            answer = {"status": "ok", "created": False, "uuid": uuid, "state": existing.get("state"), "token": token}
            return {**answer, "archive_path": existing.get("archive_path")}  # the client keeps the stored path
        return service.create_job(message, store=self.store, settings=self.settings, now=self.clock(), origin=origin)

    def event(self, body: dict[str, Any]) -> dict[str, Any]:
        return service.handle(_classify(body), store=self.store, settings=self.settings, now=self.clock())

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
        if not (isinstance(answer.get("uuid"), str) and isinstance(answer.get("token"), str)):
            raise PipelineJobsError(ErrorKind.INTERNAL, "the job manager's answer holds no job uuid and token")
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


def _classify(body: dict[str, Any]) -> Message:
    return classify(Intake(body=body, content_type="application/json"))
