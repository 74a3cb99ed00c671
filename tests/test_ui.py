"""The web view (``/ui/``) over real HTTP against a `pipelinejobs serve` subprocess, without a browser.

Sign-in and its cookie, READ nonces kept in links, redirects when signed out, the jobs
list's filters, chips and pages, a job page with hostile event data, the live-refresh
endpoint, and that no page ever holds a job token, salt, API token or another nonce.
Expectations come from the jobs the test wrote, never from the code under test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelinejobs import fsm
from pipelinejobs.server import presentation, sessions, ui
from tests import server_fixtures, web
from tests.conftest import EXAMPLE_PIPELINE_UUID
from tests.server_fixtures import LiveServer, register_example_pipeline, start_server
from tests.test_read_api import OTHER_PIPELINE, T0, make_nonce, post, seed

HOSTILE = {
    "script": "</script><script>alert('pwned')</script>",
    "attr": '"><img src=x onerror=alert(1)>',
    "template": "{{ 7*7 }} {% raw %}",
    "unicode": "naïve ☃ 𝄞 \u202e",
    "huge": "x" * 200_000,
}


@pytest.fixture(params=["live_server", "live_server_sqlite"], ids=["mongodb", "sqlite"])
def server(request: pytest.FixtureRequest) -> LiveServer:
    return request.getfixturevalue(request.param)


def client(server: LiveServer) -> httpx.Client:
    return web.client(base_url=server.url, timeout=30, follow_redirects=False)


@contextmanager
def sign_in(server: LiveServer) -> Iterator[httpx.Client]:
    with client(server) as browser:
        answer = browser.post("/ui/signin", data={"token": server.api_token, "next": "/ui/jobs"})
        assert answer.status_code == 303, answer.text
        yield browser


def register_pipeline(server: LiveServer) -> None:
    register_example_pipeline(server, name="Tacobot <b>pipeline</b>")  # markup in a name shown on pages


def salt_of(server: LiveServer, uuid: str) -> str:
    store = server.open_store()
    try:
        job = store.find_job(uuid)
    finally:
        store.close()
    assert job is not None
    return job["_salt"]


def links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]+)"', html)]


# -- who may look --------------------------------------------------------------------------------
def test_nothing_is_readable_without_credentials(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    register_pipeline(server)
    job = post(server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/secret-place", "data": {}})
    with client(server) as anonymous:
        for path in ("/ui/", "/ui/jobs?state=RUNNING", f"/ui/jobs/{job['uuid']}", "/ui/pipelines"):
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            target = answer.headers["location"]
            assert target.startswith("/ui/signin?next="), target
            assert "secret-place" not in answer.text and job["uuid"] not in answer.text
        assert (
            anonymous.get("/ui/jobs?state=RUNNING").headers["location"]
            == "/ui/signin?next=%2Fui%2Fjobs%3Fstate%3DRUNNING"
        )
        updates = anonymous.get(f"/ui/jobs/{job['uuid']}/updates")
        assert updates.status_code == 401 and updates.json() == {"signin": "/ui/signin"}
        wrong = anonymous.get("/ui/jobs", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and "Invalid JWT." in wrong.text and "secret-place" not in wrong.text
        assert "not-the-token" not in wrong.text
        bad_nonce = anonymous.get("/ui/jobs", params={"x-nonce": "SD2E_nosuchnonce"})
        assert bad_nonce.status_code == 401 and "secret-place" not in bad_nonce.text
        assert "SD2E_nosuchnonce" not in bad_nonce.text
        form = anonymous.get("/ui/signin?next=/ui/pipelines")
        assert form.status_code == 200 and '<label for="token">API token</label>' in form.text
        assert 'value="/ui/pipelines"' in form.text
        # the public assets need nothing, and only the named files are served
        assert anonymous.get("/ui/static/ui.css").status_code == 200
        assert anonymous.get("/ui/static/ui.js").headers["content-type"].startswith("text/javascript")
        for path in ("/ui/static/..%2Fapp.py", "/ui/static/app.py", "/ui/static/..%2F..%2Fpyproject.toml"):
            assert anonymous.get(path).status_code == 404, path


def test_sign_in_keeps_a_session_cookie_that_is_not_the_token(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    with client(server) as browser:
        refused = browser.post("/ui/signin", data={"token": "wrong-token-123", "next": "/ui/jobs"})
        assert refused.status_code == 401 and "not accepted" in refused.text
        assert "wrong-token-123" not in refused.text and "set-cookie" not in refused.headers
        foreign = browser.post(
            "/ui/signin", data={"token": server.api_token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers

        answer = browser.post("/ui/signin", data={"token": server.api_token, "next": "//evil.example/x"})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/"  # never off the site
        cookie = answer.headers["set-cookie"]
        name, value = cookie.split(";")[0].split("=", 1)
        assert name == sessions.COOKIE and len(value) >= 40
        assert server.api_token not in cookie and server.api_token not in value
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        assert "secure" not in attributes  # plain HTTP here; over TLS it is set
        assert server.api_token not in answer.text

        page = browser.get("/ui/jobs")
        assert page.status_code == 200 and "Signed in as" in page.text
        for name_, value_ in ui.HEADERS.items():
            assert page.headers[name_] == value_
        assert server.api_token not in page.text

        foreign_out = browser.post("/ui/signout", headers={"Origin": "https://evil.example"})
        assert foreign_out.status_code == 403
        assert browser.post("/ui/signout", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert browser.get("/ui/jobs").status_code == 200  # still signed in
        out = browser.post("/ui/signout")
        assert out.status_code == 303 and out.headers["location"] == "/ui/signin?signed_out=1"
        assert sessions.COOKIE in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
    with client(server) as replay:  # the old cookie is dead on the server, not just forgotten by the browser
        replay.cookies.set(sessions.COOKIE, value, domain="127.0.0.1", path="/ui")
        assert replay.get("/ui/jobs").status_code == 303
        replay.cookies.set(sessions.COOKIE, "forged-" + "a" * 40, domain="127.0.0.1", path="/ui")
        assert replay.get("/ui/jobs").status_code == 303


def test_a_session_holds_in_every_serve_process_with_the_same_tokens(
    live_server_sqlite: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with `serve --workers N`: a cookie one process signed is good in another on the same tokens, not elsewhere."""
    first = live_server_sqlite
    env = {"_REACTOR_STORE_SQLITE_PATH": str(first.store_options["path"])}
    twin_dir, other_dir = tmp_path / "twin", tmp_path / "other"
    twin_dir.mkdir()
    other_dir.mkdir()
    twins = start_server(twin_dir, "sqlite", env, first.store_options)  # same API token, same store
    twin = next(twins)
    try:
        with sign_in(first) as browser:
            value = browser.cookies[sessions.COOKIE]
            with client(twin) as elsewhere:
                elsewhere.cookies.set(sessions.COOKIE, value, domain="127.0.0.1", path="/ui")
                assert elsewhere.get("/ui/jobs").status_code == 200
                tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
                elsewhere.cookies.set(sessions.COOKIE, tampered, domain="127.0.0.1", path="/ui")
                assert elsewhere.get("/ui/jobs").status_code == 303
                expiry, rest = value.split(".", 1)
                elsewhere.cookies.set(sessions.COOKIE, f"{int(expiry) + 86400}.{rest}", domain="127.0.0.1", path="/ui")
                assert elsewhere.get("/ui/jobs").status_code == 303  # the expiry is signed too
    finally:
        twins.close()
    monkeypatch.setattr(server_fixtures, "API_TOKEN", "another-api-token-9876543210")  # what start_server passes
    others = start_server(other_dir, "sqlite", env, first.store_options)
    other = next(others)
    try:
        with client(other) as stranger:
            stranger.cookies.set(sessions.COOKIE, value, domain="127.0.0.1", path="/ui")
            assert stranger.get("/ui/jobs").status_code == 303  # other tokens, another key
    finally:
        others.close()


