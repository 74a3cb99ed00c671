"""`make image-test`: the built image, run the way Abaco runs it, against a MongoDB-wire server on this host.

Abaco starts one container per message with the message in MSG (a JSON message as the Python repr of the
parsed object), every URL parameter of the POST as an environment variable, the actor's default environment
(the `_REACTOR_*` settings) and its own `_abaco_*` variables; it reads the exit code and the output. This
script does the same with `docker run` or `podman run`, on the host's network, against a secantusd-py it
starts: `db init` from the image, the example pipeline and a job from the host's CLI, then one container per
message (a JSON event, an event by URL parameters with a JSON body, a bad token, an Agave callback, a delete),
checking each exit code, the printed outcome line and the catalog (read with pymongo) after it. Then
`pipelinejobs serve` from the same image answers one POST. It prints the image size and the median time of
10 container runs of one message: measured and reported against the targets, not asserted (a slow machine is
not a broken image); every functional check fails the run.

Usage: python tools/image_test.py --engine podman --image pipelinejobs-manager:0.1.0 [--revision SHA]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pymongo

ROOT = Path(__file__).resolve().parent.parent
SIZE_TARGET_MB = 150.0
RUN_TARGET_S = 0.5
TIMED_RUNS = 10
ACTOR_ID = "pjImageTest01"
OWNER_UID = "843210:843210"  # an actor owner's uid and gid as Abaco passes them: unknown to the image
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class Failed(Exception):
    """A check did not hold: the message says which and what was seen."""


def check(condition: bool, what: str, seen: Any = None) -> None:
    if not condition:
        raise Failed(what if seen is None else f"{what}; seen: {seen!r}"[:4000])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, seconds: float, alive: Any = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise Failed(f"the process that should listen on port {port} has stopped")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise Failed(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


@dataclass
class Outcome:
    """One container run: exit code, the last line of stdout as JSON (the manager's result), stderr, seconds."""

    code: int
    result: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float


class Container:
    """`ENGINE run --rm --network host IMAGE ...` with Abaco's environment; values go through the client's
    environment (`-e NAME`), so the MongoDB URI never shows in a process list."""

    def __init__(self, engine: str, image: str, actor_env: Mapping[str, str]) -> None:
        self.engine, self.image, self.actor_env = engine, image, dict(actor_env)
        self.executions = 0

    def run(self, argv: Sequence[str] = (), env: Mapping[str, str] | None = None, user: str | None = None) -> Outcome:
        full = {**self.actor_env, **(env or {})}
        command = [self.engine, "run", "--rm", "--network", "host", *(["--user", user] if user else [])]
        for name in full:
            command += ["-e", name]
        command += [self.image, *argv]
        started = time.perf_counter()
        done = subprocess.run(
            command, env={**os.environ, **full}, capture_output=True, text=True, timeout=120, check=False
        )
        seconds = time.perf_counter() - started
        lines = done.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        return Outcome(done.returncode, result if isinstance(result, dict) else {}, done.stdout, done.stderr, seconds)

    def message(
        self, msg: Any, params: Mapping[str, str] | None = None, content_type: str = "application/json"
    ) -> Outcome:
        """One message as Abaco delivers it: default env < URL parameters < `_abaco_*` < MSG; as the actor
        owner's uid (Abaco's default, `useContainerUid` false), which has no entry in the image's /etc/passwd."""
        self.executions += 1
        env = {
            **(params or {}),
            "_abaco_actor_id": ACTOR_ID,
            "_abaco_actor_dbid": f"SD2E_{ACTOR_ID}",
            "_abaco_execution_id": f"imgtestexec{self.executions:04d}",
            "_abaco_worker_id": "imgtestworker",
            "_abaco_username": "image-test",
            "_abaco_api_server": "https://api.example.org",
            "_abaco_access_token": "",
            "_abaco_Content_Type": content_type,
            "MSG": repr(msg) if isinstance(msg, dict) else str(msg),
        }
        return self.run(env=env, user=OWNER_UID)


class Catalog:
    """The catalog as MongoDB holds it, read with pymongo: what a message really changed."""

    def __init__(self, uri: str, database: str) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
        self.db = self.client[database]

    def job(self, uuid: str) -> dict[str, Any] | None:
        return self.db.jobs.find_one({"uuid": uuid}, {"_id": False})

    def existing_job(self, uuid: str) -> dict[str, Any]:
        found = self.job(uuid)
        if found is None:
            raise Failed(f"catalog: job {uuid} is missing")
        return found

    def events(self, uuid: str) -> list[dict[str, Any]]:
        return list(self.db.events.find({"uuid": uuid}, {"_id": False}).sort([("seq", 1), ("slot", 1)]))

    def updates(self, uuid: str) -> list[dict[str, Any]]:
        return list(self.db.updates.find({"uuid": uuid}, {"_id": False}))


def expect_ok(outcome: Outcome, what: str, **fields: Any) -> None:
    check(
        outcome.code == 0, f"{what}: exit code 0 expected", (outcome.code, outcome.stdout[-800:], outcome.stderr[-800:])
    )
    check(outcome.result.get("status") == "ok", f"{what}: the outcome line says ok", outcome.result)
    for name, value in fields.items():
        check(outcome.result.get(name) == value, f"{what}: outcome {name} == {value!r}", outcome.result)


def step(text: str) -> None:
    print(f"image-test: {text}", flush=True)


class ImageTest:
    def __init__(self, engine: str, image: str, revision: str | None) -> None:
        self.engine, self.image, self.revision = engine, image, revision
        self.work = Path(tempfile.mkdtemp(prefix="pj-image-test-"))
        self.database = f"image_test_{os.getpid()}"
        self.mongo_port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.mongo_port}"
        self.actor_env = {
            "_REACTOR_MONGODB_AUTHN": base64.urlsafe_b64encode(self.uri.encode()).decode(),
            "_REACTOR_MONGODB_DATABASE": self.database,
        }
        self.server: subprocess.Popen[bytes] | None = None
        self.timed: list[float] = []
        self.empty: list[float] = []

    # -- set-up ---------------------------------------------------------------------------------------------
    def start_mongodb(self) -> None:
        binary = Path(sys.executable).parent / "secantusd-py"
        where = ["--host", "127.0.0.1", "--port", str(self.mongo_port), "--storage-path", str(self.work / "db")]
        log = open(self.work / "secantusd.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.server = subprocess.Popen(
            [str(binary), *where],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.mongo_port, 30, alive=lambda: self.server is not None and self.server.poll() is None)
        self.catalog = Catalog(self.uri, self.database)

    def host_cli(self, *argv: str) -> dict[str, Any]:
        """`pipelinejobs --json ARGS` on the host, with the actor's database settings."""
        done = subprocess.run(
            [sys.executable, "-m", "pipelinejobs.cli", "--json", *argv],
            env={"PATH": os.environ["PATH"], "HOME": str(self.work), "USER": "image-test", **self.actor_env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        check(done.returncode == 0, f"host CLI {' '.join(argv)}", done.stderr[-2000:])
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    def create_job(self, pipeline: str, archive_path: str) -> tuple[str, str]:
        job = self.host_cli("job", "create", "--pipeline", pipeline, "--archive-path", archive_path)
        check(job.get("created") is True and job.get("state") == "CREATED", "host CLI created the job", job)
        return job["uuid"], job["token"]

    # -- the checks -----------------------------------------------------------------------------------------
    def inspect_image(self) -> float:
        """Labels, user and command from the image's configuration; its size in MB (10^6 bytes, as engines show)."""
        done = subprocess.run(
            [self.engine, "image", "inspect", self.image], capture_output=True, text=True, timeout=60, check=True
        )
        info = json.loads(done.stdout)[0]
        config = info.get("Config") or {}
        labels = config.get("Labels") or {}
        version = next(
            line.split('"')[1]
            for line in (ROOT / "pipelinejobs" / "__init__.py").read_text().splitlines()
            if line.startswith("__version__")
        )
        check(labels.get("org.opencontainers.image.version") == version, "label version is the package's", labels)
        if self.revision:
            check(labels.get("org.opencontainers.image.revision") == self.revision, "label revision", labels)
        check("org.opencontainers.image.source" in labels, "label source is set", labels)
        user = str(config.get("User") or "root").split(":")[0]
        check(user not in ("0", "root"), "the image runs as non-root", user)
        check(config.get("Cmd") == ["python", "-I", "/reactor.py"], "CMD runs reactor.py, isolated", config.get("Cmd"))
        return float(info["Size"]) / 1e6

    def inspect_contents(self, container: Container) -> None:
        """Only what runs: the package with its schemas and defaults, reactor.py and config.yml; no pip, no
        sources, no tests; no copy of the host's CA bundle (it was mounted for the build only)."""
        probe = (
            "import importlib.util, json, os, pathlib, pipelinejobs\n"
            "pkg = pathlib.Path(pipelinejobs.__file__).parent\n"
            "print(json.dumps({'uid': os.getuid(), 'pip': importlib.util.find_spec('pip') is not None,\n"
            "  'setuptools': importlib.util.find_spec('setuptools') is not None,\n"
            "  'schemas': sorted(p.name for p in (pkg / 'schemas').glob('*.json')),\n"
            "  'defaults': (pkg / 'defaults.yml').is_file(),\n"
            "  'root': sorted(os.listdir('/')),\n"
            "  'ca_bundle': pathlib.Path('/etc/ssl/certs/ca-certificates.crt').read_bytes().hex()[:64]\n"
            "     if pathlib.Path('/etc/ssl/certs/ca-certificates.crt').exists() else None,\n"
            "  'src': os.path.exists('/src') or os.path.exists('/schemas') or os.path.exists('/tests')}))\n"
        )
        seen = container.run(["python", "-I", "-c", probe]).result
        check(seen.get("uid") not in (None, 0), "the container's process is not root", seen)
        check(seen.get("pip") is False and seen.get("setuptools") is False, "no pip or setuptools in the image", seen)
        expected = sorted(p.name for p in (ROOT / "schemas").glob("*.json"))
        check(seen.get("schemas") == expected, "the package carries every schema", seen)
        check(seen.get("defaults") is True, "the package carries defaults.yml", seen)
        check(seen.get("src") is False, "no build sources, /schemas or tests in the image", seen)
        check("reactor.py" in seen.get("root", []) and "config.yml" in seen.get("root", []), "/reactor.py, /config.yml")
        if HOST_CA_BUNDLE.exists():
            host = HOST_CA_BUNDLE.read_bytes().hex()[:64]
            check(seen.get("ca_bundle") != host, "the host's CA bundle is not in the image", seen.get("ca_bundle"))

    def db_init_from_image(self, container: Container) -> None:
        done = container.run(["pipelinejobs", "--json", "db", "init"])
        check(done.code == 0 and done.result.get("ready") is True, "db init from the image", (done.stdout, done.stderr))
        check(
            f"mongodb database '{self.database}'" in done.result.get("store", ""),
            "db init names the store",
            done.result,
        )
        indexes = self.catalog.db.jobs.index_information()
        check("uuid_unique" in indexes, "db init made the jobs indexes", sorted(indexes))

    def messages(self, container: Container, job: str, token: str) -> None:
        catalog = self.catalog
        seen = catalog.events(job)

        # 1. a JSON event, as Abaco passes one: the repr of the parsed JSON, content type application/json
        data = {"step": "align", "ok": True, "note": None}
        out = container.message({"uuid": job, "name": "run", "token": token, "data": data})
        expect_ok(out, "JSON event", action="event", event="run", state="RUNNING", applied=True)
        doc = catalog.existing_job(job)
        check(doc["state"] == "RUNNING", "catalog: the job is RUNNING", doc["state"])
        check(
            doc["history"][-1]["name"] == "run" and doc["history"][-1]["data"] == data,
            "catalog: history",
            doc["history"],
        )
        check(len(catalog.events(job)) == len(seen) + 1, "catalog: one event record more")
        step(f"JSON event: exit {out.code}, {out.result['state']} ({out.seconds:.2f} s)")

        # 2. an event by URL parameters with a JSON body; the caller also sets PYTHONHOME and PYTHONPATH
        # (any URL parameter becomes a variable): `python -I` ignores them, so the message is still handled
        body = {"reads": 1200, "sample": "s-1", "unicode": "caf\u00e9"}
        params = {"uuid": job, "token": token, "name": "update", "PYTHONHOME": "/nonexistent", "PYTHONPATH": "/tmp"}
        out = container.message(body, params)
        expect_ok(out, "URL-parameter event", action="event", event="update", state="RUNNING", applied=True)
        doc = catalog.existing_job(job)
        check(doc["history"][-1]["name"] == "update", "catalog: update in history", doc)
        check(doc["history"][-1]["data"] == body, "catalog: the JSON body is the event's data", doc["history"][-1])
        step(f"URL-parameter event: exit {out.code}, {out.result['state']} ({out.seconds:.2f} s)")

        # 3. a bad token: exit 1, a clear error, the token not echoed, and nothing changed in the catalog
        before, before_events, before_updates = catalog.job(job), catalog.events(job), catalog.updates(job)
        wrong = "0123456789abcdef"
        out = container.message({"uuid": job, "name": "finish", "token": wrong})
        check(out.code == 1, "bad token: exit code 1", (out.code, out.stdout[-500:]))
        check(
            out.result.get("status") == "error" and out.result.get("kind") == "unauthorized",
            "bad token: kind",
            out.result,
        )
        check("token" in out.result.get("message", ""), "bad token: the error says the token was refused", out.result)
        check(wrong not in out.stdout + out.stderr, "bad token: the token is not echoed")
        check("Traceback" not in out.stderr, "bad token: no traceback", out.stderr[-800:])
        check(catalog.job(job) == before, "bad token: the job document is unchanged")
        check(catalog.events(job) == before_events and catalog.updates(job) == before_updates, "bad token: no record")
        step(f"bad token: exit {out.code}, {out.result['kind']}: {out.result['message']} ({out.seconds:.2f} s)")

        # 4. an Agave job callback: the job record as MSG, uuid/token/status from the callback URL
        record = json.loads((ROOT / "examples" / "agave-job.json").read_text())
        out = container.message(record, {"uuid": job, "token": token, "status": "FINISHED"})
        expect_ok(out, "Agave callback", action="event", event="finish", state="FINISHED", applied=True)
        doc = catalog.existing_job(job)
        check(doc["state"] == "FINISHED", "catalog: the job is FINISHED", doc["state"])
        last = catalog.events(job)[-1]
        delivery = f"agave:{record['id']}:FINISHED:{record['lastUpdated']}"
        check(last.get("event_id") == delivery, "catalog: the callback's delivery id", last.get("event_id"))
        check("_links" not in (doc["history"][-1]["data"] or {}), "catalog: _links dropped from the data")
        step(f"Agave callback: exit {out.code}, {out.result['state']} ({out.seconds:.2f} s)")

        # 5. a forced delete: the job is gone, a tombstone with the whole document is in `updates`
        out = container.message({"uuid": job, "action": "delete", "force": True, "token": token})
        expect_ok(out, "delete", action="delete")
        check(catalog.job(job) is None, "catalog: the job is removed")
        tombstones = [u for u in catalog.updates(job) if "delete" in str(u.get("action", ""))]
        check(bool(tombstones), "catalog: a tombstone in updates", catalog.updates(job))
        step(f"delete: exit {out.code} ({out.seconds:.2f} s)")

    def time_messages(self, container: Container, job: str, token: str) -> None:
        """10 messages, each interleaved with a yardstick: the same engine running `true` in the same image,
        i.e. what starting and removing any container costs here; the difference is the image's own time."""
        for n in range(TIMED_RUNS):
            empty = container.run(["true"])
            check(empty.code == 0, "yardstick: `true` in the image", empty.stderr)
            self.empty.append(empty.seconds)
            out = container.message({"uuid": job, "name": "update", "token": token, "data": {"n": n}})
            expect_ok(out, f"timed message {n + 1}", event="update")
            self.timed.append(out.seconds)
        events = [e for e in self.catalog.events(job) if e.get("name") == "update"]
        check(len(events) == TIMED_RUNS, "catalog: one record per timed message", len(events))

    def serve(self, job: str, token: str) -> None:
        """`pipelinejobs serve` from the same image (the command replaces CMD), host network, one POST."""
        port, name = free_port(), f"pj-image-test-{os.getpid()}"
        api_token = base64.b32encode(os.urandom(15)).decode().lower()
        env = {**self.actor_env, "PIPELINEJOBS_API_TOKENS": api_token}
        command = [self.engine, "run", "--rm", "-d", "--name", name, "--network", "host"]
        for variable in env:
            command += ["-e", variable]
        command += [self.image, "pipelinejobs", "serve", "--config", "/config.yml", "--host", "127.0.0.1",
                    "--port", str(port), "--actor", ACTOR_ID]  # fmt: skip
        subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True)
        try:
            wait_for_port(port, 60)
            before = len(self.catalog.events(job))
            reply = httpx.post(
                f"http://127.0.0.1:{port}/actors/v2/{ACTOR_ID}/messages",
                params={"_abaco_synchronous": "true"},
                json={"uuid": job, "name": "update", "token": token, "data": {"via": "serve"}},
                headers={"Authorization": f"Bearer {api_token}"},
                timeout=30,
            )
            check(reply.status_code == 200, "serve: HTTP 200", (reply.status_code, reply.text[:500]))
            answer = reply.json()
            check(answer.get("status") == "ok" and answer.get("event") == "update", "serve: the outcome", answer)
            check(len(self.catalog.events(job)) == before + 1, "serve: one event record more")
            doc = self.catalog.existing_job(job)
            check(doc["history"][-1]["data"] == {"via": "serve"}, "serve: catalog history")
            refused = httpx.post(f"http://127.0.0.1:{port}/actors/v2/{ACTOR_ID}/messages", json={}, timeout=30)
            check(refused.status_code == 400, "serve: a POST without a token is refused", refused.status_code)
            step(f"serve from the image on port {port}: HTTP {reply.status_code}, {answer.get('state')}")
        except Failed:
            logs = subprocess.run([self.engine, "logs", name], capture_output=True, text=True, check=False)
            print(logs.stdout[-3000:], logs.stderr[-3000:], file=sys.stderr)
            raise
        finally:
            subprocess.run([self.engine, "stop", "-t", "10", name], capture_output=True, check=False, timeout=60)

    # -- the whole run --------------------------------------------------------------------------------------
    def run(self) -> int:
        size_mb = self.inspect_image()
        step(f"{self.engine} image {self.image}: {size_mb:.1f} MB, labels and non-root user checked")
        self.start_mongodb()
        container = Container(self.engine, self.image, self.actor_env)
        self.inspect_contents(container)
        step("contents: package with schemas and defaults, reactor.py, config.yml; no pip, sources or host CA")
        self.db_init_from_image(container)
        step("db init from the image: indexes ready")
        registered = self.host_cli("pipeline", "register", str(ROOT / "examples" / "pipeline.json"))
        pipeline = registered["pipeline"]["uuid"]
        job, token = self.create_job(pipeline, "/products/image-test/run-1")
        step(f"host CLI: pipeline {pipeline} registered, job {job} created")
        self.messages(container, job, token)
        timed_job, timed_token = self.create_job(pipeline, "/products/image-test/timed")
        self.time_messages(container, timed_job, timed_token)
        self.serve(timed_job, timed_token)
        median, empty = statistics.median(self.timed), statistics.median(self.empty)
        size_ok, time_ok = size_mb <= SIZE_TARGET_MB, median <= RUN_TARGET_S
        print(f"image size                                {size_mb:6.1f} MB  target <= {SIZE_TARGET_MB:.0f} MB  "
              f"{'PASS' if size_ok else 'MISS'}")  # fmt: skip
        print(f"one message, container run, median of {TIMED_RUNS}  {median:6.2f} s   target <= {RUN_TARGET_S} s  "
              f"{'PASS' if time_ok else 'MISS'}  (min {min(self.timed):.2f}, max {max(self.timed):.2f})")  # fmt: skip
        print(f"  yardstick: `true` in the image, median     {empty:6.2f} s   (the engine's own start and removal)")
        print(f"  the image's share (message - yardstick)    {median - empty:6.2f} s")
        print("image-test: every check passed", flush=True)
        return 0

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
        subprocess.run(["rm", "-rf", str(self.work)], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True, help="docker or podman")
    parser.add_argument("--image", required=True)
    parser.add_argument("--revision", help="the revision label the image must carry")
    args = parser.parse_args(argv)
    test = ImageTest(args.engine, args.image, args.revision)
    try:
        return test.run()
    except Failed as failure:
        print(f"image-test: FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        test.close()


if __name__ == "__main__":
    sys.exit(main())
