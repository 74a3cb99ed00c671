"""`python -m pipelinejobs.cli`: the same as the `pipelinejobs` command."""

import sys

from . import main

sys.exit(main())
