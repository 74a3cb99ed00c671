"""`pipelinejobs pipeline register|list|show`: the pipelines jobs are created for."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..errors import ErrorKind, PipelineJobsError
from .common import emit, open_store, read_json, settings_of


def cmd_pipeline_register(args: argparse.Namespace) -> int:
    from .. import documents, identifiers

    doc = read_json("@" + args.file, "the pipeline file")
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("components"), list):
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "a pipeline file is a JSON object with 'id' and 'components'")
    if not all(isinstance(c, dict) for c in doc["components"]):
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "every pipeline component must be a JSON object")
    settings = settings_of(args)
    uuid = (
        args.uuid
        or doc.get("uuid")
        or identifiers.pipeline_uuid(doc["id"], doc["components"], settings.identity.dns_domain)
    )
    now = documents.utc_seconds(datetime.now(timezone.utc))
    pipeline = {
        "id": doc["id"],
        "uuid": uuid,
        "name": doc.get("name") or doc["id"],
        "description": doc.get("description") or "",
        "components": doc["components"],
        "_admin": documents.admin_block(settings.identity),
        "_properties": {"created_date": now, "modified_date": now, "revision": 0, "source": documents.RECORD_SOURCE},
    }
    with open_store(settings) as store:
        stored, created = store.save_pipeline(pipeline)
    same = (
        stored.get("uuid") == uuid and stored.get("id") == doc["id"] and stored.get("components") == doc["components"]
    )
    if not created and not same:
        raise PipelineJobsError(
            ErrorKind.CONFLICT,
            f"pipeline {stored.get('id')} is already registered as {stored.get('uuid')} with other components "
            f"(see `pipelinejobs pipeline show {stored.get('uuid')}`); nothing was changed: "
            "give the new pipeline its own id (e.g. a new version) to register it",
        )
    verb = "registered" if created else "already registered:"
    emit(args, {"created": created, "pipeline": stored}, f"{verb} pipeline {stored['id']} as {stored['uuid']}")
    return 0


def cmd_pipeline_list(args: argparse.Namespace) -> int:
    with open_store(settings_of(args)) as store:
        pipelines = store.list_pipelines()
    rows = [f"{'UUID':<36}  {'COMPONENTS':>10}  ID"]
    rows += [f"{p.get('uuid'):<36}  {len(p.get('components') or []):>10}  {p.get('id')}" for p in pipelines]
    emit(args, pipelines, "\n".join(rows) if pipelines else "no pipelines registered")
    return 0


def cmd_pipeline_show(args: argparse.Namespace) -> int:
    """A pipeline by uuid, or by its id (e.g. tacc/tacobot:9000)."""
    with open_store(settings_of(args)) as store:
        found = store.find_pipeline(args.pipeline)
        if found is None:
            found = next((p for p in store.list_pipelines() if p.get("id") == args.pipeline), None)
        where = store.describe()
    if found is None:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no pipeline with uuid or id {args.pipeline} in the {where}")
    human = "\n".join(
        [
            f"pipeline {found.get('id')}  uuid {found.get('uuid')}",
            f"  name        {found.get('name')}",
            f"  description {found.get('description') or '-'}",
            "  components:",
            *(f"    {json.dumps(c, sort_keys=True, default=str)}" for c in found.get("components") or []),
        ]
    )
    emit(args, found, human)
    return 0


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    pipeline = commands.add_parser("pipeline", help="register pipelines").add_subparsers(metavar="ACTION")
    sub = leaf(pipeline, "register", cmd_pipeline_register, "register a pipeline from a JSON file (id, components)")
    sub.add_argument("file", help="JSON file with id, components, optional name/description/uuid")
    sub.add_argument("--uuid", help="use this uuid instead of the one computed from id and components")
    leaf(pipeline, "list", cmd_pipeline_list, "list the registered pipelines")
    sub = leaf(pipeline, "show", cmd_pipeline_show, "show a pipeline and its components")
    sub.add_argument("pipeline", help="the pipeline's uuid or id")
