"""send_message against a live `pipelinejobs serve` and against a tiny scripted HTTP server (retries)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import petname
import pytest

from pipelinejobs.abaco import AbacoError, messages_url, send_message, with_params
from pipelinejobs.errors import ErrorKind
from tests import web
from tests.conftest import EXAMPLE_PIPELINE_UUID
from tests.server_fixtures import LiveServer, free_port

OK = (200, {"status": "success", "message": "The request was successful", "result": {"executionId": "e1"}})


# -- a tiny scripted HTTP server ---------------------------------------------------------------
@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class TinyServer:
    """Answers POSTs from a script of (status, body) pairs (the last one repeats) and records them."""

    port: int
    script: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TinyServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                server.seen.append(
                    Seen(
                        parts.path,
                        parse_qs(parts.query),
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw),
                    )
                )
                index = min(len(server.seen), len(server.script)) - 1
                status, body = server.script[index] if server.script else OK
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def tiny() -> Iterator[TinyServer]:
    server = TinyServer(free_port()).start()
    yield server
    server.stop()


def error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"status": "error", "message": message, "version": "1.0", "result": None}


class Sleeps(list):
    """Records the backoff delays instead of waiting them out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# -- URLs ------------------------------------------------------------------------------------
def test_messages_url_from_an_actor_id_never_has_a_double_slash() -> None:
    assert messages_url("abc123", "https://api.sd2e.org/") == "https://api.sd2e.org/actors/v2/abc123/messages"
    assert messages_url("/abc123/", "https://api.sd2e.org") == "https://api.sd2e.org/actors/v2/abc123/messages"
    full = "https://tacc.tapis.io/v3/actors/abc123/messages"
    assert messages_url(full, None) == full
    with pytest.raises(AbacoError) as err:
        messages_url("abc123", None)
    assert err.value.kind is ErrorKind.CONFIGURATION


def test_params_are_url_encoded_and_join_an_existing_query() -> None:
    url = with_params("https://h/actors/v2/a/messages?x-nonce=TACC_a%2Bb&token=t1", {"session": "a b&c=d", "n": True})
    query = parse_qs(urlsplit(url).query)
    assert query == {"x-nonce": ["TACC_a+b"], "token": ["t1"], "session": ["a b&c=d"], "n": ["true"]}


# -- the tiny server: provenance, retries, no retry on 4xx -------------------------------------
def test_provenance_params_and_auth_arrive(tiny: TinyServer) -> None:
    env = {"_abaco_actor_id": "SRCactor", "_abaco_execution_id": "SRCexec", "SESSION": "fluffy-bunny"}
    env["_abaco_api_server"] = tiny.url + "/"
    message = {"uuid": "1073f4ff-c2b9-5190-bd9a-e6a406d9796a", "name": "run"}
    answer = send_message(
        "pjmanager0001", message, {"token": "0dc73dc3ff39b49a"}, env=env, nonce="TACC_x+y", bearer="B1"
    )
    assert answer == OK[1]
    [seen] = tiny.seen
    assert seen.path == "/actors/v2/pjmanager0001/messages"
    assert seen.body == {"message": message}
    assert seen.query == {
        "x_src_actor_id": ["SRCactor"],
        "x_src_execution_id": ["SRCexec"],
        "x_session": ["fluffy-bunny"],
        "token": ["0dc73dc3ff39b49a"],
        "x-nonce": ["TACC_x+y"],
    }
    assert seen.headers["authorization"] == "Bearer B1" and "x-tapis-token" not in seen.headers
    assert seen.headers["content-type"] == "application/json"


def test_outside_abaco_there_is_no_provenance_and_caller_params_pass(tiny: TinyServer) -> None:
    send_message(tiny.url + "/v3/actors/a1/messages", {"x": 1}, tapis_token="JWT1", env={"PATH": "/bin"})
    send_message(tiny.url + "/v3/actors/a1/messages", {"x": 1}, {"x_session": "mine"}, env={"PATH": "/bin"})
    first, second = tiny.seen
    assert first.query == {} and first.headers["x-tapis-token"] == "JWT1" and "authorization" not in first.headers
    assert second.query == {"x_session": ["mine"]}


