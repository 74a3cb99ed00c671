"""The `pipelinejobs` command: pipelines, jobs, nonces, sending messages, `serve` and the passes.

One module per command group (``pipelines``, ``jobs``, ``db``, ``nonces``, ``send``, ``serve``,
``watch``, ``notify``, ``config``), each adding its commands to the parser; ``common`` holds what they share.
Starlette, uvicorn and httpx are imported only by the commands that need them, so
``pipelinejobs job show`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__, logs
from ..errors import ErrorKind, PipelineJobsError
from ..runtime import dumps
from . import config, db, jobs, nonces, notify, pipelines, send, serve, watch
from .common import BEARER_ENV, BROKEN_PIPE, EXIT_CODES, USAGE_ERROR, log, wait_notices

__all__ = ["BEARER_ENV", "BROKEN_PIPE", "EXIT_CODES", "USAGE_ERROR", "build_parser", "main"]

#: the command groups, in the order `pipelinejobs --help` lists them
GROUPS = (pipelines, jobs, db, nonces, send, serve, watch, notify, config)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    common.add_argument("--config", default=argparse.SUPPRESS, help="config.yml to use (default: the checkout's)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO")

    parser = argparse.ArgumentParser(
        prog="pipelinejobs", description="PipelineJobs Manager: pipelines, jobs, nonces and a local Abaco endpoint."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--config", help="config.yml to use (default: the checkout's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def leaf(group: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(run=func)
        return sub

    for group in GROUPS:
        group.add_commands(commands, leaf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    logs.configure(level="INFO" if args.verbose else "WARNING")
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that went away is found here, not at interpreter exit
        return code
    except PipelineJobsError as exc:
        if args.json:
            print(dumps(exc.to_dict()))
        print(f"pipelinejobs: error ({exc.kind.value}): {exc.message}", file=sys.stderr)
        return EXIT_CODES[exc.kind]
    except BrokenPipeError:
        # `pipelinejobs job list --json | head`: the reader has what it wanted; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one redacted line; -v adds the traceback
        log.error("internal error (%s); run with -v for the details", type(exc).__name__, exc_info=args.verbose)
        print(f"pipelinejobs: error ({ErrorKind.INTERNAL.value}): {type(exc).__name__}", file=sys.stderr)
        return EXIT_CODES[ErrorKind.INTERNAL]
    finally:
        for timer in wait_notices:
            timer.cancel()
        wait_notices.clear()
