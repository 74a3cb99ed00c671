"""`pipelinejobs watch` and `pipelinejobs retention`: the watchdog's and retention's passes, for cron or a loop."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from .common import at_time, emit, open_store, settings_of


def _watch_once(args: argparse.Namespace, settings: Settings) -> None:
    from .. import retention, watch

    with open_store(settings) as store:
        report = watch.watch_pass(store, settings, at_time(args), dry_run=args.dry_run)
        retained = (
            None if args.dry_run or args.no_retention else retention.retention_pass(store, settings, at_time(args))
        )
    data = report.as_dict()
    if retained is not None:
        data["retention"] = retained.as_dict()
    verb = "would fail" if args.dry_run else "failed"
    lines = [f"judged {report.judged} due job(s); {verb} {len(report.failed)}"]
    lines += [
        f"  {f['uuid']}  {f['state']}: {f['meaning']} > {f['seconds']}s (last seen {f['last_seen']})"
        for f in report.failed
    ]
    if report.lost_races:
        lines.append(f"  {report.lost_races} changed after being judged (a real event won); not failed")
    if retained is not None and (retained.purged or retained.tombstones_expired):
        lines.append(f"retention: purged {len(retained.purged)}, tombstones expired {retained.tombstones_expired}")
    emit(args, data, "\n".join(lines))
    sys.stdout.flush()


def cmd_watch(args: argparse.Namespace) -> int:
    """One watchdog pass (for cron or a scheduled actor), or one every N seconds with ``--every``."""
    from .. import watch

    settings = settings_of(args)
    if not args.every:
        _watch_once(args, settings)
        return 0
    watch.run_every(args.every, lambda: _watch_once(args, settings))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Purge jobs past retention (with their log, leaving tombstones); ``--dry-run`` only counts."""
    from .. import retention

    settings = settings_of(args)
    with open_store(settings) as store:
        report = retention.retention_pass(store, settings, at_time(args), dry_run=args.dry_run)
    verb = "would purge" if args.dry_run else "purged"
    expired = "tombstones expiring" if args.dry_run else "tombstones expired"
    human = f"{verb} {len(report.purged)} job(s); {expired}: {report.tombstones_expired}"
    if report.changed:
        human += f"; {report.changed} changed meanwhile and were kept"
    emit(args, report.as_dict(), "\n".join([human, *(f"  {uuid}" for uuid in report.purged)]))
    return 0


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    sub = leaf(commands, "watch", cmd_watch, "fail jobs past their deadlines (one pass; --every N to loop)")
    sub.add_argument("--every", type=float, default=0, help="run a pass every N seconds until interrupted")
    sub.add_argument("--dry-run", action="store_true", help="list what would be failed; change nothing")
    sub.add_argument("--no-retention", action="store_true", help="do not run the retention pass after it")
    sub.add_argument("--at", help="judge as of this ISO time instead of now (e.g. with --dry-run)")
    sub = leaf(commands, "retention", cmd_retention, "purge finished and hidden jobs past their retention")
    sub.add_argument("--dry-run", action="store_true", help="count what would be purged; change nothing")
    sub.add_argument("--at", help="judge as of this ISO time instead of now")
