"""The web view in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

`pipelinejobs serve` runs as a subprocess on the embedded store; jobs and events arrive
through the normal message API. A person signs in, filters by state, opens a job, sees
its timeline and every event, watches a new event appear without a reload, and signs
out. No page source ever holds a job token, salt, nonce or API token. One screenshot
per page is kept in the test's temporary directory.

Without ``/usr/bin/chromium`` the tests skip, except in CI (``CI`` set), where they fail:
``.ci/run`` installs the browser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE_PIPELINE_UUID
from tests.server_fixtures import LiveServer
from tests.test_read_api import make_nonce, post
from tests.test_ui import HOSTILE, register_pipeline, salt_of
from tests.ui_screenshots import CHROMEDRIVER, CHROMIUM, chromium, screenshot, sign_in

WAIT = 20.0  # seconds; the job page polls every 3


@pytest.fixture
def browser_binaries() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    missing = "/usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {missing} not installed")
    pytest.skip(f"no headless browser here: needs {missing}")


@pytest.fixture
def driver(browser_binaries: None) -> Iterator[Any]:
    chrome = chromium()
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(driver: Any, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


class Secrets:
    """What no page may ever show; every page source is checked against it."""

    def __init__(self, *values: str) -> None:
        self.values = [v for v in values if v]
        self.pages = 0

    def add(self, *values: str) -> None:
        self.values += [v for v in values if v]

    def check(self, driver: Any) -> str:
        source = driver.page_source
        for secret in self.values:
            assert secret not in source, f"a secret is in the page at {driver.current_url}"
        self.pages += 1
        return source


def test_a_person_signs_in_filters_opens_a_job_watches_it_live_and_signs_out(
    live_server_sqlite: LiveServer, driver: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = live_server_sqlite
    shots = tmp_path / "screenshots"
    register_pipeline(server)
    nonce = make_nonce(server, "EXECUTE")  # the callbacks' nonce: the view must never show it
    jobs: dict[str, dict[str, Any]] = {}
    walks = {"finished": ["run", "finish"], "running": ["run"], "created": [], "other-running": ["run", "update"]}
    for label, names in walks.items():
        data = {"label": label, "note": HOSTILE["script"]}
        job = post(server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": f"/products/{label}", "data": data})
        for i, name in enumerate(names):
            answer = post(server, {"uuid": job["uuid"], "name": name, "token": job["token"], "data": {"step": i}})
            assert answer["status"] == "ok", answer
        jobs[label] = job
    secrets = Secrets(server.api_token, nonce)
    for job in jobs.values():
        secrets.add(job["token"], salt_of(server, job["uuid"]))

    # signed out, the view sends the browser to the sign-in form
    driver.get(f"{server.url}/ui/jobs")
    assert "/ui/signin" in driver.current_url
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text == "API token"
    secrets.check(driver)
    screenshot(driver, shots / "01-signin.png")
    driver.find_element(By.ID, "token").send_keys("not-the-token", Keys.ENTER)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "p.error[role=alert]"))
    assert "not-the-token" not in secrets.check(driver)

    # sign in: the jobs list, every job, the chips with their counts
    sign_in(driver, server.url, server.api_token)
    rows = driver.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr[data-uuid]")
    assert {r.get_attribute("data-uuid") for r in rows} == {j["uuid"] for j in jobs.values()}
    chip = driver.find_element(By.CSS_SELECTOR, "a.chip[data-state=RUNNING]")
    assert chip.find_element(By.CSS_SELECTOR, ".count").text == "2"
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["pj_ui_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and server.api_token not in session["value"]
    assert driver.execute_script("return document.cookie") == ""  # invisible to scripts
    secrets.check(driver)
    screenshot(driver, shots / "02-jobs.png")

    # filter by state with its chip
    chip.click()
    wait_for(driver, lambda d: "state=RUNNING" in d.current_url)
    shown = {r.get_attribute("data-uuid") for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr[data-uuid]")}
    assert shown == {jobs["running"]["uuid"], jobs["other-running"]["uuid"]}
    current = driver.find_element(By.CSS_SELECTOR, "a.chip[aria-current=true]")
    assert current.get_attribute("data-state") == "RUNNING"
    secrets.check(driver)
    screenshot(driver, shots / "03-jobs-running.png")

    # open a job: its facts, its timeline, every event with its data collapsible
    uuid = jobs["running"]["uuid"]
    driver.find_element(By.LINK_TEXT, uuid).click()
    wait_for(driver, lambda d: d.current_url.endswith(f"/ui/jobs/{uuid}"))
    assert driver.find_element(By.CSS_SELECTOR, "#summary .badge").text == "RUNNING"
    bands = driver.find_elements(By.CSS_SELECTOR, ".timeline .tl-band")
    assert [b.get_attribute("class").split()[-1] for b in bands] == ["st-CREATED", "st-RUNNING"]
    assert all(b.size["width"] >= 1 for b in bands)  # drawn, not just present
    assert len(driver.find_elements(By.CSS_SELECTOR, ".timeline .tl-tick")) == 2
    events = driver.find_elements(By.CSS_SELECTOR, "#event-rows tr")
    assert [e.get_attribute("data-name") for e in events] == ["create", "run"]
    first = events[0].find_element(By.CSS_SELECTOR, "details")
    pre = first.find_element(By.TAG_NAME, "pre")
    assert not pre.is_displayed()
    first.find_element(By.TAG_NAME, "summary").click()
    assert pre.is_displayed() and HOSTILE["script"] in pre.text  # shown as text, not run
    assert driver.execute_script("return window.pwned === undefined && !document.querySelector('img[src=x]')")
    walked = driver.find_elements(By.CSS_SELECTOR, "#graph svg path.edge.walked")
    assert [(p.get_attribute("data-from"), p.get_attribute("data-to")) for p in walked] == [("CREATED", "RUNNING")]
    secrets.check(driver)
    screenshot(driver, shots / "04-job.png")

    # a new event, sent through the message API with a nonce while the page is open, appears without a reload
    driver.execute_script("window.__stillTheSamePage = 'yes'")
    answer = post(server, {"uuid": uuid, "name": "finish", "token": jobs["running"]["token"], "data": {"out": 3}},
                  **{"x-nonce": nonce})  # fmt: skip
    assert answer["status"] == "ok", answer
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#event-rows tr")) == 3)
    events = driver.find_elements(By.CSS_SELECTOR, "#event-rows tr")
    assert [e.get_attribute("data-name") for e in events] == ["create", "run", "finish"]
    assert driver.execute_script("return window.__stillTheSamePage") == "yes"  # no reload happened
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#summary .badge").text == "FINISHED")
    bands = driver.find_elements(By.CSS_SELECTOR, ".timeline .tl-band")
    assert [b.get_attribute("class").split()[-1] for b in bands] == ["st-CREATED", "st-RUNNING", "st-FINISHED"]
    assert "1 new event: finish" in driver.find_element(By.ID, "live-status").text
    assert first.find_element(By.TAG_NAME, "pre").is_displayed()  # the open <details> stayed open
    secrets.check(driver)
    screenshot(driver, shots / "05-job-live.png")

    # the pipelines page: job counts per state
    driver.find_element(By.LINK_TEXT, "Pipelines").click()
    wait_for(driver, lambda d: d.current_url.endswith("/ui/pipelines"))
    row = driver.find_element(By.CSS_SELECTOR, "table.pipelines tbody tr")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == ["1", "1", "0", "2"] and cells[-1] == "4"  # CREATED, RUNNING, FAILED, FINISHED; total
    secrets.check(driver)
    screenshot(driver, shots / "06-pipelines.png")

    # keyboard: the first Tab reaches the skip link, and it is visible when focused
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.text == "Skip to content" and focused.is_displayed()

    # sign out: the session ends and pages redirect to the sign-in form again
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    wait_for(driver, lambda d: "/ui/signin" in d.current_url)
    assert "You are signed out." in driver.find_element(By.CSS_SELECTOR, "[role=status]").text
    assert "pj_ui_session" not in {c["name"] for c in driver.get_cookies()}
    secrets.check(driver)
    driver.get(f"{server.url}/ui/jobs/{uuid}")
    assert "/ui/signin" in driver.current_url and uuid not in driver.find_element(By.TAG_NAME, "main").text
    secrets.check(driver)
    screenshot(driver, shots / "07-signed-out.png")

    assert secrets.pages == 9
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "01-signin.png", "02-jobs.png", "03-jobs-running.png", "04-job.png", "05-job-live.png",
        "06-pipelines.png", "07-signed-out.png",
    ]  # fmt: skip
    assert all(p.stat().st_size > 5000 for p in shots.glob("*.png"))


def test_a_read_nonce_in_the_url_works_and_the_basics_work_without_javascript(
    live_server_sqlite: LiveServer, browser_binaries: None, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server = live_server_sqlite
    register_pipeline(server)
    made = []
    for label, names in (("a", ["run"]), ("b", ["run", "fail"]), ("c", [])):
        job = post(
            server, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "archive_path": f"/p/{label}", "data": {"n": label}}
        )
        for name in names:
            post(server, {"uuid": job["uuid"], "name": name, "token": job["token"]})
        made.append(job)
    read_nonce = make_nonce(server, "READ")
    driver = chromium(javascript=False)
    try:
        driver.get(f"{server.url}/ui/?x-nonce={read_nonce}")
        assert "Viewing with a read nonce" in driver.page_source
        # the filter form, submitted without JavaScript, keeps the nonce and filters
        driver.find_element(By.CSS_SELECTOR, "details.filters summary").click()
        Select(driver.find_element(By.ID, "f-state")).select_by_value("FAILED")
        driver.find_element(By.XPATH, "//button[normalize-space()='Apply filters']").click()
        wait_for(driver, lambda d: "state=FAILED" in d.current_url)
        assert f"x-nonce={read_nonce}" in driver.current_url
        assert "&session=&" in driver.current_url  # empty fields went too: ui.js (which drops them) did not run
        rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr[data-uuid]")
        assert [r.get_attribute("data-uuid") for r in rows] == [made[1]["uuid"]]
        screenshot(driver, tmp_path / "nojs-jobs-failed.png")
        # a link inside the view keeps the nonce; the job page renders fully on the server
        driver.find_element(By.LINK_TEXT, made[1]["uuid"]).click()
        wait_for(driver, lambda d: f"/ui/jobs/{made[1]['uuid']}" in d.current_url)
        assert f"x-nonce={read_nonce}" in driver.current_url
        names = [e.get_attribute("data-name") for e in driver.find_elements(By.CSS_SELECTOR, "#event-rows tr")]

        assert names == ["create", "run", "fail"]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".tl-band")) == 3
        source = driver.page_source
        assert re.findall(r"x-nonce=([A-Za-z0-9_]+)", source) and set(
            re.findall(r"x-nonce=([A-Za-z0-9_]+)", source)
        ) == {read_nonce}
        for job in made:
            assert job["token"] not in source and salt_of(server, job["uuid"]) not in source
        assert server.api_token not in source
        screenshot(driver, tmp_path / "nojs-job.png")
    finally:
        driver.quit()
