"""Abaco entrypoint of the PipelineJobs Manager.

Abaco runs this once per message with the message in ``MSG`` and its context in
other environment variables. It hands them to the package, prints one JSON
object as the last line of stdout and exits 0 on success, 1 on rejection.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipelinejobs.runtime import dumps, run_message


def main() -> int:
    config = Path(__file__).resolve().parent / "config.yml"
    code, result = run_message(os.environ, config_path=config if config.exists() else None)
    print(dumps(result), flush=True)
    return code


if __name__ == "__main__":
    exit_code = main()
    # Every write was acknowledged and the store closed before the result was printed.
    # os._exit skips interpreter teardown, where pymongo's atexit hook waits for its
    # monitor threads to wake up: about half a second on every message (bench/run.py).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
