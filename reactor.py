"""Abaco entrypoint of the PipelineJobs Manager.

Abaco runs this once per message with the message in ``MSG`` and its context in
other environment variables. It hands them to the package, prints one JSON
object as the last line of stdout and exits 0 on success, 1 on rejection.
"""

from __future__ import annotations

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
    sys.exit(main())
