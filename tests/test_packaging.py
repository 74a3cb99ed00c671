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
from typing import Any

import pytest

from tests.conftest import ROOT, authn_for


def test_dockerfile_copies_what_exists_and_runs_reactor() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        if "--from=" in source:  # from an earlier build stage, not the checkout
            continue
        for item in source.split():
            assert (ROOT / item.rstrip("/")).exists(), item
    assert 'CMD ["python", "-I", "/reactor.py"]' in dockerfile


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed (not editable) into a directory of its own."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
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
    return site


def test_installed_wheel_runs_reactor_from_its_own_directory(installed_site: Path, tmp_path: Path) -> None:
    site, image_root = installed_site, tmp_path / "root"
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


def _installed_cli(site: Path, home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`pipelinejobs ARGS` from the installed wheel, in an empty directory, with no config.yml anywhere near."""
    home.mkdir(exist_ok=True)
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "pipelinejobs.cli", *argv],
        env=full_env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_wheel_ships_its_defaults(installed_site: Path) -> None:
    assert (installed_site / "pipelinejobs" / "defaults.yml").read_text() == (ROOT / "config.yml").read_text()
    assert not (installed_site / "config.yml").exists()


def test_installed_wheel_honours_reactor_overrides_without_a_config_file(installed_site: Path, tmp_path: Path) -> None:
    """`_REACTOR_STORE_SQLITE_PATH` is obeyed, and nothing is written under ~/.local/share."""
    chosen = tmp_path / "chosen" / "jobs.sqlite"
    chosen.parent.mkdir()
    done = _installed_cli(installed_site, tmp_path / "home", "db", "init", _REACTOR_STORE_SQLITE_PATH=str(chosen))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sqlite file {chosen}: indexes ready"
    assert chosen.exists() and not (tmp_path / "home" / ".local").exists()


def test_installed_wheel_honours_the_mongodb_override(
    installed_site: Path, tmp_path: Path, mongodb_uri: str, database_name: str, db: Any
) -> None:
    done = _installed_cli(
        installed_site,
        tmp_path / "home",
        "--json",
        "db",
        "init",
        _REACTOR_MONGODB_AUTHN=authn_for(mongodb_uri),
        _REACTOR_MONGODB_DATABASE=database_name,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["store"] == f"mongodb database '{database_name}' on {mongodb_uri[10:]}"
    assert "uuid_unique" in db.jobs.index_information()


def test_installed_wheel_ships_the_web_views_templates_and_static_files(installed_site: Path) -> None:
    """serve's /ui/ renders from files next to its module: the wheel must carry every one of them."""
    source = ROOT / "pipelinejobs" / "server"
    for folder in ("templates", "static"):
        expected = sorted(p.name for p in (source / folder).iterdir() if p.is_file())
        shipped = sorted(p.name for p in (installed_site / "pipelinejobs" / "server" / folder).iterdir())
        assert expected and shipped == expected, folder
    probe = subprocess.run(
        [sys.executable, "-c", "from pipelinejobs.server import ui; print(ui.ENV.get_template('job.html').filename)"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(installed_site)},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(installed_site)