# The reactors SDK's sender tags (base-images reactors/utils.py SPECIAL_VARS_MAP), read from there, not from abaco.py.
SDK_SENDER_TAGS = {
    "_abaco_actor_id": "x_src_actor_id",
    "_abaco_execution_id": "x_src_execution_id",
    "APP_ID": "x_src_app_id",
    "JOB_ID": "x_src_job_id",
    "EVENT": "x_src_event",
    "UUID": "x_src_uuid",
    "_event_uuid": "x_session",
}


def test_every_sdk_sender_tag_is_sent(tiny: TinyServer) -> None:
    env = {name: f"value-of-{name}" for name in SDK_SENDER_TAGS}
    send_message(tiny.url + "/m", {"x": 1}, env=env)
    [seen] = tiny.seen
    assert seen.query == {tag: [f"value-of-{name}"] for name, tag in SDK_SENDER_TAGS.items()}


@pytest.mark.parametrize(
    ("env", "session"),
    [
        ({"x_session": "smooth-eel", "SESSION": "slimy-eel"}, "smooth-eel"),  # x_session before SESSION
        ({"SESSION": "slimy-eel"}, "slimy-eel"),
        ({"_event_uuid": "evt-1", "x_session": "smooth-eel", "SESSION": "slimy-eel"}, "evt-1"),
    ],
)
def test_the_session_is_chosen_as_the_sdk_does(tiny: TinyServer, env: dict[str, str], session: str) -> None:
    send_message(tiny.url + "/m", {"x": 1}, env={"_abaco_actor_id": "A1", **env})
    assert tiny.seen[0].query["x_session"] == [session]


def test_the_senders_tags_win_over_caller_params(tiny: TinyServer) -> None:
    env = {"_abaco_actor_id": "SRCactor", "_abaco_execution_id": "SRCexec", "x_session": "real-session"}
    spoof = {"x_src_actor_id": "admin-actor", "x_src_execution_id": "e0", "x_session": "fake", "token": "t1"}
    send_message(tiny.url + "/m", {"x": 1}, spoof, env=env)
    send_message(tiny.url + "/m?x_src_actor_id=admin-actor", {"x": 1}, env=env)  # nor in the actor's URL
    for seen in tiny.seen:
        assert seen.query["x_src_actor_id"] == ["SRCactor"]
    assert tiny.seen[0].query == {
        "x_src_actor_id": ["SRCactor"],
        "x_src_execution_id": ["SRCexec"],
        "x_session": ["real-session"],
        "token": ["t1"],
    }


def test_inside_abaco_an_x_session_is_always_sent(tiny: TinyServer) -> None:
    env = {"_abaco_actor_id": "SRCactor", "_abaco_execution_id": "SRCexec"}
    send_message(tiny.url + "/m", {"x": 1}, env=env)
    send_message(tiny.url + "/m", {"x": 2}, env=env)
    send_message(tiny.url + "/m", {"x": 3}, env={"_abaco_actor_id": "SRCactor"})
    first, second, third = (seen.query.get("x_session", [""])[0] for seen in tiny.seen)
    # the SDK falls back to its nickname: a petname adjective-animal, one per execution
    adjective, _, animal = first.partition("-")
    assert adjective in petname.adjectives and animal in petname.names
    assert second == first and third.count("-") == 1


def test_5xx_is_retried_with_exponential_backoff(tiny: TinyServer) -> None:
    tiny.script = [error(503, "busy"), error(502, "bad gateway"), OK]
    sleeps = Sleeps()
    answer = send_message(tiny.url + "/m", {"x": 1}, retries=3, backoff=0.25, sleep=sleeps)
    assert answer["result"]["executionId"] == "e1"
    assert len(tiny.seen) == 3 and sleeps == [0.25, 0.5]


def test_backoff_is_capped_and_the_last_error_is_reported(tiny: TinyServer) -> None:
    tiny.script = [error(503, "Abaco is down for maintenance")]
    sleeps = Sleeps()
    with pytest.raises(AbacoError) as err:
        send_message(tiny.url + "/m", {"x": 1}, retries=4, backoff=1.0, max_backoff=2.5, sleep=sleeps)
    assert len(tiny.seen) == 5 and sleeps == [1.0, 2.0, 2.5, 2.5]
    assert err.value.status_code == 503 and err.value.kind is ErrorKind.REMOTE_UNAVAILABLE
    assert "HTTP 503" in err.value.message and "Abaco is down for maintenance" in err.value.message
    assert err.value.details["attempts"] == 5


