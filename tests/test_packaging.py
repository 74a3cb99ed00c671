"""The image layout, without a Docker engine: the wheel carries the schemas, and reactor.py runs from /.

Mirrors the Dockerfile: install the built wheel, put reactor.py and config.yml in
a directory of their own, and run the entrypoint from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_dockerfile_copies_what_exists_and_runs_reactor() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        for item in source.split():
            assert (ROOT / item.rstrip("/")).exists(), item
    assert 'CMD ["python", "/reactor.py"]' in dockerfile


def test_installed_wheel_runs_reactor_from_its_own_directory(tmp_path: Path) -> None:
    wheels, site, image_root = tmp_path / "wheels", tmp_path / "site", tmp_path / "root"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    image_root.mkdir()
    shutil.copy(ROOT / "reactor.py", image_root)
    shutil.copy(ROOT / "config.yml", image_root)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import pipelinejobs.messages as m; print(m.schema_dir())"],
        env=env,
        cwd=image_root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)
    msg = {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "explode", "token": "0dc73dc3ff39b49a"}
    run = subprocess.run(
        [sys.executable, str(image_root / "reactor.py")],
        env=dict(env, MSG=repr(msg), _abaco_Content_Type="str"),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["kind"] == "bad_message" and "name: must be one of" in result["message"]
