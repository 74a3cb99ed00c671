"""`pipelinejobs job create|show|list|history|event|delete|audit`: jobs, as people and scripts see them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..errors import ErrorKind, PipelineJobsError
from ..settings import Settings
from ..store.base import JobStore
from .common import emit, handle, open_store, read_json, settings_of, short, state_name, when
from .notify import deliveries_text, job_deliveries


def cmd_job_create(args: argparse.Namespace) -> int:

    body: dict[str, Any] = {
        "pipeline_uuid": args.pipeline,
        "archive_path": args.archive_path,
        "data": read_json(args.data, "--data"),
    }
    if args.session:
        body["session"] = args.session
    if args.archive_system:
        body["archive_system"] = args.archive_system
    if args.child_of:
        body["child_of"] = args.child_of
    outcome = handle(args, body)
    verb = "created" if outcome["created"] else "found existing"
    human = (
        f"{verb} job {outcome['uuid']} (state {outcome['state']})\n"
        f"token: {outcome['token']}   <- every event for this job must carry it; keep it private"
    )
    emit(args, outcome, human)
    return 0


def cmd_job_event(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uuid": args.uuid, "name": args.name, "token": args.token}
    if args.data is not None:
        body["data"] = read_json(args.data, "--data")
    outcome = handle(args, body)
    replay = " (a repeat: already applied)" if outcome.get("replayed") else ""
    stale = " (stale: recorded, state unchanged)" if outcome.get("stale") else ""
    emit(args, outcome, f"job {outcome['uuid']}: {args.name} -> state {outcome.get('state')}{replay}{stale}")
    return 0


def cmd_job_delete(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uuid": args.uuid, "action": "delete", "force": args.force, "token": args.token}
    outcome = handle(args, body)
    human = (
        f"job {args.uuid} removed; its tombstone is in the audit trail (`pipelinejobs job audit {args.uuid}`)"
        if args.force
        else f"job {args.uuid} hidden (`job list --all` still shows it; --force removes it)"
    )
    emit(args, outcome, human)
    return 0


def cmd_job_audit(args: argparse.Namespace) -> int:
    """The job's audit trail: its creation, hides and the tombstone of a removal, oldest first."""
    with open_store(settings_of(args)) as store:
        trail = store.audit_trail(args.uuid)
        where = store.describe()
    if not trail:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no audit records for job {args.uuid} in the {where}")
    rows = [f"{'DATE':<20}  {'ACTION':<8}  {'BY':<16}  CHANGE"]
    for record in trail:
        diff = record.get("diff") or {}
        change = "the whole job (tombstone)" if "deleted" in diff else short(diff, None if args.full else 60)
        by = (record.get("_admin") or {}).get("owner") or "-"
        rows.append(f"{when(record.get('date')):<20}  {record.get('action', '?'):<8}  {by:<16}  {change}")
    emit(args, trail, "\n".join(rows))
    return 0


def job_text(job: dict[str, Any], *, full: bool = False, watch: dict[str, Any] | None = None) -> str:
    """A job for people; ``full`` shows data whole instead of cut to one line."""
    width = None if full else 60
    visible = "hidden (deleted)" if job.get("_visible") is False else "visible"
    lines = [
        f"job {job['uuid']}  state {job.get('state')}  ({visible})",
        f"  pipeline  {job.get('pipeline_uuid')}",
        f"  session   {job.get('session') or '-'}",
        f"  archive   {job.get('archive_system')}:{job.get('archive_path')}",
        f"  data      {short(job.get('data'), width)}",
        f"  updated   {when(job.get('updated'))}  revision {(job.get('_properties') or {}).get('revision')}",
    ]
    if job.get("child_of"):
        lines.insert(3, f"  child of  {', '.join(map(str, job['child_of']))}")
    if isinstance(job.get("progress"), dict):
        lines.append(progress_text(job["progress"]))
    if watch is not None:
        lines.append(watch_text(watch))
    history = job.get("history") or []
    lines.append(f"  history ({len(history)} events, oldest first):")
    for entry in history:
        data = f"  data {short(entry.get('data'), None if full else 50)}" if entry.get("data") else ""
        lines.append(f"    {when(entry.get('date'))}  {entry.get('name', '?'):<10}{data}".rstrip())
    return "\n".join(lines)