def test_real_backoff_waits(tiny: TinyServer) -> None:
    tiny.script = [error(503, "busy"), error(503, "busy"), OK]
    start = time.monotonic()
    send_message(tiny.url + "/m", {"x": 1}, retries=2, backoff=0.1)
    assert time.monotonic() - start >= 0.3 - 0.01  # 0.1 + 0.2
    assert len(tiny.seen) == 3


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (error(400, "No JWT or nonce provided."), ErrorKind.UNAUTHORIZED),
        (error(400, "message POST body could not be serialized."), ErrorKind.BAD_MESSAGE),
        (error(403, "Forbidden"), ErrorKind.UNAUTHORIZED),
        (error(404, "Actor with identifier 'nope' not found"), ErrorKind.NOT_FOUND),
        ((429, "slow down"), ErrorKind.BAD_MESSAGE),
    ],
)
def test_4xx_is_never_retried(tiny: TinyServer, answer: tuple[int, Any], kind: ErrorKind) -> None:
    tiny.script = [answer, OK]
    sleeps = Sleeps()
    with pytest.raises(AbacoError) as err:
        send_message(tiny.url + "/m", {"x": 1}, retries=5, sleep=sleeps)
    assert len(tiny.seen) == 1 and sleeps == []
    assert err.value.status_code == answer[0] and err.value.kind is kind
    assert f"HTTP {answer[0]}" in err.value.message


