"""`make demo` on a machine without MongoDB: the walk-through runs and shows every state it passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import web
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


def test_demo_keep_prints_the_web_view_and_serves_until_ctrl_c(tmp_path) -> None:
    import signal
    import time

    import httpx

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelinejobs.demo", "--keep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Serving until Ctrl-C." in line:
                break
        out = "".join(lines)
        assert "Demo finished" in out and "Serving until Ctrl-C." in out, out
        ui = re.search(r"== The web view: (http://127\.0\.0\.1:\d+/ui/)", out)
        token = re.search(r"Sign in there with the demo's API token: (\S+)", out)
        nonce_url = re.search(r"open it with a READ nonce, no sign-in: (\S+)", out)
        job_url = re.search(r"A job page: (\S+)", out)
        assert ui and token and nonce_url and job_url, out
        with web.client(timeout=30) as browser:  # still serving after the walk-through ended
            assert browser.get(ui.group(1)).status_code == 303  # to the sign-in form
            page = browser.get(nonce_url.group(1))
            assert page.status_code == 200 and page.text.count("<tr data-uuid=") == 3
            signed = browser.post(f"{ui.group(1)}signin", data={"token": token.group(1), "next": "/ui/jobs"})
            assert signed.status_code == 303
            job = browser.get(job_url.group(1))
            assert job.status_code == 200 and 'data-name="finish"' in job.text
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Stopped" in rest
        with pytest.raises(httpx.TransportError):
            web.get(ui.group(1), timeout=2)
        assert not list(tmp_path.glob("pipelinejobs-demo-*"))  # the temporary store was cleaned up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
