"""`pipelinejobs serve` over real HTTP: the seed's curl commands, Abaco's auth rules, nonces, executions.

Every test talks to a live server (tests/server_fixtures.py: serve's app in this process, or the
command itself where the process is what is checked) and
checks the stored job directly, so "rejected" always means "and nothing was
written". Tests marked with ``backend`` run on MongoDB and on SQLite.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests import web
from tests.server_fixtures import LiveServer, new_job

CURL = shutil.which("curl")
DATA = {"arbitrary": "key value data"}


@pytest.fixture(params=["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


# -- helpers -------------------------------------------------------------------------------------
def job(server: LiveServer, uuid: str) -> dict[str, Any] | None:
    store = server.open_store()
    try:
        return store.find_job(uuid)
    finally:
        store.close()


def history(server: LiveServer, uuid: str) -> list[str]:
    found = job(server, uuid)
    assert found is not None
    return [entry["name"] for entry in found["history"]]


def send_event(server: LiveServer, uuid: str, token: str, name: str) -> dict[str, Any]:
    response = web.post(server.messages_url, headers=server.auth, json={"uuid": uuid, "name": name, "token": token})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def make_nonce(server: LiveServer, actor: str | None = None, **body: Any) -> dict[str, Any]:
    response = web.post(f"{server.actor_url(actor)}/nonces", headers=server.auth, json=body)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def executions(server: LiveServer) -> list[dict[str, Any]]:
    response = web.get(f"{server.actor_url()}/executions", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json()["result"]["executions"]


def execution(server: LiveServer, execution_id: str) -> dict[str, Any]:
    response = web.get(f"{server.actor_url()}/executions/{execution_id}", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def execution_logs(server: LiveServer, execution_id: str) -> str:
    response = web.get(f"{server.actor_url()}/executions/{execution_id}/logs", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json()["result"]["logs"]


def curl(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the real curl; returns (HTTP status, JSON body)."""
    if CURL:
        proc = subprocess.run([CURL, "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        body, _, code = proc.stdout.rpartition("\n")
        return int(code), json.loads(body)
    # no curl binary: the same request through httpx (-XPOST, -H "K: V", --data D, URL)
    headers, data, url = {}, None, args[-1]
    for flag, value in itertools.pairwise(args):
        if flag == "-H":
            key, _, val = value.partition(":")
            headers[key.strip()] = val.strip()
        elif flag == "--data":
            data = value
    response = web.post(url, headers=headers, content=data)
    return response.status_code, response.json()


# -- the seed's commands ------------------------------------------------------------------------
def test_seed_curl_commands(server: LiveServer) -> None:
    uuid, token = new_job(server)
    send_event(server, uuid, token, "run")
    base = server.messages_url

    # 1. the seed's event by URL parameters, as printed (it carries no credentials): refused like Abaco
    code, body = curl(
        "-XPOST", "--data", '{"arbitrary": "key value data"}', f"{base}?uuid={uuid}&name=finish&token={token}"
    )
    assert (code, body["message"], body["result"]) == (400, "No JWT or nonce provided.", None)
    assert history(server, uuid) == ["create", "run"]

    # 2. the bearer-token example
    event = f'{{"uuid": "{uuid}", "token": "{token}", "name": "finish"}}'
    code, body = curl("-XPOST", "-H", f"Authorization: Bearer {server.api_token}", "--data", event, base)
    assert code == 200 and body["status"] == "success"
    assert re.fullmatch(r"[A-Za-z0-9]{13}", body["result"]["executionId"])
    assert body["result"]["msg"] == {"uuid": uuid, "token": token, "name": "finish"}
    assert body["result"]["_links"]["self"].endswith(
        f"/actors/v2/{server.actor_id}/executions/{body['result']['executionId']}"
    )
    assert job(server, uuid)["state"] == "FINISHED"

    # 3. the nonce example: URL parameters, a JSON body that becomes the event's data, x-nonce
    nonce = make_nonce(server)["id"]
    url = f"{base}?uuid={uuid}&name=finish&token={token}&x-nonce={nonce}"
    code, body = curl("-XPOST", "--data", '{"arbitrary": "key value data"}', url)
    assert code == 200, body
    assert execution(server, body["result"]["executionId"])["exitCode"] == 0
    stored = job(server, uuid)
    assert [e["name"] for e in stored["history"]] == ["create", "run", "finish", "finish"]
    assert stored["history"][-1]["data"] == DATA

    # 4. the PipelineJobEvent example, with data, posted with a bearer token
    event = json.dumps({"uuid": uuid, "data": DATA, "name": "finish", "token": token})
    code, body = curl("-XPOST", "-H", f"Authorization: Bearer {server.api_token}", "--data", event, base)
    assert code == 200 and execution(server, body["result"]["executionId"])["exitCode"] == 0
    assert len(job(server, uuid)["history"]) == 5

    # 5. the PipelineJobDeleteAction example (force: true removes the job)
    delete = json.dumps({"uuid": uuid, "action": "delete", "force": True, "token": token})
    code, body = curl("-XPOST", "-H", f"Authorization: Bearer {server.api_token}", "--data", delete, base)
    assert code == 200 and execution(server, body["result"]["executionId"])["exitCode"] == 0
    assert job(server, uuid) is None


# -- authentication -----------------------------------------------------------------------------
def test_auth_table_rejects_without_handling(server: LiveServer) -> None:
    uuid, token = new_job(server)
    read_nonce = make_nonce(server, level="READ")["id"]
    used_nonce = make_nonce(server, maxUses=1)["id"]
    spent = web.get(f"{server.actor_url()}/executions", params={"x-nonce": used_nonce})  # a use is a use
    assert spent.status_code == 200
    other_nonce = make_nonce(server, actor=server.other_actor_id)["id"]
    bearer = {"Authorization": "Bearer not-the-api-token"}
    cases = [
        ("no credentials", server.messages_url, {}, {}, 400, "No JWT or nonce provided."),
        ("wrong bearer", server.messages_url, bearer, {}, 400, "Invalid JWT."),
        ("wrong X-Tapis-Token", server.messages_url, {"X-Tapis-Token": "forged"}, {}, 400, "Invalid JWT."),
        ("unknown nonce", server.messages_url, {}, {"x-nonce": "SD2E_AAAAAAAAAAAAA"}, 400, "Nonce does not exist."),
        (
            "exhausted nonce",
            server.messages_url,
            {},
            {"x-nonce": used_nonce},
            400,
            "No remaining uses left for this nonce.",
        ),
        (
            "READ nonce posting",
            server.messages_url,
            {},
            {"x-nonce": read_nonce},
            400,
            "Nonce does not have sufficient permissions level.",
        ),
        ("another actor's nonce", server.messages_url, {}, {"x-nonce": other_nonce}, 400, "Nonce does not exist."),
        (
            "unknown actor",
            f"{server.url}/actors/v2/nosuchactor/messages",
            server.auth,
            {},
            404,
            "Actor with identifier 'nosuchactor' not found",
        ),
    ]
    before_job, before_executions = job(server, uuid), executions(server)
    for name, url, headers, params, code, message in cases:
        response = web.post(
            url, headers=headers, params={**params, "uuid": uuid, "name": "run", "token": token}, json=DATA
        )
        body = response.json()
        assert (response.status_code, body["message"]) == (code, message), name
        assert body["status"] == "error" and body["result"] is None, name
        assert job(server, uuid) == before_job, f"{name}: the job changed"
        assert executions(server) == before_executions, f"{name}: a message was handled"
    nonces = web.get(f"{server.actor_url()}/nonces", headers=server.auth).json()["result"]
    uses = {n["id"]: (n["currentUses"], n["remainingUses"]) for n in nonces}
    assert uses[read_nonce] == (0, -1)  # a refused level costs no use
    assert uses[used_nonce] == (1, 0)


@pytest.mark.parametrize("backend", ["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def test_nonce_race_admits_exactly_max_uses(backend: str, request: pytest.FixtureRequest) -> None:
    server: LiveServer = request.getfixturevalue(backend)
    uuid, token = new_job(server)
    send_event(server, uuid, token, "run")
    max_uses, attempts = 5, 40
    nonce = make_nonce(server, maxUses=max_uses)["id"]
    params = {"uuid": uuid, "name": "update", "token": token, "x-nonce": nonce}

    def attempt(i: int) -> tuple[int, str]:
        response = web.post(server.messages_url, params=params, json={"attempt": i}, timeout=60)
        return response.status_code, response.json()["message"]

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        results = list(pool.map(attempt, range(attempts)))
    expected = [(200, "The request was successful")] * max_uses
    expected += [(400, "No remaining uses left for this nonce.")] * (attempts - max_uses)
    assert sorted(results) == sorted(expected)
    assert history(server, uuid).count("update") == max_uses
    record = web.get(f"{server.actor_url()}/nonces/{nonce}", headers=server.auth).json()["result"]
    assert (record["currentUses"], record["remainingUses"]) == (max_uses, 0)


# -- nonces -------------------------------------------------------------------------------------
def test_nonce_lifecycle_and_validation(live_server: LiveServer) -> None:
    server = live_server
    nonce = make_nonce(server, description="callbacks")
    assert re.fullmatch(r"SD2E_[A-Za-z0-9]{13}", nonce["id"])
    expected = {
        "actorId": server.actor_id,
        "level": "EXECUTE",
        "maxUses": -1,
        "currentUses": 0,
        "remainingUses": -1,
        "description": "callbacks",
        "lastUseTime": "None",  # as Abaco displays a time never set
    }
    assert {k: nonce[k] for k in expected} == expected
    assert set(nonce) == {*expected, "id", "owner", "createTime", "roles", "apiServer", "_links"}
    # an unlimited nonce counts uses and never runs out
    for _ in range(3):
        assert web.get(f"{server.actor_url()}/executions", params={"x-nonce": nonce["id"]}).status_code == 200
    shown = web.get(f"{server.actor_url()}/nonces/{nonce['id']}", headers=server.auth).json()["result"]
    assert (shown["currentUses"], shown["remainingUses"]) == (3, -1) and shown["lastUseTime"]
    listed = web.get(f"{server.actor_url()}/nonces", headers=server.auth).json()["result"]
    assert [n["id"] for n in listed] == [nonce["id"]]
    assert web.get(f"{server.actor_url(server.other_actor_id)}/nonces", headers=server.auth).json()["result"] == []
    # v3 paths answer in snake case
    v3 = web.post(f"{server.actor_url(v3=True)}/nonces", headers=server.auth, json={"maxUses": 2}).json()["result"]
    assert v3["max_uses"] == 2 and v3["remaining_uses"] == 2 and v3["actor_id"] == server.actor_id
    # deleting
    gone = web.delete(f"{server.actor_url()}/nonces/{nonce['id']}", headers=server.auth)
    assert gone.status_code == 200
    again = web.get(f"{server.actor_url()}/nonces/{nonce['id']}", headers=server.auth)
    assert (again.status_code, again.json()["message"]) == (400, "Nonce not found.")
    assert web.post(server.messages_url, params={"x-nonce": nonce["id"]}, json=DATA).json()["message"] == (
        "Nonce does not exist."
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"maxUses": 0}, "The max uses parameter must be a positive integer"),
        ({"maxUses": -2}, "The max uses parameter must be a positive integer"),
        ({"maxUses": "many"}, "Invalid nonce description: {'maxUses'"),
        ({"level": "ADMIN"}, "Invalid nonce description. The level attribute"),
    ],
)
def test_nonce_creation_rejects_bad_values(live_server: LiveServer, body: dict[str, Any], message: str) -> None:
    response = web.post(f"{live_server.actor_url()}/nonces", headers=live_server.auth, json=body)
    assert response.status_code == 400 and response.json()["message"].startswith(message)
    assert web.get(f"{live_server.actor_url()}/nonces", headers=live_server.auth).json()["result"] == []


def test_managing_nonces_needs_a_bearer_token(live_server: LiveServer) -> None:
    nonce = make_nonce(live_server, level="UPDATE")["id"]
    url = f"{live_server.actor_url()}/nonces"
    with_nonce = web.post(url, params={"x-nonce": nonce}, json={})
    assert with_nonce.status_code == 400 and "bearer token" in with_nonce.json()["message"]
    assert web.post(url, json={}).json()["message"] == "No JWT or nonce provided."
    assert len(web.get(url, headers=live_server.auth).json()["result"]) == 1


# -- executions, synchronous calls, message rules -----------------------------------------------
def test_executions_and_logs(live_server: LiveServer) -> None:
    server = live_server
    uuid, token = new_job(server)
    ok = send_event(server, uuid, token, "run")["executionId"]
    bad = send_event(server, uuid, "0dc73dc3ff39b49a", "finish")["executionId"]  # HTTP 200, exit code 1
    record = execution(server, ok)
    assert record["status"] == "COMPLETE" and record["exitCode"] == 0 and record["actorId"] == server.actor_id
    for key in ("messageReceivedTime", "startTime", "finishTime", "runtime"):
        assert record[key] is not None, key
    assert record["result"]["state"] == "RUNNING"
    failed = execution(server, bad)
    assert failed["exitCode"] == 1 and failed["result"]["kind"] == "unauthorized"
    assert [e["id"] for e in executions(server)][:2] == [bad, ok]  # newest first
    logs = execution_logs(server, ok)
    assert f"job {uuid}: CREATED -> RUNNING by 'run'" in logs  # the outcome line (the received line is DEBUG)
    assert json.loads(logs.splitlines()[-1])["state"] == "RUNNING"  # the result line closes the logs
    assert f"rejected a message for {uuid} (unauthorized)" in execution_logs(server, bad)
    v3 = web.get(f"{server.actor_url(v3=True)}/executions/{ok}", headers=server.auth).json()["result"]
    assert v3["exit_code"] == 0 and v3["message_received_time"] == record["messageReceivedTime"]
    missing = web.get(f"{server.actor_url()}/executions/nope", headers=server.auth)
    assert missing.status_code == 400  # Abaco's ResourceError default


def test_synchronous_returns_the_result(live_server: LiveServer) -> None:
    server = live_server
    uuid, token = new_job(server)
    sync = {"_abaco_synchronous": "true"}
    response = web.post(
        server.messages_url, params=sync, headers=server.auth, json={"uuid": uuid, "name": "run", "token": token}
    )
    assert response.status_code == 200
    assert response.json() == {**response.json(), "status": "ok", "action": "event", "state": "RUNNING", "uuid": uuid}
    refused = web.post(
        server.messages_url, params=sync, headers=server.auth, json={"uuid": uuid, "name": "reject", "token": token}
    )
    assert refused.json()["kind"] == "invalid_transition" and refused.headers["x-abaco-exit-code"] == "1"
    assert execution(server, refused.headers["x-abaco-execution-id"])["exitCode"] == 1


def test_message_attribute_and_body_rules(live_server: LiveServer) -> None:
    server = live_server
    uuid, token = new_job(server)
    # what send_message does: {"message": <dict>} arrives as str + Python repr, and is still understood
    wrapped = {"message": {"uuid": uuid, "name": "run", "token": token}, "ignored": 1}
    response = web.post(server.messages_url, headers=server.auth, json=wrapped)
    assert response.json()["result"]["msg"] == str(wrapped["message"])  # Abaco keeps the attribute as a string
    assert job(server, uuid)["state"] == "RUNNING"
    # the message query parameter wins over the body
    as_param = json.dumps({"uuid": uuid, "name": "finish", "token": token})
    response = web.post(server.messages_url, headers=server.auth, params={"message": as_param}, content=b"ignored")
    assert response.status_code == 200 and job(server, uuid)["state"] == "FINISHED"
    # a body that is not JSON, with no message attribute
    before = executions(server)
    response = web.post(server.messages_url, headers=server.auth, content=b"not json at all")
    assert response.status_code == 400
    assert response.json()["message"] == (
        "message POST body could not be serialized. Pass JSON data or use the message attribute."
    )
    assert executions(server) == before


def test_query_parameters_never_reach_settings(live_server: LiveServer, mongo_client: Any) -> None:
    server = live_server
    uuid, token = new_job(server)
    spoof = {
        "_REACTOR_MONGODB_DATABASE": "elsewhere",
        "_REACTOR_MONGODB_AUTHN": "bW9uZ29kYjovLzEyNy4wLjAuMTox",  # mongodb://127.0.0.1:1
        "_abaco_execution_id": "spoofed",
        "MSG": "{'uuid': 'x', 'name': 'run'}",
        "uuid": uuid,
        "name": "run",
        "token": token,
    }
    response = web.post(server.messages_url, headers=server.auth, params=spoof, json=DATA)
    execution_id = response.json()["result"]["executionId"]
    assert execution_id != "spoofed" and execution(server, execution_id)["exitCode"] == 0
    assert job(server, uuid)["state"] == "RUNNING"  # written where the server's own settings say
    assert "elsewhere" not in mongo_client.list_database_names()


# -- secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["live_server_process", "live_server_sqlite_process"], ids=["mongodb", "sqlite"])
def test_logs_never_contain_secrets(kind: str, request: pytest.FixtureRequest) -> None:
    """The whole process's output (its start line, uvicorn's own lines) as an operator sees it."""
    server: LiveServer = request.getfixturevalue(kind)
    uuid, token = new_job(server)  # its result line names the token
    nonce = make_nonce(server)["id"]
    send_event(server, uuid, token, "run")
    web.post(server.messages_url, params={"uuid": uuid, "name": "update", "token": token, "x-nonce": nonce}, json=DATA)
    web.get(f"{server.actor_url()}/nonces/{nonce}", headers=server.auth)
    web.post(server.messages_url, headers={"X-Tapis-Token": server.api_token}, json={"uuid": uuid, "name": "nope"})
    texts = [execution_logs(server, e["id"]) for e in executions(server)]
    assert len(texts) == 4
    texts.append(server.read_log())
    for text in texts:
        for secret in (token, nonce, server.api_token):
            assert secret not in text
    assert any('"token": "*****"' in text for text in texts)  # the creation's result line, masked
    log = server.read_log()
    assert f"listening on {server.url}" in log and server.actor_id in log and server.backend in log


def test_unknown_routes_and_message_count(live_server: LiveServer) -> None:
    missing = web.get(f"{live_server.url}/actors/v2/{live_server.actor_id}/nothing", headers=live_server.auth)
    assert missing.status_code == 404 and missing.json()["status"] == "error"
    count = web.get(live_server.messages_url, headers=live_server.auth)
    assert count.status_code == 200 and count.json()["result"]["messages"] == 0


def test_serve_config_from_config_yml_and_environment(tmp_path: Any) -> None:
    """The proposed `serve` section: actors and token digests from the file, plain tokens only from the environment."""
    import hashlib

    from pipelinejobs.server.execution import serve_config
    from pipelinejobs.settings import load_settings

    path = tmp_path / "config.yml"
    pinned = hashlib.sha256(b"pinned-token-abcdef").hexdigest()
    path.write_text(f"serve:\n  actors: a1, a2\n  api_tokens: ~\n  api_token_sha256: {pinned}\n  tenant: tacc\n")
    settings = load_settings({"_REACTOR_SERVE_API_TOKENS": "env-token-123456"}, path)
    config, plain = serve_config(settings)
    assert config.actors == ("a1", "a2") and config.tenant == "TACC" and plain == ("env-token-123456",)
    assert config.api_tokens.check("env-token-123456") and config.api_tokens.check("pinned-token-abcdef")
    assert not config.api_tokens.check("pinned-token-abcdeF") and not config.api_tokens.check("")
    assert "env-token-123456" in settings.secrets  # so the redactor masks it
    cli_config, _ = serve_config(settings, actors=["b1"], api_tokens=["cli-token-0000"])
    assert (
        cli_config.actors == ("b1",)
        and cli_config.api_tokens.check("cli-token-0000")
        and len(cli_config.api_tokens) == 3
    )