def progress_text(progress: dict[str, Any]) -> str:
    """A workflow engine's progress (``progress``, kept by its reports): steps done, and what has not finished."""
    done, total = progress.get("done"), progress.get("total")
    steps = f"{done} of {total} steps" if done is not None and total is not None else "no step count yet"
    line = f"  progress  {steps} ({progress.get('engine') or '?'}, reported {when(progress.get('updated'))})"
    unfinished = progress.get("unfinished") if isinstance(progress.get("unfinished"), dict) else {}
    if unfinished:
        shown = ", ".join(f"{rule} (job {jobid})" for jobid, rule in sorted(unfinished.items())[:10])
        line += f"\n  unfinished {shown}{' ...' if len(unfinished) > 10 else ''}"
    return line


def cmd_job_show(args: argparse.Namespace) -> int:
    from ..documents import public_view

    settings = settings_of(args)
    with open_store(settings) as store:
        job = store.find_job(args.uuid)
        watched = _watch_view(store, settings, job) if job is not None else None
        deliveries = job_deliveries(store, args.uuid) if job is not None else None
        where = store.describe()
    if job is None:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no job with uuid {args.uuid} in the {where}")
    shown = public_view(job) if watched is None else {**public_view(job), "watch": watched}
    text = job_text(job, full=args.full, watch=watched)
    if deliveries:  # notifications: the latest delivery attempts
        shown["deliveries"] = deliveries
        text += f"\n  deliveries (latest {len(deliveries)}, newest first):\n"
        text += "\n".join("    " + line for line in deliveries_text(deliveries).splitlines())
    emit(args, shown, text)
    return 0


def cmd_job_list(args: argparse.Namespace) -> int:
    from ..documents import public_view

    state = state_name(args.state)
    with open_store(settings_of(args)) as store:
        jobs = store.list_jobs(state=state, pipeline_uuid=args.pipeline, include_hidden=args.all, limit=args.limit)
    rows = [f"{'UUID':<36}  {'STATE':<10}  {'UPDATED':<20}  PIPELINE"]
    rows += [
        f"{j['uuid']:<36}  {j.get('state', ''):<10}  {when(j.get('updated')):<20}  {j.get('pipeline_uuid')}"
        + ("  (hidden)" if j.get("_visible") is False else "")
        for j in jobs
    ]
    emit(args, [public_view(j) for j in jobs], "\n".join(rows) if jobs else "no jobs match")
    return 0


def history_text(uuid: str, records: list[Any], next_cursor: str | None) -> str:
    if not records:
        return f"job {uuid}: no history"
    lines = [f"{'SEQ':>6}  {'DATE':<20}  {'EVENT':<10}  {'OUTCOME':<8}  {'STATE':<10}  DATA"]
    for record in records:
        seq = "-" if record.seq < 0 else str(record.seq)
        data = short(record.data, 50) if record.data else ""
        outcome = record.outcome.value
        lines.append(f"{seq:>6}  {when(record.date):<20}  {record.name:<10}  {outcome:<8}  {record.state:<10}  {data}")
    if next_cursor:
        lines.append(f"more: pipelinejobs job history {uuid} --after {next_cursor}")
    return "\n".join(lines)


def cmd_job_history(args: argparse.Namespace) -> int:
    """A job's full history from the event log, oldest first; ``--all`` reads every page."""
    from ..store.base import iter_history

    with open_store(settings_of(args)) as store:
        if store.find_head(args.uuid) is None:
            raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no job with uuid {args.uuid} in the {store.describe()}")
        try:
            if args.all:
                records, next_cursor = list(iter_history(store, args.uuid)), None
            else:
                page = store.history(args.uuid, after=args.after, limit=args.limit)
                records, next_cursor = page.records, page.next
        except ValueError as exc:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--after: {exc}") from exc
    shown = [record.to_document() for record in records]
    emit(args, {"uuid": args.uuid, "events": shown, "next": next_cursor}, history_text(args.uuid, records, next_cursor))
    return 0


