"""`make demo` on a machine without MongoDB: the walk-through runs and shows every state it passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_walks_a_job_through_the_seed_messages(tmp_path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env["_REACTOR_MONGODB_AUTHN"] = "bW9uZ29kYjovLzEyNy4wLjAuMToxLw"  # ignored: the demo never uses MongoDB
    proc = subprocess.run(
        [sys.executable, "-m", "pipelinejobs.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    states = [
        line.split("state ")[1].split()[0]
        for line in out.splitlines()
        if line.startswith("   job ") and "state " in line
    ]
    assert states == ["CREATED", "RUNNING", "RUNNING", "FINISHED", "FINISHED", "VALIDATING", "VALIDATING", "VALIDATING"]
    for words in (
        "registered as 10650844-1baa-55c5-a481-5e945b19c065",
        "No remaining uses left for this nonce.",
        "exit code 1, unauthorized",
        "hidden (deleted)",
        "is no longer in the store",
        "Demo finished",
    ):
        assert words in out, words
    shown_tokens = set(re.findall(r'"token": "([^"]+)"', out)) | set(re.findall(r"token=([^&' ]+)", out))
    assert shown_tokens == {"$JOB_TOKEN", "0dc73dc3ff39b49a"}  # the real token only as a placeholder
    assert not list(tmp_path.glob("pipelinejobs-demo-*"))  # the temporary store was cleaned up
