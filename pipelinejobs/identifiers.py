"""Typed UUIDs, hashids, session names, salts and tokens, derived exactly as SD2E python-datacatalog does.

Other actors still create jobs with datacatalog's ManagedPipelineJob and write
straight into MongoDB, so every recipe here must give the same bytes as the
library (see docs: datacatalog-compat.md §2-3, §7a). The test vectors live in
tests/test_identifiers.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

TYPE_PREFIXES: dict[str, str] = {
    "generic": "100",
    "experiment": "102",
    "sample": "103",
    "measurement": "104",
    "file": "105",
    "pipeline": "106",
    "pipelinejob": "107",
    "pipelinejob_event": "108",
    "reference": "109",
    "experiment_design": "114",
}

DEFAULT_DNS_DOMAIN = "sd2e.org"
#: The library's public salt for turning typed UUIDs into short path names (env CATALOG_TYPEDUUID_HASHIDS_SALT).
TYPEDUUID_HASHIDS_SALT = "xCPJ7PKTdp8BYYb4twh9xNYD"
#: Session names are ``adjective-animal`` with words of at most this many letters, as the library's.
SESSION_WORD_LETTERS = 8


def namespace(domain: str = DEFAULT_DNS_DOMAIN) -> uuid.UUID:
    """The UUID namespace of a catalog; ``sd2e.org`` unless CATALOG_DNS_DOMAIN says otherwise."""
    return uuid.uuid3(uuid.NAMESPACE_DNS, domain)


def catalog_uuid(text: str, uuid_type: str = "generic", domain: str = DEFAULT_DNS_DOMAIN) -> str:
    """uuid5 of ``text`` whose first three hex digits are replaced by the type prefix."""
    raw = uuid.uuid5(namespace(domain), text).hex
    return str(uuid.UUID(TYPE_PREFIXES[uuid_type] + raw[3:]))


def archive_hashid(text: str, domain: str = DEFAULT_DNS_DOMAIN, salt: str = TYPEDUUID_HASHIDS_SALT) -> str:
    """The hashid of ``catalog_uuid(text, 'generic')``: one directory name of a default ``archive_path``.

    Hashids (default alphabet and length) encodes the UUID's 128-bit integer, so the
    name is shorter than the UUID yet the same wherever the library computed it.
    """
    from hashids import Hashids  # new jobs' archive paths only: a reactor.py event does not pay its import

    return Hashids(salt=salt).encode(uuid.UUID(catalog_uuid(text, "generic", domain)).int)


def session_name(seed: str | None = None) -> str:
    """An ``adjective-animal`` name from petname's words, as the library and the reactors SDK name sessions.

    With a ``seed`` (e.g. an Abaco execution id) the name is always the same for it, so
    every message one execution sends carries one session.
    """
    import petname  # its word lists: about 1 ms to import, for new jobs and the client only

    chooser = random.Random(seed) if seed is not None else random.SystemRandom()
    adjectives = [w for w in petname.adjectives if len(w) <= SESSION_WORD_LETTERS]
    animals = [w for w in petname.names if len(w) <= SESSION_WORD_LETTERS]
    return f"{chooser.choice(adjectives)}-{chooser.choice(animals)}"


def random_uuid(uuid_type: str) -> str:
    """A random UUID carrying a type prefix (history events use ``pipelinejob_event``)."""
    return str(uuid.UUID(TYPE_PREFIXES[uuid_type] + uuid.uuid4().hex[3:]))


def _identity_string(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def job_uuid(pipeline_uuid: str, child_of: list[str], data: Any, domain: str = DEFAULT_DNS_DOMAIN) -> str:
    """The PipelineJob UUID for a pipeline, its parents and its run-time data."""
    parts = sorted(_identity_string(v) for v in (pipeline_uuid, child_of, data))
    return catalog_uuid(":".join(parts), "pipelinejob", domain)


_COMPONENT_CLASSES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    # (keys a component needs to be of this class, keys kept of it)
    (("id", "inputs", "parameters"), ("id", "modules", "inputs", "outputs", "parameters", "uuid")),
    (("id", "image"), ("id", "image", "options", "uuid")),
    (("appId", "id"), ("appId", "id", "uuid")),
    (("image", "hostname"), ("image", "hostname", "hash", "options", "uuid")),
    (("uri",), ("uri", "identifier", "options", "uuid")),
)


def _reduce_component(component: Mapping[str, Any]) -> dict[str, Any] | None:
    for needs, keeps in _COMPONENT_CLASSES:
        if all(key in component for key in needs):
            return {key: component[key] for key in keeps if key in component}
    return None


def pipeline_uuid(pipeline_id: str, components: Iterable[Mapping[str, Any]], domain: str = DEFAULT_DNS_DOMAIN) -> str:
    """The Pipeline UUID from its id and its components (agave apps, actors, ...)."""
    reduced = [r for r in (_reduce_component(c) for c in components) if r is not None]
    components_json = json.dumps(reduced, sort_keys=True, separators=(",", ":"))
    return catalog_uuid(pipeline_id + ":" + components_json, "pipeline", domain)


def new_salt() -> str:
    """A fresh 24-character salt, stored in the job's ``_salt``."""
    return base64.b64encode(os.urandom(16)).decode().lower()


def job_token(salt: str, uuid_str: str, admin: Mapping[str, Any]) -> str:
    """The job's 16-hex-digit token, derived from its salt, uuid and ``_admin`` block.

    ``repr`` of a plain dict keeps the stored key order, as the library's did.
    """
    material = salt + ":" + repr([uuid_str, dict(admin)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def admin_token(secret: str, key: str, lifetime: int, now_epoch: float) -> str:
    """The admin token of the time window containing ``now_epoch``."""
    window = int(now_epoch) // lifetime
    material = ":".join([secret, key, *str(window)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def default_archive_path(
    pipeline_uuid: str,
    child_of: list[str],
    data: Mapping[str, Any],
    session: str | None = None,
    now: datetime | None = None,
    domain: str = DEFAULT_DNS_DOMAIN,
    salt: str = TYPEDUUID_HASHIDS_SALT,
) -> str:
    """``/products/v2/<pipeline>/<H(parents)>/<H(data)>`` [+ ``/<session>-<UTC time>Z`` when instanced].

    The library's recipe (compat §7a), so a job gets the directory the library would
    give it: H is ``archive_hashid``, parents are joined with ``:``, data is
    minified sort_keys JSON, and every ``-`` is dropped from the path. A session shorter
    than 4 characters is replaced by a fresh adjective-animal name, as the library did; an
    instanced path needs ``now``.
    """
    params = json.dumps(data, sort_keys=True, separators=(",", ":"))
    hashed = [archive_hashid(text, domain, salt) for text in (":".join(child_of), params)]
    path = "/products/v2/" + "/".join([pipeline_uuid, *hashed]).replace("-", "")
    if session is None:
        return path
    if now is None:
        raise ValueError("an instanced archive path (with a session) needs the time")
    name = session if len(session) >= 4 else session_name()
    separator = "" if name.endswith("-") else "-"
    return f"{path}/{name}{separator}{now.astimezone(timezone.utc):%Y%m%dT%H%M%S}Z"