def _watch_view(store: JobStore, settings: Settings, job: dict[str, Any]) -> dict[str, Any] | None:
    """A job's deadlines (effective: config, pipeline, its own) and signs of life, for `job show`."""
    from ..deadlines import effective_deadlines

    record = store.watch_record(job["uuid"])
    if record is None:
        return None
    deadlines = effective_deadlines(settings, job.get("pipeline_uuid"), record.get("deadlines"))
    keys = ("since", "last_seen", "due_at")
    return {"deadlines": deadlines, "own": record.get("deadlines"), **{k: record.get(k) for k in keys}}


def watch_text(view: dict[str, Any]) -> str:
    limits = ", ".join(
        f"{name.removesuffix('_seconds')} {value}s" for name, value in view["deadlines"].items() if value
    )
    return (
        f"  deadlines {limits or 'none'}{' (own)' if view.get('own') else ''}\n"
        f"  watch     in state since {when(view.get('since'))}  last seen {when(view.get('last_seen'))}"
        f"  due {when(view.get('due_at'))}"
    )


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    job = commands.add_parser("job", help="create and inspect jobs").add_subparsers(metavar="ACTION")
    sub = leaf(job, "create", cmd_job_create, "create a job for a registered pipeline")
    sub.add_argument("--pipeline", required=True, help="the pipeline uuid")
    sub.add_argument("--archive-path", required=True, help="where the job's products go")
    sub.add_argument("--data", default="{}", help="run-time parameters: JSON, @file or - for stdin")
    sub.add_argument("--session", help="a session id correlating events (default: an adjective-animal name)")
    sub.add_argument("--archive-system", help="the storage system of archive_path (default: data-sd2e-community)")
    sub.add_argument("--child-of", action="append", default=[], metavar="UUID", help="a parent job's uuid (repeatable)")
    sub = leaf(job, "show", cmd_job_show, "show a job and its history")
    sub.add_argument("uuid")
    sub.add_argument("--full", action="store_true", help="show data whole instead of cut to one line")
    sub = leaf(job, "list", cmd_job_list, "list jobs, most recently updated first")
    sub.add_argument("--state", help="only jobs in this state, in any case (e.g. running)")
    sub.add_argument("--pipeline", help="only jobs of this pipeline uuid")
    sub.add_argument("--all", action="store_true", help="include deleted (hidden) jobs, marked (hidden)")
    sub.add_argument("--limit", type=int, default=100)

    sub = leaf(job, "history", cmd_job_history, "a job's full history from the event log, oldest first")
    sub.add_argument("uuid")
    sub.add_argument("--after", help="continue after this cursor (printed at the end of a page)")
    sub.add_argument("--limit", type=int, default=100, help="events per page (default 100)")
    sub.add_argument("--all", action="store_true", help="every event, all pages")

    sub = leaf(job, "event", cmd_job_event, "send an event to a job (as a message to the actor would)")
    sub.add_argument("uuid")
    sub.add_argument("name", help="the event, e.g. run, update, finish, fail")
    sub.add_argument("--data", help="the event's data: JSON object, @file or - for stdin")
    sub.add_argument("--token", required=True, help="the job's token (printed by `job create`) or an admin token")
    sub = leaf(job, "delete", cmd_job_delete, "hide a job, or remove it with --force (a tombstone is kept)")
    sub.add_argument("uuid")
    sub.add_argument("--force", action="store_true", help="remove the job instead of hiding it")
    sub.add_argument("--token", required=True, help="the job's token or an admin token")
    sub = leaf(job, "audit", cmd_job_audit, "a job's audit trail: creation, hides, tombstones")
    sub.add_argument("uuid")
    sub.add_argument("--full", action="store_true", help="show each change whole")
