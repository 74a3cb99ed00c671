"""The image's inputs agree with each other: the hashed locks pin what pyproject.toml asks for, and the
Dockerfile installs from nothing else.

The locks are made by `make lock` (uv, for the image's Python); these tests read them as pip will, with
`packaging`, and fail when someone edits pyproject.toml without relocking, or a lock by hand. Whether the
Dockerfile still builds and runs is `make image-test`'s check (it builds the file as it is).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on 3.10
    import tomli as tomllib

RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
PROJECT = "pipelinejobs-manager (pyproject.toml)"
#: Debian's python3 by release, the interpreter the image runs and the locks are resolved for
DEBIAN_PYTHON = {"12": "3.11", "bookworm": "3.11", "13": "3.13", "trixie": "3.13"}


@dataclass
class Locked:
    version: Version
    hashes: list[str]
    via: set[str] = field(default_factory=set)


def read_lock(path: Path) -> dict[str, Locked]:
    """A pip requirements file in uv's hashed format: `name==version \\` + `--hash=sha256:...` + `# via` lines."""
    locked: dict[str, Locked] = {}
    current: Locked | None = None
    in_via = False
    for raw in path.read_text().splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            requirement = Requirement(line)
            specifiers = list(requirement.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{path.name}: not pinned: {line}"
            assert not requirement.url and not requirement.extras, f"{path.name}: {line}"
            current = locked.setdefault(canonicalize_name(requirement.name), Locked(Version(specifiers[0].version), []))
            in_via = False
        elif line.startswith("--hash="):
            assert current is not None
            current.hashes.append(line.removeprefix("--hash="))
        elif line.startswith("# via"):
            assert current is not None
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif line.startswith("#   ") and in_via and current is not None:
            current.via.add(line.removeprefix("#").strip())
        elif line.startswith("-"):
            raise AssertionError(f"{path.name}: an option in a lock ({line}); the Dockerfile gives pip its options")
    return locked


def image_environment() -> dict[str, str]:
    """Marker values of the image: Linux, x86-64, the Python of the Dockerfile's Debian release."""
    python = DEBIAN_PYTHON[debian_release()]
    return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
            "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip


def debian_release() -> str:
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile's base image is an ARG with a default"
    tag = base.group(1).rsplit(":", 1)[1]
    release = re.match(r"(\d+|[a-z]+)", tag)
    assert release and release.group(1) in DEBIAN_PYTHON, f"a Debian base with Debian's python3, not {tag}"
    return release.group(1)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Locked]:
    return read_lock(RUNTIME_LOCK)


@pytest.fixture(scope="module")
def build_lock() -> dict[str, Locked]:
    return read_lock(BUILD_LOCK)


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range(
    pyproject: dict, runtime_lock: dict[str, Locked]
) -> None:
    env = image_environment()
    for text in pyproject["project"]["dependencies"]:
        wanted = Requirement(text)
        if wanted.marker and not wanted.marker.evaluate(env):
            continue
        name = canonicalize_name(wanted.name)
        assert name in runtime_lock, f"{wanted.name} is in pyproject.toml but not in requirements.lock: run make lock"
        version = runtime_lock[name].version
        assert wanted.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {wanted.name}=={version}, outside pyproject.toml's {wanted.specifier}: make lock"
        )


def test_the_lock_holds_nothing_that_pyproject_does_not_lead_to(
    pyproject: dict, runtime_lock: dict[str, Locked]
) -> None:
    """Each locked package is a dependency of pyproject.toml or of another locked package (uv's `# via`)."""
    direct = {canonicalize_name(Requirement(text).name) for text in pyproject["project"]["dependencies"]}
    for name, entry in runtime_lock.items():
        assert entry.via, f"{name}: no `# via` in requirements.lock"
        if PROJECT in entry.via:
            assert name in direct, f"requirements.lock keeps {name} for pyproject.toml, which no longer asks for it"
        for parent in entry.via - {PROJECT}:
            assert canonicalize_name(parent) in runtime_lock, f"{name} is there for {parent}, which is not locked"
    # and nothing hangs on a cycle of its own: every entry reaches pyproject.toml
    reached = {name for name, entry in runtime_lock.items() if PROJECT in entry.via}
    while True:
        more = {
            n for n, e in runtime_lock.items() if n not in reached and {canonicalize_name(v) for v in e.via} & reached
        }
        if not more:
            break
        reached |= more
    assert reached == set(runtime_lock), f"not reached from pyproject.toml: {sorted(set(runtime_lock) - reached)}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_every_locked_package_is_pinned_and_hashed(lock: Path) -> None:
    entries = read_lock(lock)
    assert entries
    for name, entry in entries.items():
        assert entry.hashes, f"{lock.name}: {name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in entry.hashes), f"{lock.name}: {name}"


def test_the_build_lock_pins_the_build_backend(pyproject: dict, build_lock: dict[str, Locked]) -> None:
    """The wheel is built without build isolation by the backend from this lock, never an unpinned download."""
    for text in pyproject["build-system"]["requires"]:
        wanted = Requirement(text)
        name = canonicalize_name(wanted.name)
        assert name in build_lock, f"{wanted.name} (build-system.requires) is not in requirements-build.lock"
        assert wanted.specifier.contains(build_lock[name].version), f"{name}: lock outside {wanted.specifier}"
    backend = pyproject["build-system"]["build-backend"].split(".")[0]
    assert backend in build_lock


def test_the_locks_are_made_for_the_images_python() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lock_python = re.search(r"^LOCK_PYTHON\s*:?=\s*(\S+)$", makefile, re.M)
    assert lock_python and lock_python.group(1) == DEBIAN_PYTHON[debian_release()], (
        "make lock must resolve for the python3 of the Dockerfile's Debian release"
    )


def test_the_dockerfile_installs_only_from_the_locks() -> None:
    """Every pip install is hash-checked from a lock, binary-only, or the project's own wheel without its deps."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip (?:--python \S+ )?install ([^&]+)", dockerfile)
    assert len(installs) == 3, installs
    for options in installs:
        if "-r " in options:
            assert "--require-hashes" in options and "--only-binary=:all:" in options and "--no-deps" in options
            assert re.search(r"-r /tmp/locks/requirements(-build)?\.lock", options), options
        else:
            assert "--no-deps" in options and "/tmp/dist/*.whl" in options, options
    wheel = re.search(r"pip wheel ([^&]+)", dockerfile)
    assert wheel and "--no-build-isolation" in wheel.group(1) and "--no-deps" in wheel.group(1)
    assert not (ROOT / "requirements.txt").exists(), "requirements.lock replaced requirements.txt"


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    """.dockerignore lets in exactly the files the Dockerfile copies (plus itself): no .venv, .git or tests."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied: set[str] = set()
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.M):
        words = [w for w in line.split() if not w.startswith("--")]
        if "--from=" in line:
            continue
        copied.update(w.rstrip("/") for w in words[:-1])
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the context is an allowlist"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == copied | {"Dockerfile"}
    assert all((ROOT / name).exists() for name in allowed)