def test_a_read_nonce_opens_the_view_and_every_link_keeps_it(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    register_pipeline(server)
    job = post(server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/n", "data": {"a": 1}})
    nonce = make_nonce(server, "READ")
    with client(server) as browser:
        for path in ("/ui/jobs", f"/ui/jobs/{job['uuid']}", "/ui/pipelines"):
            page = browser.get(path, params={"x-nonce": nonce})
            assert page.status_code == 200, (path, page.text[:500])
            assert "Viewing with a read nonce" in page.text
            inside = [h for h in links(page.text) if h.startswith("/ui/") and not h.startswith("/ui/static/")]
            inside = [h for h in inside if h != "/ui/signin"]  # "sign out" leaves the nonce behind
            assert inside, path
            for href in inside:
                assert f"x-nonce={nonce}" in href, (path, href)
            assert job["token"] not in page.text and salt_of(server, job["uuid"]) not in page.text
            assert "set-cookie" not in page.headers
        assert f'name="x-nonce" value="{nonce}"' in browser.get("/ui/jobs", params={"x-nonce": nonce}).text
        updates = browser.get(f"/ui/jobs/{job['uuid']}/updates", params={"x-nonce": nonce})
        assert updates.status_code == 200 and updates.json()["count"] == 1  # the create event
    once = make_nonce(server, "READ", max_uses=1)
    with client(server) as browser:
        assert browser.get("/ui/jobs", params={"x-nonce": once}).status_code == 200
        spent = browser.get("/ui/jobs", params={"x-nonce": once})
        assert spent.status_code == 401 and "No remaining uses left for this nonce." in spent.text


# -- the job page --------------------------------------------------------------------------------
def test_a_job_page_shows_every_event_safely_and_no_secret(server: LiveServer) -> None:
    register_pipeline(server)
    parent = post(server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": "/products/parent", "data": {}})
    create = {
        "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
        "archive_path": "/products/<b>bold</b>/run",
        "data": {"sample": HOSTILE["script"]},
        "child_of": [parent["uuid"]],
        "session": "brave-otter",
    }
    job = post(server, create)
    uuid, token = job["uuid"], job["token"]
    nonce = make_nonce(server, "EXECUTE")
    sent = [("run", {"step": HOSTILE["attr"]}), ("update", HOSTILE), ("update", {"t": HOSTILE["template"]})]
    sent += [("finish", {"done": True})]
    for name, data in sent:
        answer = post(server, {"uuid": uuid, "name": name, "token": token, "data": data})
        assert answer["status"] == "ok", answer
    lone = json.dumps(
        {"uuid": uuid, "name": "update", "token": token, "data": {"s": "\ud800"}}
    )  # "\\ud800" on the wire
    refused = web.post(server.messages_url, params={"_abaco_synchronous": "true"}, headers=server.auth, content=lone)
    assert refused.json()["status"] == "error"  # a lone surrogate is refused at intake: nothing to show
    with sign_in(server) as browser:
        answer = browser.get(f"/ui/jobs/{uuid}")
        assert answer.status_code == 200, answer.text[:2000]
        html = answer.text
        # every event: the create and the four sent, oldest first, each with its data collapsible
        rows = re.findall(r'<tr id="event-(\d+)" class="outcome-(\w+)" data-name="(\w+)">', html)
        assert [(int(n), name) for n, _, name in rows] == list(
            enumerate(["create", "run", "update", "update", "finish"], 1)
        )
        assert html.count('<details class="data">') == 6  # the job's data and each event's (all have data)
        # hostile text is escaped, never markup
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
        assert "&lt;/script&gt;&lt;script&gt;alert(" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
        assert "{{ 7*7 }} {% raw %}" in html  # data, never template source
        assert "naïve ☃ 𝄞" in html
        longest = max(len(run) for run in re.findall(r"x{1000,}", html))
        assert (
            19_000 < longest < presentation.DATA_SHOWN_CHARS
        )  # the 200,000 characters are cut on the page, with a note
        assert "more characters; the whole record is in the read API" in html
        # parents, pipeline, archive path, session
        assert f'href="/ui/jobs/{parent["uuid"]}"' in html and "/products/&lt;b&gt;bold&lt;/b&gt;/run" in html
        assert "Tacobot &lt;b&gt;pipeline&lt;/b&gt;" in html and "brave-otter" in html
        # the timeline: a band per state the job went through, a tick per event
        bands = re.findall(r'class="tl-band st-(\w+)" style="left:([\d.]+)%;width:([\d.]+)%"', html)
        assert [b[0] for b in bands] == ["CREATED", "RUNNING", "FINISHED"]
        assert html.count('class="tl-tick') == 5
        # the state graph with the path walked
        graph = html[html.index("<svg") : html.index("</svg>")]
        assert re.search(r'class="edge walked" data-event="[^"]*run[^"]*" data-from="CREATED" data-to="RUNNING"', graph)
        assert re.search(
            r'class="edge walked" data-event="[^"]*finish[^"]*" data-from="RUNNING" data-to="FINISHED"', graph
        )
        assert (
            'class="state visited" data-state="FINISHED"' in graph
            and 'class="state visited" data-state="FAILED"' not in graph
        )
        assert "No delivery attempts for this job" in html  # no subscription here; test_notify_e2e lists some
        for secret in (token, salt_of(server, uuid), server.api_token, nonce):
            assert secret not in html

        # live refresh: nothing new after the last cursor, then a new event appears in the fragment
        live = re.search(r'data-updates="([^"]+)" data-after="([^"]*)"', html)
        assert live is not None
        endpoint, after = unescape(live.group(1)), unescape(live.group(2))
        quiet = browser.get(endpoint, params={"after": after})
        assert quiet.status_code == 200 and quiet.json() == {"after": after, "count": 0}
        post(
            server,
            {"uuid": uuid, "name": "validate", "token": token, "data": {"why": HOSTILE["script"]}},
            **{"x-nonce": nonce},
        )
        fresh = browser.get(endpoint, params={"after": after}).json()
        assert fresh["count"] == 1 and fresh["names"] == ["validate"] and fresh["state"] == "VALIDATING"
        assert re.findall(r'<tr id="event-(\d+)"', fresh["rows"]) == ["6"]
        assert "&lt;/script&gt;" in fresh["rows"] and "<script>" not in fresh["rows"]
        assert "st-VALIDATING" in fresh["summary"] and "st-VALIDATING" in fresh["timeline"]
        assert 'data-from="FINISHED" data-to="VALIDATING"' in fresh["graph"]
        assert browser.get(endpoint, params={"after": fresh["after"]}).json()["count"] == 0
        garbled = browser.get(endpoint, params={"after": "not-a-cursor"})
        assert garbled.status_code == 400 and "after is not a cursor" in garbled.json()["error"]
        everything = " ".join(str(v) for v in fresh.values())
        for secret in (token, salt_of(server, uuid), server.api_token, nonce):
            assert secret not in everything

        missing = browser.get("/ui/jobs/1073f4ff-0000-0000-0000-000000000000")
        assert missing.status_code == 404 and "No job found" in missing.text


def test_lone_surrogates_and_markup_in_data_render_as_text() -> None:
    """No store keeps a lone surrogate, but a page must still not fail on one (as serve's JSON does not)."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [
        {
            "seq": 1,
            "cursor": "1:",
            "name": "update",
            "date": "2026-01-01T00:00:00Z",
            "state": "RUNNING",
            "outcome": "applied",
            "via": "message",
            "event_id": "\ud800</td>",
            "data": {"bad\udfff": "\ud800</script>"},
        },
    ]
    text = ui.render(
        "_rows.html", rows=rows, first_index=0, viewer=ui.Viewer("me"), ago=lambda v: presentation.relative(v, now)
    )
    assert "\ufffd" in text and "\ud800" not in text
    assert text.encode("utf-8")  # what the response sends
    assert "&lt;/script&gt;" in text and "</script>" not in text and "&lt;/td&gt;" in text


def test_the_timeline_measures_time_in_each_state() -> None:
    job = {"state": "RUNNING", "_properties": {"created_date": "2026-01-01T00:00:00Z"}}
    events = [
        {"name": "create", "date": "2026-01-01T00:00:00Z", "state": "CREATED", "outcome": "applied"},
        {"name": "run", "date": "2026-01-01T00:10:00Z", "state": "RUNNING", "outcome": "applied"},
        {"name": "update", "date": "2026-01-01T00:20:00Z", "state": "RUNNING", "outcome": "applied"},
        {"name": "run", "date": "2026-01-01T00:25:00Z", "state": "", "outcome": "stale"},
    ]
    now = datetime(2026, 1, 1, 0, 40, tzinfo=timezone.utc)
    drawn = presentation.timeline(job, events, now)
    assert [(b.state, b.left, b.width) for b in drawn["bands"]] == [("CREATED", 0.0, 25.0), ("RUNNING", 25.0, 75.0)]
    assert dict(drawn["totals"]) == {"CREATED": 600.0, "RUNNING": 1800.0}
    assert [t["left"] for t in drawn["ticks"]] == [0.0, 25.0, 50.0, 62.5] and drawn["ongoing"]
    finished = presentation.timeline(
        {**job, "state": "FAILED"},
        [*events, {"name": "fail", "date": "2026-01-01T00:30:00Z", "state": "FAILED", "outcome": "applied"}],
        now,
    )
    assert finished["end"] == datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)  # a terminal state ends the span
    assert presentation.state_path(events) == ["CREATED", "RUNNING"]
    assert (
        presentation.duration(3725) == "1 h 2 min"
        and presentation.duration(59) == "59 s"
        and presentation.duration(90061) == "1 d 1 h"
    )


# -- the jobs list and the pipelines ---------------------------------------------------------------
def listed_uuids(html: str) -> list[str]:
    return re.findall(r'<tr data-uuid="([0-9a-f-]{36})">', html)


def test_the_jobs_list_filters_counts_and_pages(live_server_sqlite: LiveServer) -> None:
    server = live_server_sqlite
    register_pipeline(server)
    store = server.open_store()
    try:
        jobs = []
        for i in range(23):
            state = ("RUNNING", "FINISHED", "FAILED")[i % 3]
            pipeline = OTHER_PIPELINE if i % 5 == 0 else EXAMPLE_PIPELINE_UUID
            path = f"/products/v2/{'special' if i % 4 == 0 else 'plain'}/run-{i}"
            created = T0 + timedelta(hours=i)
            jobs.append(
                seed(
                    store,
                    i,
                    state=state,
                    created=created,
                    pipeline_uuid=pipeline,
                    archive_path=path,
                    session="brave-otter" if i < 6 else None,
                )
            )
    finally:
        store.close()
    newest_first = [j["uuid"] for j in sorted(jobs, key=lambda j: j["_properties"]["created_date"], reverse=True)]
    with sign_in(server) as browser:
        html = browser.get("/ui/jobs").text
        chips = dict(re.findall(r'data-state="(\w+)">\w+ <span class="count">(\d+)</span>', html))
        expected = {s.value: sum(1 for j in jobs if j["state"] == s.value) for s in fsm.State}
        assert {k: int(v) for k, v in chips.items()} == expected
        assert 'All states <span class="count">23</span>' in html
        assert listed_uuids(html) == newest_first  # 23 fit on the default page of 50

        # a chip is a link to the same list filtered by its state, and its count matches the rows
        href = unescape(re.search(r'href="([^"]+)"\s+data-state="FAILED"', html).group(1))  # type: ignore[union-attr]
        failed = browser.get(href).text
        assert listed_uuids(failed) == [
            u for u in newest_first if next(j for j in jobs if j["uuid"] == u)["state"] == "FAILED"
        ]
        assert re.search(r'class="chip st-FAILED current"[^>]*aria-current="true"', failed)

        # every filter of the read API, through the same parameters
        def rows(**params: Any) -> list[str]:
            answer = browser.get("/ui/jobs", params=params)
            assert answer.status_code == 200, answer.text[:500]
            return listed_uuids(answer.text)

        def expect(keep: Any) -> list[str]:
            return [u for u in newest_first if keep(next(j for j in jobs if j["uuid"] == u))]

        assert rows(pipeline=OTHER_PIPELINE) == expect(lambda j: j["pipeline_uuid"] == OTHER_PIPELINE)
        assert rows(archive_path="special", state="RUNNING") == expect(
            lambda j: "special" in j["archive_path"] and j["state"] == "RUNNING"
        )
        assert rows(session="brave-otter") == expect(lambda j: j["session"] == "brave-otter")
        cut = T0 + timedelta(hours=10)
        assert rows(created_after="2026-01-01T10:00", created_before="") == expect(
            lambda j: j["_properties"]["created_date"] >= cut
        )
        assert rows(updated_before="2026-01-01T05:00:00Z") == expect(lambda j: j["updated"] < T0 + timedelta(hours=5))

        # pages of 5, by cursor, with the filters kept in the "next" link
        seen: list[str] = []
        answer = browser.get("/ui/jobs", params={"limit": "5", "state": "RUNNING"})
        while True:
            seen += listed_uuids(answer.text)
            found = re.search(r'rel="next" href="([^"]+)"', answer.text)
            if not found:
                break
            nxt = unescape(found.group(1))
            assert "state=RUNNING" in nxt and "limit=5" in nxt
            answer = browser.get(nxt)
        assert seen == expect(lambda j: j["state"] == "RUNNING") and len(seen) == 8

        # a bad parameter is a page that says so, not a 500
        bad = browser.get("/ui/jobs", params={"state": "BOGUS<script>"})
        assert bad.status_code == 400 and "state must be one of" in bad.text and "<script>" not in bad.text
        assert browser.get("/ui/jobs", params={"after": "garbage"}).status_code == 400

        # the pipelines page: visible jobs per state, each number a link to those jobs
        pipelines = browser.get("/ui/pipelines").text
        for pipeline in (EXAMPLE_PIPELINE_UUID, OTHER_PIPELINE):
            for state in ("RUNNING", "FINISHED", "FAILED"):
                count = sum(1 for j in jobs if j["pipeline_uuid"] == pipeline and j["state"] == state)
                assert re.search(
                    rf'href="/ui/jobs\?pipeline={pipeline}&amp;state={state}" aria-label="{count} {state} jobs',
                    pipelines,
                ), (pipeline, state, count)
        assert "Tacobot &lt;b&gt;pipeline&lt;/b&gt;" in pipelines and "unregistered pipeline" in pipelines


def test_time_helpers_and_nonce_links() -> None:
    assert presentation.absolute("2026-01-01T00:00:05Z") == "2026-01-01 00:00:05 UTC"
    assert presentation.iso("2026-01-01T00:00:05+00:00") == "2026-01-01T00:00:05Z"
    now = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    assert (
        presentation.relative("2026-01-01T00:00:00Z", now) == "1 h ago" and presentation.relative("nonsense", now) == ""
    )
    viewer = ui.Viewer("me", "SD2E_abc")
    assert viewer.link("/jobs", {"state": "RUNNING", "session": ""}) == "/ui/jobs?state=RUNNING&x-nonce=SD2E_abc"
