"""An acknowledged event survives a crash of the database: SIGKILL of a secantusd-py started durable.

The server runs with ``--sync-on-commit`` (its durable option) and the store with its
default write concern (majority, journaled). Events are acknowledged by the service
in-process and by reactor.py as Abaco runs it; the server is then killed without
warning, started again on the same files, and every acknowledged event must be there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pipelinejobs import documents, identifiers, service
from pipelinejobs.messages import EventMessage
from pipelinejobs.settings import Identity, load_settings
from pipelinejobs.store.base import iter_history
from pipelinejobs.store.mongo import MongoJobStore
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT, Reactor, _free_port, _wait_for_port

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


def _start(storage: Path, port: int) -> subprocess.Popen:
    binary = Path(sys.executable).parent / "secantusd-py"
    proc = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage), "--sync-on-commit"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port, proc)
    return proc


def test_acknowledged_events_survive_a_sigkill_of_the_database(tmp_path: Path) -> None:
    storage, port = tmp_path / "data", _free_port()
    uri, database = f"mongodb://127.0.0.1:{port}", "durable"
    server = _start(storage, port)
    try:
        settings = load_settings({}, ROOT / "config.yml")
        with MongoJobStore(uri, database) as store:
            store.ensure_indexes()
            data = {"n": 1}
            job = documents.new_job(
                uuid=identifiers.job_uuid(EXAMPLE_PIPELINE_UUID, [], data),
                pipeline_uuid=EXAMPLE_PIPELINE_UUID,
                archive_path="/products/x",
                archive_system=None,
                data=data,
                session=None,
                child_of=[],
                identity=Identity("tester", "P", "sd2e", "sd2e.org"),
                now=NOW,
            )
            store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], NOW))
            token = identifiers.job_token(job["_salt"], job["uuid"], job["_admin"])
            acknowledged = []
            for i in range(20):
                message = EventMessage(uuid=job["uuid"], name="update", token=token, data={"i": i})
                outcome = service.handle(message, store=store, settings=settings, now=NOW + timedelta(seconds=i))
                acknowledged.append(outcome["event_uuid"])
        result = Reactor(uri, database).run({"uuid": job["uuid"], "name": "run", "token": token, "data": {"i": 20}})
        assert result.returncode == 0, result.stderr
        acknowledged.append(result.result["event_uuid"])
    finally:
        os.kill(server.pid, signal.SIGKILL)  # no shutdown, no flush
        server.wait()

    server = _start(storage, port)
    try:
        with MongoJobStore(uri, database) as store:
            logged = [r.event_uuid for r in iter_history(store, job["uuid"])][1:]
            found = store.find_job(job["uuid"])
        assert logged == acknowledged
        assert found is not None and found["_properties"]["revision"] == 21 and found["state"] == "RUNNING"
        assert [h["uuid"] for h in found["history"]][1:] == acknowledged
    finally:
        server.terminate()
        server.wait(timeout=30)
