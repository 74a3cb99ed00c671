"""Real Chromium for the web view's tests, and the README's screenshots (``docs/ui-jobs.png``, ``docs/ui-job.png``).

    .venv/bin/python -m tests.ui_screenshots            # writes docs/ui-jobs.png and docs/ui-job.png
    .venv/bin/python -m tests.ui_screenshots --out DIR  # somewhere else

It starts `pipelinejobs serve` on a SQLite file in a temporary directory (as the
tests do), fills it with a pipeline and a dozen jobs whose events are spread over the
last hours (written through the store API, as reactor.py processes would write them),
signs in through the form in headless Chromium (Debian's ``chromium`` and
``chromium-driver``) and saves the jobs list and one job page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parent.parent


def chromium(*, javascript: bool = True, width: int = 1280, height: int = 900) -> Any:
    """Headless Chromium driven by Selenium, pointed at Debian's binaries (no browser download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def screenshot(driver: Any, path: Path, *, full: bool = True, max_height: int = 2400) -> Path:
    """The page as a PNG; ``full`` grows the window to the page's height first (up to ``max_height``)."""
    if full:
        width = driver.get_window_size()["width"]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(int(height), 600), max_height))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def sign_in(driver: Any, url: str, token: str, timeout: float = 15) -> None:
    """Through the form, as a person would: the view redirects to it, then back to the jobs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/ui/")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, timeout).until(lambda d: "/ui/signin" not in d.current_url)


# -- sample data ------------------------------------------------------------------------------------
PIPELINE = {
    "id": "tacc/tacobot:9000",
    "uuid": "10650844-1baa-55c5-a481-5e945b19c065",
    "name": "Tacobot pipeline",
    "components": [{"id": "eqMyqq4xB1Lqa", "image": "index.docker.io/tacc/tacbobot:latest", "options": {}}],
}
WALKS: list[list[tuple[str, float, dict[str, Any] | None]]] = [
    # (event, minutes after creation, data): each list is one job's life
    [
        ("run", 4, {"agave_job": "6191d1b3-c8d7-4a4b-8d1f"}),
        ("update", 30, {"progress": 0.5}),
        ("finish", 95, {"outputs": 12}),
        ("validate", 100, None),
        ("validated", 118, {"checks": "all passed"}),
        ("finalize", 121, None),
    ],
    [("run", 2, None), ("update", 20, {"progress": 0.3}), ("update", 55, {"progress": 0.8})],
    [("run", 6, None), ("fail", 41, {"reason": "out of memory on c455-031"})],
    [("run", 3, None), ("finish", 64, {"outputs": 4}), ("index", 70, None)],
    [("run", 1, None)],
    [],
    [("run", 5, None), ("finish", 80, {"outputs": 9}), ("validate", 83, None), ("reject", 99, {"why": "empty plate"})],
    [("run", 2, None), ("update", 12, {"progress": 0.9})],
    [("run", 9, None), ("finish", 33, {"outputs": 2})],
]


def populate(store: Any, now: datetime) -> list[str]:
    """The sample pipeline and jobs, newest last; returns the jobs' uuids."""
    from pipelinejobs import documents, fsm
    from pipelinejobs.settings import Identity
    from pipelinejobs.store.records import EventRecord

    identity = Identity("sd2eadm", "SD2E-Community", "sd2e", "sd2e.org")
    store.save_pipeline(dict(PIPELINE))
    made = []
    for n, walk in enumerate(WALKS * 2):
        created = now - timedelta(hours=26 - n * 1.4)
        job = documents.new_job(
            uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"ui-screenshot-job-{n}")),
            pipeline_uuid=PIPELINE["uuid"],
            archive_path=f"/products/v2/tacobot/{created:%Y%m%d}/run-{n:03d}",
            archive_system=None,
            data={"sample": f"s{n}", "plate": f"plate-{n % 4}"},
            session=("brave-otter", "calm-heron", None)[n % 3],
            child_of=[],
            identity=identity,
            now=created,
        )
        store.insert_job(job, documents.audit_record(job["uuid"], "create", {}, job["_admin"], created))
        state = fsm.State.CREATED
        for seq, (name, minutes, data) in enumerate(walk, start=1):
            state = fsm.target_state(name, state)
            record = EventRecord(
                uuid=job["uuid"],
                seq=seq,
                event_uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{job['uuid']}/{seq}")),
                name=name,
                date=documents.utc_seconds(created + timedelta(minutes=minutes)),
                data=data,
                state=state.value,
            )
            store.append_event(record, expected_revision=seq - 1)
        made.append(job["uuid"])
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where to write ui-jobs.png and ui-job.png")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        print("needs /usr/bin/chromium and /usr/bin/chromedriver: apt-get install chromium chromium-driver")
        return 2
    from selenium.webdriver.common.by import By

    from tests.server_fixtures import start_server

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="pipelinejobs-ui-") as tmp:
        path = Path(tmp) / "catalog.sqlite3"
        servers = start_server(Path(tmp), "sqlite", {"_REACTOR_STORE_SQLITE_PATH": str(path)}, {"path": path})
        server = next(servers)
        try:
            store = server.open_store()
            try:
                uuids = populate(store, datetime.now(timezone.utc))
            finally:
                store.close()
            driver = chromium()
            try:
                sign_in(driver, server.url, server.api_token)
                driver.find_element(By.CSS_SELECTOR, "table.jobs")
                print(screenshot(driver, out / "ui-jobs.png", max_height=1400))
                driver.set_window_size(1280, 900)
                driver.get(f"{server.url}/ui/jobs/{uuids[0]}")
                driver.find_element(By.CSS_SELECTOR, ".timeline")
                driver.find_element(By.CSS_SELECTOR, "#event-rows details summary").click()
                print(screenshot(driver, out / "ui-job.png"))
            finally:
                driver.quit()
        finally:
            servers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
