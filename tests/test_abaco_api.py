"""`pipelinejobs serve` answers Abaco's nonces and executions API as Abaco does (issue 9).

The expected shapes and texts are read from Abaco's source (TACC/abaco
``actors/controllers.py`` and the ``display()`` methods in ``actors/models.py``,
master and prod-v3) and tapisservice (``auth.validate_token``, ``tapisflask.utils.ok``),
written here as fixed values: nothing is computed by the code under test. Every
test talks to a live server subprocess over real HTTP; refusals are checked to
have written nothing and to have logged no traceback.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import web
from tests.conftest import ROOT
from tests.server_fixtures import LiveServer
from tests.test_server import new_job

# Nonce.display() in Abaco: the PARAMS minus db_id, tenant and an unset alias, in camel case, plus _links
ABACO_NONCE_KEYS = {
    "id",
    "actorId",
    "owner",
    "roles",
    "apiServer",
    "level",
    "maxUses",
    "description",
    "createTime",
    "lastUseTime",
    "currentUses",
    "remainingUses",
    "_links",
}
MAX_USES_PARSE = (
    "Invalid nonce description: "
    "{'maxUses': 'Maximum number of times this nonce can be redeemed. Default is unlimited.'}"
)
MAX_USES_RANGE = "The max uses parameter must be a positive integer or -1 (to denote unlimited uses)."
BAD_LEVEL = "Invalid nonce description. The level attribute must be one of: ('NONE', 'READ', 'EXECUTE', 'UPDATE')"


@pytest.fixture(params=["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


def _nonces_url(server: LiveServer, *, v3: bool = False) -> str:
    return f"{server.actor_url(v3=v3)}/nonces"


def _nonces(server: LiveServer) -> list[dict[str, Any]]:
    return web.get(_nonces_url(server), headers=server.auth).json()["result"]


def _event(server: LiveServer, uuid: str, token: str, name: str, **params: str) -> str:
    body = {"uuid": uuid, "name": name, "token": token}
    response = web.post(server.messages_url, headers=server.auth, params=params, json=body)
    assert response.status_code == 200, response.text
    return response.json()["result"]["executionId"]


def _jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token (unsigned: serve can't verify Tapis signatures and must not accept it)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _no_traceback(server: LiveServer) -> None:
    log = server.read_log()
    assert "Traceback" not in log and "Internal server error" not in log, log[-2000:]


# -- envelopes: each endpoint's own message ------------------------------------------------------
def test_each_endpoint_answers_with_its_own_message(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    uuid, token = new_job(server)
    execution_id = _event(server, uuid, token, "run")
    created = web.post(_nonces_url(server), headers=server.auth, json={"maxUses": 3})
    nonce_id = created.json()["result"]["id"]
    base = server.actor_url()
    calls = [
        (created, "Actor nonce created successfully."),
        (web.get(f"{base}/nonces", headers=server.auth), "Actor nonces retrieved successfully."),
        (web.get(f"{base}/nonces/{nonce_id}", headers=server.auth), "Actor nonce retrieved successfully."),
        (web.get(f"{base}/executions", headers=server.auth), "Actor executions retrieved successfully."),
        (
            web.get(f"{base}/executions/{execution_id}", headers=server.auth),
            "Actor execution retrieved successfully.",
        ),
        (web.get(f"{base}/executions/{execution_id}/logs", headers=server.auth), "Logs retrieved successfully."),
        (web.delete(f"{base}/nonces/{nonce_id}", headers=server.auth), "Actor nonce deleted successfully."),
    ]
    for response, message in calls:
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["message"]) == ("success", message), response.request.url
        assert "metadata" not in body  # agaveflask's v2 envelope has none


# -- nonce records -------------------------------------------------------------------------------
def test_nonce_record_as_abaco_displays_it(server: LiveServer) -> None:
    response = web.post(_nonces_url(server), headers=server.auth, json={"maxUses": 2, "description": "hooks"})
    nonce = response.json()["result"]
    assert set(nonce) == ABACO_NONCE_KEYS
    actor = f"{server.url}/actors/v2/{server.actor_id}"
    assert nonce["apiServer"] == server.url
    assert nonce["roles"] == []
    assert nonce["_links"] == {
        "self": f"{actor}/nonces/{nonce['id']}",
        "owner": f"{server.url}/profiles/v2/{nonce['owner']}",
        "actor": actor,
    }
    assert nonce["lastUseTime"] == "None"  # display_time(None) in Abaco
    assert (nonce["maxUses"], nonce["remainingUses"], nonce["currentUses"]) == (2, 2, 0)
    # after a use, the time of the use
    assert web.get(f"{actor}/executions", params={"x-nonce": nonce["id"]}).status_code == 200
    [listed] = _nonces(server)
    assert set(listed) == ABACO_NONCE_KEYS and listed["lastUseTime"].endswith("Z")
    assert (listed["currentUses"], listed["remainingUses"]) == (1, 1)
    # Tapis v3: snake case, /v3 links, metadata in the envelope
    v3 = web.get(f"{_nonces_url(server, v3=True)}/{nonce['id']}", headers=server.auth).json()
    assert v3["metadata"] == {}
    shown = v3["result"]
    assert shown["api_server"] == server.url and shown["last_use_time"] == listed["lastUseTime"]
    assert shown["_links"] == {
        "self": f"{server.url}/v3/actors/{server.actor_id}/nonces/{nonce['id']}",
        "owner": f"{server.url}/v3/oauth2/profiles/{nonce['owner']}",
        "actor": f"{server.url}/v3/actors/{server.actor_id}",
    }


def test_unknown_nonce_is_abacos_text(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    for method in ("GET", "DELETE"):
        response = web.request(method, f"{_nonces_url(server)}/SD2E_AAAAAAAAAAAAA", headers=server.auth)
        assert (response.status_code, response.json()["message"]) == (400, "Nonce not found."), method
        assert response.json()["status"] == "error" and response.json()["result"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"maxUses": 0}, MAX_USES_RANGE),
        ({"maxUses": -2}, MAX_USES_RANGE),
        ({"maxUses": "many"}, MAX_USES_PARSE),
        ({"maxUses": 2.5}, MAX_USES_PARSE),
        ({"maxUses": None}, "The max uses parameter must be an integer."),
        ({"level": "ADMIN"}, BAD_LEVEL),
        ({"level": "execute"}, BAD_LEVEL),  # Abaco's levels are case-sensitive
        ({"level": None}, BAD_LEVEL),
    ],
)
def test_bad_nonce_values_get_abacos_texts(live_server_sqlite: LiveServer, body: dict[str, Any], message: str) -> None:
    server = live_server_sqlite
    response = web.post(_nonces_url(server), headers=server.auth, json=body)
    assert (response.status_code, response.json()["message"]) == (400, message)
    assert _nonces(server) == []


def test_v3_names_the_field_as_sent(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    response = web.post(_nonces_url(server, v3=True), headers=server.auth, json={"max_uses": "x"})
    assert response.status_code == 400
    assert response.json()["message"] == MAX_USES_PARSE.replace("'maxUses'", "'max_uses'")
    ok = web.post(_nonces_url(server, v3=True), headers=server.auth, json={"max_uses": "5", "level": "NONE"})
    assert ok.status_code == 200 and ok.json()["result"]["max_uses"] == 5
    # a NONE nonce exists (Abaco allows it) but admits nothing
    refused = web.get(f"{server.actor_url()}/executions", params={"x-nonce": ok.json()["result"]["id"]})
    assert refused.json()["message"] == "Nonce does not have sufficient permissions level."


# -- hostile nonce creation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("max_uses", "message"),
    [
        (10**30, f"{MAX_USES_RANGE} The largest is 9223372036854775807."),
        (2**63, f"{MAX_USES_RANGE} The largest is 9223372036854775807."),
        ("1" + "0" * 5000, f"{MAX_USES_RANGE} The largest is 9223372036854775807."),
        ("--5", MAX_USES_PARSE),
        ("²", MAX_USES_PARSE),
        ("1_000", MAX_USES_PARSE),
        (float("nan"), MAX_USES_PARSE),
    ],
    ids=["1e30", "2**63", "5001-digit-string", "--5", "superscript-2", "underscore", "nan"],
)
def test_hostile_max_uses_is_a_clear_400(server: LiveServer, max_uses: Any, message: str) -> None:
    body = json.dumps({"maxUses": max_uses})  # json.dumps writes NaN as Python reads it
    headers = {**server.auth, "Content-Type": "application/json"}
    response = web.post(_nonces_url(server), headers=headers, content=body)
    assert (response.status_code, response.json()["message"]) == (400, message)
    assert _nonces(server) == []
    _no_traceback(server)


def test_largest_max_uses_is_kept_exactly(server: LiveServer) -> None:
    response = web.post(_nonces_url(server), headers=server.auth, json={"maxUses": 2**63 - 1})
    assert response.status_code == 200, response.text
    [stored] = _nonces(server)
    assert stored["maxUses"] == stored["remainingUses"] == 2**63 - 1


def test_huge_json_number_is_not_a_default_nonce(live_server_sqlite: LiveServer) -> None:
    """A JSON body Python cannot read must not fall back to form parsing and create an unlimited nonce."""
    server = live_server_sqlite
    body = b'{"maxUses": 1' + b"0" * 5000 + b"}"
    response = web.post(_nonces_url(server), headers=server.auth, content=body)
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid nonce description: Unable to process the JSON description."
    assert _nonces(server) == []


def test_cli_refuses_max_uses_beyond_int64(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "catalog.sqlite3"),
    }
    command = [sys.executable, "-m", "pipelinejobs.cli", "nonce", "create", "--actor", "pjmanager0001"]
    proc = subprocess.run(
        [*command, "--max-uses", "100000000000000000000"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 3, proc.stderr  # bad message
    assert "Traceback" not in proc.stderr and MAX_USES_RANGE in proc.stderr + proc.stdout


# -- executions ----------------------------------------------------------------------------------
def test_executions_summary_and_records(server: LiveServer) -> None:
    uuid, token = new_job(server)
    first = _event(server, uuid, token, "run")
    second = _event(server, uuid, token, "update")
    url = f"{server.actor_url()}/executions"
    summary = web.get(url, headers=server.auth, params={"limit": "1"}).json()["result"]
    assert summary["apiServer"] == server.url and summary["owner"] == "tester"  # serve's user (USER=tester)
    assert summary["actorId"] == server.actor_id
    assert summary["totalExecutions"] == 3  # create + run + update: all of them, not just the page
    assert (summary["totalCpu"], summary["totalIo"]) == (0, 0)
    assert isinstance(summary["totalRuntime"], int | float) and summary["totalRuntime"] >= 0
    assert summary["_links"] == {"self": url, "owner": f"{server.url}/profiles/v2/tester"}
    [row] = summary["executions"]
    assert row["id"] == second
    assert {"id", "status", "startTime", "finishTime", "messageReceivedTime"} <= set(row)
    assert row["startTime"].endswith("Z")
    # one execution
    record = web.get(f"{url}/{first}", headers=server.auth).json()["result"]
    assert record["apiServer"] == server.url and (record["cpu"], record["io"]) == (0, 0)
    assert record["executor"] == "tester"
    assert record["_links"] == {
        "self": f"{url}/{first}",
        "owner": f"{server.url}/profiles/v2/tester",
        "logs": f"{url}/{first}/logs",
    }
    assert "logs" not in record
    logs = web.get(f"{url}/{first}/logs", headers=server.auth).json()["result"]
    assert logs["_links"] == {
        "self": f"{url}/{first}/logs",
        "owner": f"{server.url}/profiles/v2/tester",
        "execution": f"{url}/{first}",
    }
    # v3: snake case and /v3 links
    v3 = web.get(f"{server.actor_url(v3=True)}/executions", headers=server.auth).json()
    assert v3["metadata"] == {} and v3["result"]["total_executions"] == 3
    assert {"start_time", "finish_time", "message_received_time"} <= set(v3["result"]["executions"][0])
    assert v3["result"]["_links"]["owner"] == f"{server.url}/v3/oauth2/profiles/tester"


def test_unknown_execution_is_a_400_with_abacos_text(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    expected = f"No executions found with actor id of {server.actor_id} and execution id of nope."
    for tail in ("nope", "nope/logs"):
        response = web.get(f"{server.actor_url()}/executions/{tail}", headers=server.auth)
        assert (response.status_code, response.json()["message"]) == (400, expected), tail


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        ("%C2%B2", 400, 'Inputted "limit" paramater must be an int. Received: ²'),
        ("--5", 400, 'Inputted "limit" paramater must be an int. Received: --5'),
        ("abc", 400, 'Inputted "limit" paramater must be an int. Received: abc'),
        ("-1", 400, 'Inputted "limit" must be positive. Received: -1'),
        ("1" + "0" * 40, 200, "Actor executions retrieved successfully."),
        ("0", 200, "Actor executions retrieved successfully."),
    ],
    ids=["superscript-2", "--5", "abc", "negative", "huge", "zero"],
)
def test_executions_limit_is_checked(server: LiveServer, raw: str, status: int, message: str) -> None:
    response = web.get(f"{server.actor_url()}/executions?limit={raw}", headers=server.auth)
    assert (response.status_code, response.json()["message"]) == (status, message)
    if raw == "0":
        assert response.json()["result"]["executions"] == []
    _no_traceback(server)


# -- msg as Abaco keeps it ---------------------------------------------------------------------------
def test_msg_of_message_attribute_and_binary_body(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    uuid, token = new_job(server)
    inner = {"uuid": uuid, "name": "run", "token": token}
    response = web.post(server.messages_url, headers=server.auth, json={"message": inner})
    # flask-restful's RequestParser(type=str) stores str(value): the Python repr
    assert response.json()["result"]["msg"] == f"{{'uuid': '{uuid}', 'name': 'run', 'token': '{token}'}}"
    binary = web.post(
        server.messages_url,
        headers={**server.auth, "Content-Type": "application/octet-stream"},
        content=b"\x00\x01binary",
    )
    assert binary.status_code == 200 and binary.json()["result"]["msg"] == "binary - omitted"
    # an empty JSON body is kept as parsed, not stringified
    empty = web.post(server.messages_url, headers=server.auth, json={})
    assert empty.json()["result"]["msg"] == {}


# -- Tapis v3 tokens -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "Could not parse the Tapis access token."),
        ("a.b.c", "Could not parse the Tapis access token."),
        (
            _jwt({"sub": "someone"}),
            "Unable to process Tapis token; could not parse the tenant_id. It is possible "
            "the token is in a format no longer supported by the platform.",
        ),
        (_jwt({"tapis/tenant_id": "tacc", "tapis/username": "someone"}), "Invalid Tapis token."),
    ],
    ids=["opaque", "three-parts", "no-tenant", "unsigned"],
)
def test_v3_bad_token_is_refused_even_with_a_nonce(server: LiveServer, token: str, message: str) -> None:
    nonce = web.post(_nonces_url(server), headers=server.auth, json={}).json()["result"]["id"]
    url = f"{server.actor_url(v3=True)}/messages"
    response = web.post(url, headers={"X-Tapis-Token": token}, params={"x-nonce": nonce}, json={"a": 1})
    body = response.json()
    assert (response.status_code, body["message"], body["result"]) == (400, message, None)
    assert body["metadata"] == {}
    [stored] = _nonces(server)
    assert stored["currentUses"] == 0  # the nonce was not consulted
    assert web.get(f"{server.actor_url()}/executions", headers=server.auth).json()["result"]["executions"] == []
    assert token not in server.read_log()


def test_a_valid_token_wins_over_the_nonce(live_server_sqlite: LiveServer) -> None:
    """Abaco checks a nonce only when no token was sent: a good token does not spend it."""
    server = live_server_sqlite
    nonce = web.post(_nonces_url(server), headers=server.auth, json={"maxUses": 1}).json()["result"]["id"]
    for url, headers in (
        (server.messages_url, server.auth),
        (f"{server.actor_url(v3=True)}/messages", {"X-Tapis-Token": server.api_token}),
    ):
        response = web.post(url, headers=headers, params={"x-nonce": nonce}, json={"a": 1})
        assert response.status_code == 200, response.text
    [stored] = _nonces(server)
    assert (stored["currentUses"], stored["remainingUses"]) == (0, 1)
