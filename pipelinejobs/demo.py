"""`make demo`: a local PipelineJobs Manager on the embedded store, walked through the seed's messages.

Needs no MongoDB: the job store is a SQLite file in a temporary directory. The
demo starts `pipelinejobs serve` as a separate process on a free port, registers
the seed's example pipeline, creates a job and sends it the seed's messages over
real HTTP, printing the job after every step with a line on what just happened.
Every step checks its own outcome; the exit code is 0 only if all of them held.

With ``--keep`` (``make demo ARGS=--keep`` or ``make demo-keep``) the demo then adds a
few jobs, prints the web view's URL and how to sign in, and keeps serving until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACTOR = "pjmanager0001"
PIPELINE = {
    "id": "tacc/tacobot:9000",
    "name": "Tacobot pipeline (the seed's example)",
    "components": [
        {"id": "eqMyqq4xB1Lqa", "image": "index.docker.io/tacc/tacbobot:latest", "options": {}},
        {"id": "bbq-brisket-0.5.0", "inputs": {}, "parameters": {"smoke": True}},
    ],
}
DATA = {"arbitrary": "key value data"}


class DemoFailed(Exception):
    """A step did not do what the demo says it does."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.messages = f"{self.url}/actors/v2/{ACTOR}/messages"
        self.api_token = secrets.token_hex(16)
        self.config = workdir / "config.yml"
        self.db_path = workdir / "catalog.sqlite3"
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.steps = 0
        self.uuid = ""
        self.job_token = ""
        import httpx

        self.http = httpx.Client(timeout=30.0)

    # -- plumbing --------------------------------------------------------------------------
    def write_config(self) -> None:
        """The checkout's settings, minus MongoDB, with the store in the temporary directory."""
        import yaml

        from .settings import read_config_file

        config = {k: v for k, v in read_config_file(None).items() if k not in ("mongodb", "serve")}
        config["store"] = {"sqlite_path": str(self.db_path)}
        config["serve"] = {"actors": ACTOR, "api_server": self.url}
        self.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def start_server(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("_REACTOR_") and k != "MONGODB_URI"}
        env["PIPELINEJOBS_API_TOKENS"] = self.api_token
        command = [sys.executable, "-m", "pipelinejobs.cli", "serve", "--config", str(self.config)]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoFailed(f"the server exited with code {self.proc.returncode}:\n{self.server_log()}")
            try:
                if self.http.get(f"{self.url}/healthz").status_code == 200:
                    return
            except Exception:  # not listening yet
                time.sleep(0.1)
        raise DemoFailed(f"the server did not answer within 30 s:\n{self.server_log()}")

    def stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()

    def server_log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def step(self, title: str, why: str, curl: str | None = None) -> None:
        self.steps += 1
        print(f"\n== Step {self.steps}: {title}")
        print(f"   {why}")
        if curl:
            print(f"   $ {curl}")

    def hide(self, text: str) -> str:
        """Show secrets as the shell variables a reader would use."""
        for secret, name in ((self.api_token, "$API_TOKEN"), (self.job_token, "$JOB_TOKEN")):
            if secret:
                text = text.replace(secret, name)
        return text

    def post(self, expect: int, *, params: dict[str, str] | None = None, bearer: bool = True, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.api_token}"} if bearer else {}
        response = self.http.post(self.messages, params=params, headers=headers, **kwargs)
        body = response.json()
        if response.status_code != expect:
            raise DemoFailed(f"expected HTTP {expect}, got {response.status_code}: {self.hide(json.dumps(body))}")
        print(f"   -> HTTP {response.status_code}: {self.hide(self.summary(body))}")
        return body

    def outcome_of(self, message: dict[str, Any]) -> Any:
        """A message sent synchronously, its outcome returned unprinted (the extra jobs of ``--keep``)."""
        headers, synchronous = {"Authorization": f"Bearer {self.api_token}"}, {"_abaco_synchronous": "true"}
        return self.http.post(self.messages, params=synchronous, headers=headers, json=message).json()

    @staticmethod
    def summary(body: dict[str, Any]) -> str:
        result = body.get("result")
        if body.get("status") == "success" and isinstance(result, dict) and "executionId" in result:
            return f"accepted as execution {result['executionId']}"
        if body.get("action") == "create":  # a synchronous answer: the outcome itself
            return f"created job {body['uuid']} in state {body['state']}, with its token"
        return body.get("message") or json.dumps(body)

    def execution(self, execution_id: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_token}"}
        found = self.http.get(f"{self.url}/actors/v2/{ACTOR}/executions/{execution_id}", headers=headers)
        return found.json()["result"]

    def show_job(self, expect_state: str | None) -> dict[str, Any] | None:
        from .cli.jobs import job_text
        from .runtime import open_store
        from .settings import load_settings

        store = open_store(load_settings({}, self.config), {})
        try:
            job = store.find_job(self.uuid)
        finally:
            store.close()
        if job is None:
            print(f"   job {self.uuid} is no longer in the store")
        else:
            print("   " + job_text(job).replace("\n", "\n   "))
        state = job.get("state") if job else None
        if state != expect_state:
            raise DemoFailed(f"expected the job to be {expect_state}, it is {state}")
        return job

    def event_outcome(self, body: dict[str, Any], exit_code: int) -> None:
        execution = self.execution(body["result"]["executionId"])
        if execution["exitCode"] != exit_code:
            raise DemoFailed(f"expected exit code {exit_code}: {self.hide(json.dumps(execution['result']))}")
        outcome = execution["result"]
        detail = f"state {outcome['state']}" if exit_code == 0 else f"{outcome['kind']}: {outcome['message']}"
        print(f"   -> the manager ran it: exit code {exit_code}, {detail}")

    # -- the walk-through ------------------------------------------------------------------
    def run(self) -> int:
        from .cli import main as cli

        self.write_config()
        self.step(
            "start the manager's HTTP endpoint",
            "`pipelinejobs serve` answers like Abaco's messages API for actor "
            f"{ACTOR}; jobs live in a SQLite file here, no MongoDB needed.",
            f"pipelinejobs serve --config {self.config} --port {self.port}   # API token from PIPELINEJOBS_API_TOKENS",
        )
        self.start_server()
        print(f"   -> listening on {self.url} (server log: {self.log_path})")

        pipeline_file = self.workdir / "pipeline.json"
        pipeline_file.write_text(json.dumps(PIPELINE, indent=2), encoding="utf-8")
        self.step(
            "register the seed's example pipeline",
            "A job always belongs to a registered pipeline; its uuid is computed from its id and components.",
            f"pipelinejobs pipeline register {pipeline_file}",
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli(["--config", str(self.config), "--json", "pipeline", "register", str(pipeline_file)])
        if code != 0:
            raise DemoFailed(f"the pipeline was not registered (exit code {code})")
        pipeline = json.loads(printed.getvalue())["pipeline"]["uuid"]
        print(f"   -> pipeline {PIPELINE['id']} registered as {pipeline}")

        create = {"pipeline_uuid": pipeline, "archive_path": "/products/v2/tacobot/demo", "data": {"sample": "s1"}}
        self.step(
            "create a job (a PipelineJobAction message)",
            "With _abaco_synchronous=true the answer is the result itself: the new job's uuid and its token.",
            f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(create)}' "
            f"'{self.messages}?_abaco_synchronous=true'",
        )
        result = self.post(200, params={"_abaco_synchronous": "true"}, json=create)
        if result.get("status") != "ok":
            raise DemoFailed(f"the job was not created: {result}")
        self.uuid, self.job_token = result["uuid"], result["token"]
        print(f"   -> job {self.uuid}; its token is kept as $JOB_TOKEN (every later event must carry it)")
        self.show_job("CREATED")

        run = {"uuid": self.uuid, "name": "run", "token": self.job_token}
        self.step(
            "a JSON event: the job started running",
            "The seed's basic message, a PipelineJobEvent in the POST body.",
            self.hide(f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(run)}' {self.messages}"),
        )
        self.event_outcome(self.post(200, json=run), 0)
        self.show_job("RUNNING")

        params = {"uuid": self.uuid, "name": "update", "token": self.job_token}
        self.step(
            "an event by URL parameters with a JSON body",
            "uuid, name and token go in the URL; the JSON body becomes the event's data in the history.",
            self.hide(
                f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(DATA)}' "
                f"'{self.messages}?uuid={self.uuid}&name=update&token={self.job_token}'"
            ),
        )
        self.event_outcome(self.post(200, params=params, content=json.dumps(DATA)), 0)
        self.show_job("RUNNING")

        nonce = self.http.post(
            f"{self.url}/actors/v2/{ACTOR}/nonces",
            headers={"Authorization": f"Bearer {self.api_token}"},
            json={"maxUses": 1, "description": "demo webhook"},
        ).json()["result"]
        self.step(
            "the same, authenticated by a nonce instead of a bearer token",
            "A nonce (made with POST .../nonces, here good for 1 use) lets a webhook post without a token:"
            " this is how job callbacks reach the manager.",
            self.hide(
                f"curl -XPOST --data '{json.dumps(DATA)}' "
                f"'{self.messages}?uuid={self.uuid}&name=finish&token={self.job_token}&x-nonce=$NONCE'"
            ),
        )
        with_nonce = {"uuid": self.uuid, "name": "finish", "token": self.job_token, "x-nonce": nonce["id"]}
        self.event_outcome(self.post(200, params=with_nonce, bearer=False, content=json.dumps(DATA)), 0)
        self.show_job("FINISHED")

        self.step(
            "the used-up nonce is refused",
            "The nonce allowed one use; Abaco answers HTTP 400 and the job is not touched.",
            self.hide(f"curl -XPOST --data '{json.dumps(DATA)}' '{self.messages}?uuid=...&name=finish&x-nonce=$NONCE'"),
        )
        self.post(400, params=with_nonce, bearer=False, content=json.dumps(DATA))
        self.show_job("FINISHED")

        validate = {"uuid": self.uuid, "token": self.job_token, "name": "validate"}
        self.step(
            "a bearer-token request (the seed's Authorization: Bearer example)",
            "The platform authenticates the caller; the job token inside the message authorizes the change.",
            self.hide(
                f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(validate)}' {self.messages}"
            ),
        )
        self.event_outcome(self.post(200, json=validate), 0)
        self.show_job("VALIDATING")

        wrong = {"uuid": self.uuid, "token": "0dc73dc3ff39b49a", "name": "validated"}
        self.step(
            "an event with the wrong job token",
            "Accepted by the platform (HTTP 200, as in Abaco) but refused by the manager: exit code 1, no change.",
            f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(wrong)}' {self.messages}",
        )
        self.event_outcome(self.post(200, json=wrong), 1)
        self.show_job("VALIDATING")

        delete: dict[str, Any] = {"uuid": self.uuid, "action": "delete", "token": self.job_token}
        self.step(
            "delete the job (a PipelineJobDeleteAction without force)",
            "Without force the job is hidden: it stays in the store, with its history, but accepts no events.",
            self.hide(
                f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(delete)}' {self.messages}"
            ),
        )
        self.event_outcome(self.post(200, json=delete), 0)
        job = self.show_job("VALIDATING")
        if job is None or job.get("_visible") is not False:
            raise DemoFailed("the job should be hidden")

        delete["force"] = True
        self.step(
            "delete it for good (the seed's delete message, force: true)",
            "With force the job is removed; a tombstone with its last content is kept in the audit trail.",
            self.hide(
                f"curl -XPOST -H 'Authorization: Bearer $API_TOKEN' --data '{json.dumps(delete)}' {self.messages}"
            ),
        )
        self.event_outcome(self.post(200, json=delete), 0)
        self.show_job(None)

        if self.api_token in self.server_log() or self.job_token in self.server_log():
            raise DemoFailed("a secret reached the server log")
        print(f"\nDemo finished: all {self.steps} steps behaved as described; no secret reached the server log.")
        return 0

    # -- --keep: the web view on what the demo made --------------------------------------------
    def keep_serving(self) -> int:
        """Add jobs worth looking at, print the web view's URL and how to sign in, serve until Ctrl-C."""
        pipeline = "10650844-1baa-55c5-a481-5e945b19c065"  # registered in step 2
        self.step(
            "jobs to look at in the web view",
            "Three more jobs: one finished, one running with updates, one failed (the demo's own job was deleted).",
        )
        walks = {"finished": ["run", "update", "finish"], "running": ["run", "update"], "failed": ["run", "fail"]}
        first = ""
        for label, names in walks.items():
            data = {"sample": f"s-{label}"}
            create = {"pipeline_uuid": pipeline, "archive_path": f"/products/v2/tacobot/{label}", "data": data}
            created = self.outcome_of(create)
            if created.get("status") != "ok":
                raise DemoFailed(f"a job was not created: {self.hide(json.dumps(created))}")
            for i, name in enumerate(names):
                event = {"uuid": created["uuid"], "name": name, "token": created["token"], "data": {"step": i}}
                answer = self.outcome_of(event)
                if answer.get("status") != "ok":
                    raise DemoFailed(f"event {name} was refused: {answer.get('message')}")
            first = first or created["uuid"]
            print(f"   -> job {created['uuid']}: {' -> '.join(['create', *names])}")
        nonce = self.http.post(
            f"{self.url}/actors/v2/{ACTOR}/nonces",
            headers={"Authorization": f"Bearer {self.api_token}"},
            json={"level": "READ", "maxUses": -1, "description": "demo web view"},
        ).json()["result"]["id"]
        print(f"\n== The web view: {self.url}/ui/")
        print(f"   Sign in there with the demo's API token: {self.api_token}")
        print(f"   or open it with a READ nonce, no sign-in: {self.url}/ui/?x-nonce={nonce}")
        print(f"   A job page: {self.url}/ui/jobs/{first} (new events appear on it without a reload)")
        print("   Serving until Ctrl-C.", flush=True)
        assert self.proc is not None
        code = self.proc.wait()
        raise DemoFailed(f"the server stopped by itself (exit code {code}):\n{self.server_log()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelinejobs.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="afterwards, keep serving the web view (/ui/) until Ctrl-C")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("_REACTOR_")]:
        del os.environ[name]  # the demo's settings come only from its own config file
    with tempfile.TemporaryDirectory(prefix="pipelinejobs-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            code = demo.run()
            return demo.keep_serving() if args.keep and code == 0 else code
        except KeyboardInterrupt:
            print("\nStopped; the demo's store is removed.")
            return 0
        except DemoFailed as exc:
            print(f"\nDEMO FAILED at step {demo.steps}: {demo.hide(str(exc))}", file=sys.stderr)
            tail = demo.server_log().splitlines()[-20:]
            print("last server log lines:\n" + demo.hide("\n".join(tail)), file=sys.stderr)
            return 1
        finally:
            demo.stop_server()


if __name__ == "__main__":
    sys.exit(main())