def test_connection_refused_is_retried_until_the_server_comes_up() -> None:
    late = TinyServer(free_port())
    sleeps: list[float] = []

    def sleep_then_start(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            late.start()

    try:
        answer = send_message(late.url + "/m", {"x": 1}, retries=3, backoff=0.01, sleep=sleep_then_start)
    finally:
        late.stop()
    assert answer == OK[1] and len(late.seen) == 1 and sleeps == [0.01, 0.02]


def test_connection_refused_gives_up_without_leaking_secrets() -> None:
    port = free_port()
    sleeps = Sleeps()
    with pytest.raises(AbacoError) as err:
        send_message(
            f"http://127.0.0.1:{port}/m?x-nonce=NONCEsecret9",
            {"token": "TOKENsecret1234"},
            {"token": "TOKENsecret1234"},
            bearer="BEARERsecret",
            retries=2,
            backoff=0.01,
            sleep=sleeps,
        )
    assert err.value.status_code is None and err.value.kind is ErrorKind.REMOTE_UNAVAILABLE
    assert "after 3 attempt(s)" in err.value.message and len(sleeps) == 2
    shown = f"{err.value} {err.value!r} {err.value.to_dict()}"
    assert not any(s in shown for s in ("NONCEsecret9", "TOKENsecret1234", "BEARERsecret"))
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_errors_never_repeat_tokens_or_nonces_echoed_by_the_server(tiny: TinyServer) -> None:
    tiny.script = [error(400, "Nonce NONCEsecret9 for token TOKENsecret1234 by BEARERsecret does not exist.")]
    with pytest.raises(AbacoError) as err:
        send_message(tiny.url + "/m", {}, {"token": "TOKENsecret1234"}, nonce="NONCEsecret9", bearer="BEARERsecret")
    shown = f"{err.value} {err.value.to_dict()}"
    assert "does not exist" in shown and err.value.kind is ErrorKind.UNAUTHORIZED
    assert not any(s in shown for s in ("NONCEsecret9", "TOKENsecret1234", "BEARERsecret"))
    assert err.value.details["url"] == tiny.url + "/m"


def test_synchronous_answers_are_read_from_json_or_from_the_last_json_line_of_logs(tiny: TinyServer) -> None:
    tiny.script = [
        (200, 'INFO starting\n{"status": "ok", "uuid": "u1"}\nWARNING trailing log line\n'),
        (200, "only logs"),
    ]
    assert send_message(tiny.url + "/m", {}, synchronous=True) == {"status": "ok", "uuid": "u1"}
    assert send_message(tiny.url + "/m", {}, synchronous=True) == {"logs": "only logs"}
    assert tiny.seen[0].query == {"_abaco_synchronous": ["true"]}
    with pytest.raises(AbacoError):
        send_message(tiny.url + "/m", {})  # not synchronous: a non-JSON answer is an error


def test_a_caller_supplied_client_is_used_and_left_open(tiny: TinyServer) -> None:
    with web.client(headers={"User-Agent": "my-actor/1.0"}) as client:
        send_message(tiny.url + "/m", {"x": 1}, client=client)
        send_message(tiny.url + "/m", {"x": 2}, client=client)
        assert not client.is_closed
    assert [s.headers["user-agent"] for s in tiny.seen] == ["my-actor/1.0", "my-actor/1.0"]


# -- the live serve ----------------------------------------------------------------------------
def _create(pipeline_uuid: str = EXAMPLE_PIPELINE_UUID, n: int = 1) -> dict[str, Any]:
    return {"pipeline_uuid": pipeline_uuid, "archive_path": f"/products/v2/abaco-{n}", "data": {"n": n}}


def _nonce(live: LiveServer, max_uses: int = -1) -> str:
    response = web.post(
        f"{live.actor_url()}/nonces", headers=live.auth, json={"maxUses": max_uses, "level": "EXECUTE"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]["id"]


def test_live_bearer_creates_a_job_and_a_nonce_moves_it(live_server: LiveServer, example_pipeline: dict) -> None:
    created = send_message(
        live_server.actor_id,
        _create(),
        api_server=live_server.url + "/",
        bearer=live_server.api_token,
        synchronous=True,
    )
    assert created["status"] == "ok" and created["action"] == "create" and len(created["token"]) == 16

    nonce = _nonce(live_server)
    event = {"uuid": created["uuid"], "name": "run", "token": created["token"], "data": {"via": "nonce"}}
    answer = send_message(live_server.messages_url, event, nonce=nonce)
    assert answer["status"] == "success" and answer["result"]["msg"]  # queued as an execution
    store = live_server.open_store()
    try:
        job = store.find_job(created["uuid"])
    finally:
        store.close()
    assert job["state"] == "RUNNING" and job["history"][-1]["data"] == {"via": "nonce"}
    used = web.get(f"{live_server.actor_url()}/nonces/{nonce}", headers=live_server.auth, timeout=10).json()
    assert used["result"]["currentUses"] == 1


def test_live_x_tapis_token_on_the_v3_path(live_server: LiveServer, example_pipeline: dict) -> None:
    url = live_server.actor_url(v3=True) + "/messages"
    answer = send_message(url, _create(n=2), tapis_token=live_server.api_token)
    assert answer["status"] == "success" and "execution_id" in answer["result"]
    outcome = send_message(url, _create(n=2), tapis_token=live_server.api_token, synchronous=True)
    assert outcome["status"] == "ok" and outcome["created"] is False  # the first message created it


def test_live_refusals_are_clear_and_not_retried(live_server: LiveServer) -> None:
    sleeps = Sleeps()
    with pytest.raises(AbacoError) as no_auth:
        send_message(live_server.messages_url, {"x": 1}, sleep=sleeps)
    assert no_auth.value.status_code == 400 and "No JWT or nonce provided." in no_auth.value.message
    assert no_auth.value.kind is ErrorKind.UNAUTHORIZED
    with pytest.raises(AbacoError) as bad_nonce:
        send_message(live_server.messages_url, {"x": 1}, nonce="TACC_NOPEnope12345", sleep=sleeps)
    assert "Nonce does not exist." in bad_nonce.value.message and "TACC_NOPEnope12345" not in str(bad_nonce.value)
    with pytest.raises(AbacoError) as unknown:
        send_message("nosuchactor", {"x": 1}, api_server=live_server.url, bearer=live_server.api_token, sleep=sleeps)
    assert unknown.value.status_code == 404 and unknown.value.kind is ErrorKind.NOT_FOUND
    assert live_server.api_token not in f"{unknown.value} {unknown.value.to_dict()}"
    assert sleeps == []


def test_live_exhausted_nonce(live_server: LiveServer, example_pipeline: dict) -> None:
    nonce = _nonce(live_server, max_uses=1)
    send_message(live_server.messages_url, _create(n=3), nonce=nonce)
    with pytest.raises(AbacoError) as err:
        send_message(live_server.messages_url, _create(n=3), nonce=nonce, retries=3, sleep=Sleeps())
    assert err.value.status_code == 400 and "No remaining uses left for this nonce." in err.value.message
