"""``ManagedPipelineJob``: a drop-in for SD2E datacatalog's class of that name, as other actors use it.

Replace ``from datacatalog.managers.pipelinejobs import ManagedPipelineJob`` with
``from pipelinejobs.client import ManagedPipelineJob``. Jobs get the same UUIDs,
documents and tokens as the library's (datacatalog-compat.md §2-4), and two
transports (``pipelinejobs.transports``) carry the events:

- ``transport="database"`` (default, as the library): the events are applied in
  this process through the manager's one way in (``runtime.handle_body``) on the catalog's MongoDB (or any
  ``JobStore`` passed in), so the manager's validation, state machine and atomic
  conditional update are used, never a read-modify-replace.
- ``transport="message"``: every action is a message POSTed to the PipelineJobs
  Manager actor (``pipelinejobs.abaco.send_message``), authenticated by the
  pipeline's nonce, a bearer token or an ``X-Tapis-Token``; no database access.

This module builds the job's fields, its callback URL, Agave notifications and
Tapis subscriptions; the transports only carry its actions.

Where the library was wrong this client follows the project's decisions (compat
§3-4, §6-7): job tokens are enforced and ``_salt`` is never rotated, so the token
in a callback URL stays valid; setting up a job that exists reuses it with its
history (the library wiped it) and keeps the ``archive_path`` it was stored with;
callback URLs are URL-encoded and never hold ``//``; Agave's UPDATED status is an
``update``, not an invalid event name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from . import identifiers
from .errors import ErrorKind, PipelineJobsError
from .identifiers import default_archive_path
from .intake import Origin
from .logs import get_logger
from .settings import ENV_PREFIX, Settings, load_settings
from .store.base import JobStore
from .transports import DatabaseTransport, MessageTransport, Transport

log = get_logger("client")

DEFAULT_API_SERVER = "https://api.sd2e.org"
#: The environment variable naming the tenant's API server, as the library reads it (compat §7).
API_SERVER_ENV = "TACC_API_SERVER"
#: Overrides the public hashids salt of default archive paths, as in the library.
HASHIDS_SALT_ENV = "CATALOG_TYPEDUUID_HASHIDS_SALT"
#: Parent arguments in the order the library looked for them; the first one given becomes ``child_of``.
METADATA_ARGS = (
    ("experiment_design_id", "experiment_design"),
    ("experiment_id", "experiment"),
    ("sample_id", "sample"),
    ("measurement_id", "measurement"),
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_APP_ID = re.compile(r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*-\d+(\.\d+)*(u\d+)?$")
_NO_CONFIG = Path(__file__).with_name("client-reads-no-config.yml")  # absent on purpose: settings are arguments


def _client_settings(env: Mapping[str, str], mongodb: Mapping[str, Any] | None) -> Settings:
    """The library's way: the ``mongodb`` mapping given, the package defaults for the rest.

    ``_REACTOR_*`` variables are the calling reactor's own configuration, not the manager's, so they are
    left out (one of its keys must not stop the client as garbage in a setting of ours would); the identity
    (owner, tenant) and admin tokens still come from ``env``. Keys the manager does not know are ignored.
    """
    base = load_settings({name: value for name, value in env.items() if not name.startswith(ENV_PREFIX)}, _NO_CONFIG)
    known = base.section("mongodb")
    return base.override("mongodb", **{key: value for key, value in (mongodb or {}).items() if key in known})


class ManagedPipelineJobError(PipelineJobsError):
    """A job could not be set up, or the manager refused one of its events."""


@dataclass(frozen=True)
class PipelinesConfig:
    """The ``pipelines`` settings of an actor that runs jobs for a pipeline."""

    pipeline_uuid: str
    job_manager_id: str
    job_manager_nonce: str | None = None
    api_server: str = DEFAULT_API_SERVER
    api_version: str = "v2"  # "v3": the manager is reached at /v3/actors/{id}/messages

    @classmethod
    def from_mapping(cls, pipelines: Mapping[str, Any], env: Mapping[str, str] | None = None) -> PipelinesConfig:
        """``api_server``: the one named in ``pipelines``, else ``TACC_API_SERVER`` from ``env``, else the default."""
        missing = [key for key in ("pipeline_uuid", "job_manager_id") if not pipelines.get(key)]
        if missing:
            raise ManagedPipelineJobError(ErrorKind.CONFIGURATION, f"pipelines needs {', '.join(missing)}")
        api_server = pipelines.get("api_server") or (env or {}).get(API_SERVER_ENV) or DEFAULT_API_SERVER
        return cls(
            pipeline_uuid=str(pipelines["pipeline_uuid"]),
            job_manager_id=str(pipelines["job_manager_id"]).strip("/"),
            job_manager_nonce=pipelines.get("job_manager_nonce") or None,
            api_server=str(api_server).rstrip("/"),
            api_version=str(pipelines.get("api_version") or "v2"),
        )

    @property
    def messages_url(self) -> str:
        if self.api_version == "v3":
            return f"{self.api_server}/v3/actors/{self.job_manager_id}/messages"
        return f"{self.api_server}/actors/v2/{self.job_manager_id}/messages"


@dataclass(frozen=True)
class _Provenance(Origin):
    """An Origin whose agent and task URLs were named by the caller (the job's ``agent``/``task``)."""

    agent_url: str | None = None
    task_url: str | None = None

    @property
    def agent(self) -> str | None:
        return self.agent_url

    @property
    def task(self) -> str | None:
        return self.task_url


class ManagedPipelineJob:
    """A PipelineJob run by this actor: set it up, send it events, hand its callback to Agave/Tapis.

    ``mongodb`` is the settings dict (``authn``/``database`` or host/port/username/
    password/database/auth_source, compat §8; unused by the message transport) and
    ``pipelines`` a dict with ``pipeline_uuid``, ``job_manager_id``,
    ``job_manager_nonce`` and optional ``api_server`` (default https://api.sd2e.org)
    and ``api_version`` (``v3`` for /v3/actors). Parents are ``child_of`` (UUIDs) or
    the first given of ``experiment_design_id``, ``experiment_id``, ``sample_id``,
    ``measurement_id`` (an id or UUID, or a list of them; ids become typed UUIDs);
    parents are deduplicated and sorted, so their order never changes the job.
    ``env`` (default ``os.environ``) gives ``_abaco_actor_id``/``_abaco_execution_id``
    for ``agent``/``task``, ``TACC_API_SERVER`` (when ``pipelines`` names no
    ``api_server``), the ``_admin`` owner and the provenance of messages. The default
    ``session`` is an ``adjective-animal`` name and the default ``archive_path`` the
    library's hashids path (compat §7a).

    Differences from the library, on purpose: event methods return the manager's
    outcome (``status``, ``uuid``, ``state``, ``event``...) and ``job`` holds the
    set-up outcome, rather than the whole document; ``fail()`` before ``run()``
    records FAILED instead of deleting the job; ``index()`` only records the event
    (file indexing is not this project's job);
    ``archive_patterns``/``product_patterns`` are not stored. With the message
    transport the job's ``agent``/``task`` are the manager's own execution.
    """

    def __init__(
        self,
        mongodb: Mapping[str, Any] | None = None,
        pipelines: Mapping[str, Any] | None = None,
        instanced: bool = False,
        agave: Any = None,  # accepted for compatibility; no Agave client is needed
        *,
        data: Mapping[str, Any] | None = None,
        session: str | None = None,
        archive_path: str | None = None,
        archive_system: str | None = None,
        agent: str | None = None,
        task: str | None = None,
        experiment_design_id: str | list[str] | None = None,
        experiment_id: str | list[str] | None = None,
        sample_id: str | list[str] | None = None,
        measurement_id: str | list[str] | None = None,
        child_of: str | list[str] | None = None,
        pipeline_uuid: str | None = None,
        transport: str = "database",
        store: JobStore | None = None,
        env: Mapping[str, str] | None = None,
        bearer: str | None = None,
        tapis_token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        synchronous: bool = True,
        http_client: Any = None,
        clock: Callable[[], datetime] | None = None,
        job_token: str | None = None,
        **ignored: Any,  # the library's other options (archive_patterns, inputs, level_store, ...)
    ) -> None:
        self.env: Mapping[str, str] = os.environ if env is None else env
        overrides = {"pipeline_uuid": pipeline_uuid} if pipeline_uuid else {}
        self.config = PipelinesConfig.from_mapping({**dict(pipelines or {}), **overrides}, self.env)
        self.api_server = self.config.api_server
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._settings = _client_settings(self.env, mongodb)
        domain = self._settings.identity.dns_domain
        self.pipeline_uuid = self.config.pipeline_uuid
        self.data: dict[str, Any] = _json_copy(data or {})
        self.session = session or identifiers.session_name()
        parents = {
            "experiment_design_id": experiment_design_id,
            "experiment_id": experiment_id,
            "sample_id": sample_id,
            "measurement_id": measurement_id,
        }
        self.child_of = _unique_sorted(child_of) if child_of is not None else _parents(parents, domain)
        self.generated_by: list[str] = [self.pipeline_uuid]
        self.acted_on: list[str] = []
        self.acted_using: list[str] = []
        self.archive_system = archive_system
        self.archive_path = archive_path or default_archive_path(
            self.pipeline_uuid,
            self.child_of,
            self.data,
            self.session if instanced else None,
            self._clock(),
            domain,
            self.env.get(HASHIDS_SALT_ENV) or identifiers.TYPEDUUID_HASHIDS_SALT,
        )
        self.agent = _canonical_agent(agent or self.env.get("_abaco_actor_id"), self.api_server)
        self.task = _canonical_task(task or self.env.get("_abaco_execution_id"), self.agent, self.api_server)
        self.uuid: str | None = None
        self.token: str | None = None
        #: the token of a job set up earlier: over messages, reusing a job that exists needs it
        self._job_token = job_token
        self.callback: str | None = None
        self.state: str | None = None
        self.job: dict[str, Any] | None = None
        if ignored:
            log.debug("ignored options: %s", ", ".join(sorted(ignored)))
        self._transport: Transport
        if transport == "database":
            with _as_client_error():
                self._transport = (
                    DatabaseTransport.open(self._settings, self._clock)
                    if store is None
                    else DatabaseTransport(store, self._settings, self._clock)
                )
        elif transport == "message":
            self._transport = MessageTransport(
                self.config.messages_url,
                synchronous=synchronous,
                env=self.env,
                nonce=self.config.job_manager_nonce,
                bearer=bearer,
                tapis_token=tapis_token,
                timeout=timeout,
                retries=retries,
                client=http_client,
            )
        else:
            raise ManagedPipelineJobError(ErrorKind.CONFIGURATION, "transport must be 'database' or 'message'")

    # -- set-up ------------------------------------------------------------------------------
    def setup(self, data: Mapping[str, Any] | None = None) -> ManagedPipelineJob:
        """Create the job, or reuse it when its UUID exists; sets ``uuid``, ``token``, ``callback``.

        ``data`` is merged over the constructor's (it is part of the job's identity). A
        job that exists keeps the ``archive_path`` it was stored with, and so does this
        object, so products land where the job's record says they are.
        """
        if data:
            self.data = _merge(self.data, _json_copy(data))
        body: dict[str, Any] = {
            "pipeline_uuid": self.pipeline_uuid,
            "archive_path": self.archive_path,
            "data": self.data,
            "session": self.session,
            "child_of": self.child_of,
        }
        if self.archive_system:
            body["archive_system"] = self.archive_system
        if self._job_token:
            body["token"] = self._job_token
        origin = _Provenance(api_server=self.api_server, agent_url=self.agent, task_url=self.task)
        with _as_client_error():
            outcome = self._transport.create(body, origin)
        domain = self._settings.identity.dns_domain
        expected = identifiers.job_uuid(self.pipeline_uuid, self.child_of, self.data, domain)
        if outcome["uuid"] != expected:
            log.warning("the manager derived job uuid %s, not %s (CATALOG_DNS_DOMAIN?)", outcome["uuid"], expected)
        self.uuid, self.token, self.state, self.job = outcome["uuid"], outcome["token"], outcome.get("state"), outcome
        if isinstance(outcome.get("archive_path"), str) and outcome["archive_path"] != self.archive_path:
            log.info("job %s exists; using its stored archive_path", self.uuid)
            self.archive_path = outcome["archive_path"]
        self.callback = self.build_webhook()
        return self

    def build_webhook(self) -> str:
        """The callback URL: events POSTed to it reach the manager (URL-encoded, no ``//``)."""
        self._require_setup()
        query: list[tuple[str, str | None]] = []
        if self.config.job_manager_nonce:
            query.append(("x-nonce", self.config.job_manager_nonce))
        query += [("token", self.token), ("uuid", self.uuid), ("session", self.session)]
        return f"{self.config.messages_url}?{urlencode(query)}"

    def agave_notifications(self) -> list[dict[str, Any]]:
        """Agave v2 job ``notifications``, as the library set them (the status macro stays unencoded).

        FINISHED, not ARCHIVING_FINISHED: Agave sends FINISHED after archiving and also
        for a job with ``archive: false``, which never archives.
        """
        hook = self.build_webhook()
        return [
            {"event": "RUNNING", "persistent": True, "url": hook + "&status=${JOB_STATUS}"},
            {"event": "FINISHED", "persistent": False, "url": hook + "&status=FINISHED"},
            {"event": "FAILED", "persistent": False, "url": hook + "&status=${JOB_STATUS}"},
        ]

    def tapis_subscriptions(self, ttl_minutes: int = 10080) -> list[dict[str, Any]]:
        """Tapis v3 job ``subscriptions``: every status change is POSTed to the callback URL."""
        return [
            {
                "description": f"PipelineJob {self.uuid} status callbacks",
                "enabled": True,
                "eventCategoryFilter": "JOB_NEW_STATUS",
                "ttlMinutes": ttl_minutes,
                "deliveryTargets": [{"deliveryMethod": "WEBHOOK", "deliveryAddress": self.build_webhook()}],
            }
        ]

    # -- events ------------------------------------------------------------------------------
    def handle(
        self, event_name: str, data: Mapping[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """Send one event; ``token`` (e.g. an admin token) overrides the job's own."""
        if self.uuid is None:
            self.setup()
        body: dict[str, Any] = {"uuid": self.uuid, "name": event_name.lower(), "token": token or self.token}
        if data is not None:
            body["data"] = _json_copy(data)
        with _as_client_error():
            outcome = self._transport.event(body)
        if outcome.get("state"):
            self.state = outcome["state"]
        return outcome

    def run(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """CREATED or RUNNING -> RUNNING."""
        return self.handle("run", data, token)

    def update(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """Attach data to the history; the state stays (Agave's UPDATED status maps here too)."""
        return self.handle("update", data, token)

    def resource(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """Record a resource event (staging, queueing ...); the state stays."""
        return self.handle("resource", data, token)

    def finish(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """RUNNING -> FINISHED."""
        return self.handle("finish", data, token)

    def fail(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """-> FAILED. The library deleted a job that had not run yet; here it keeps its history."""
        return self.handle("fail", data, token)

    def index(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """FINISHED -> INDEXING (records the event only; files are not indexed here)."""
        return self.handle("index", data, token)

    def indexed(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """INDEXING -> FINISHED."""
        return self.handle("indexed", data, token)

    def validate(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """FINISHED -> VALIDATING."""
        return self.handle("validate", data, token)

    def validated(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """VALIDATING -> VALIDATED."""
        return self.handle("validated", data, token)

    def reject(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """VALIDATING -> REJECTED."""
        return self.handle("reject", data, token)

    def finalize(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """VALIDATED -> FINALIZED."""
        return self.handle("finalize", data, token)

    def retire(self, data: Mapping[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
        """A finished, failed, rejected or finalized job -> RETIRED."""
        return self.handle("retire", data, token)

    # -- housekeeping ------------------------------------------------------------------------
    @property
    def transport(self) -> str:
        return self._transport.name

    def close(self) -> None:
        """Close the database connection this object opened (none for the message transport)."""
        self._transport.close()

    def __enter__(self) -> ManagedPipelineJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"ManagedPipelineJob(uuid={self.uuid!r}, pipeline={self.pipeline_uuid!r}, state={self.state!r})"

    def _require_setup(self) -> None:
        if self.uuid is None or self.token is None:
            raise ManagedPipelineJobError(ErrorKind.CONFIGURATION, "call setup() first: the job has no uuid yet")


# -- helpers ---------------------------------------------------------------------------------
def typed_uuids(values: str | list[str], uuid_type: str, domain: str = identifiers.DEFAULT_DNS_DOMAIN) -> list[str]:
    """Ids become ``catalog_uuid(id, type)``; UUIDs are kept and must carry the type's prefix.

    The result is deduplicated and sorted, as the library's ``self_from_ids``: the same
    parents in any order are the same job.
    """
    result: list[str] = []
    for value in [values] if isinstance(values, str) else list(values):
        text = str(value).strip()
        if _UUID.match(text.lower()):
            if not text.lower().startswith(identifiers.TYPE_PREFIXES[uuid_type]):
                raise ManagedPipelineJobError(
                    ErrorKind.BAD_MESSAGE, f"a {uuid_type} UUID must start with its type prefix"
                )
            text = text.lower()
        else:
            text = identifiers.catalog_uuid(text, uuid_type, domain)
        result.append(text)
    return _unique_sorted(result)


def _unique_sorted(uuids: str | list[str]) -> list[str]:
    return sorted({str(u).strip().lower() for u in ([uuids] if isinstance(uuids, str) else uuids)})


def _parents(arguments: Mapping[str, Any], domain: str) -> list[str]:
    for name, uuid_type in METADATA_ARGS:
        if arguments.get(name):
            return typed_uuids(arguments[name], uuid_type, domain)
    return []


def _canonical_agent(agent: str | None, api_server: str) -> str | None:
    if not agent or "://" in agent:
        return agent or None
    return f"{api_server}/{'apps' if _APP_ID.match(agent) else 'actors'}/v2/{agent}"


def _canonical_task(task: str | None, agent: str | None, api_server: str) -> str | None:
    if not task or "://" in task:
        return task or None
    if task.endswith("-007"):  # an Agave job id
        return f"{api_server}/jobs/v2/{task}"
    return f"{agent}/executions/{task}" if agent else task


@contextlib.contextmanager
def _as_client_error() -> Iterator[None]:
    """Every refusal reaches the actor as a ManagedPipelineJobError, with its kind and safe details."""
    try:
        yield
    except ManagedPipelineJobError:
        raise
    except PipelineJobsError as exc:
        raise ManagedPipelineJobError(exc.kind, exc.message, **exc.details) from exc


def _json_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy in plain JSON types (tuples become lists), as the job's data is stored and sent."""
    return json.loads(json.dumps(dict(data)))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = _merge(merged[key], value) if both_dicts else value
    return merged
