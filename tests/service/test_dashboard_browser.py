"""The dashboard in headless Chromium against the real embedded service on a loopback port:
upload the bundled sample through the API, open the page, enter the key, watch the job progress
to done and its curves plot render; a screenshot goes to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import service_settings

from app.core.config import configure
from app.db import repo
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SAMPLE = Path(__file__).resolve().parents[2] / "hostcp_core" / "sample_data"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1600,1000")


def _browser_missing() -> str | None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return "chromium and chromium-driver are not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture
def live_service(tmp_path):
    """The app under uvicorn in a thread, on a socket bound here (no port race), with its real
    spawned embedded runner."""
    import uvicorn

    from app.main import create_app

    settings = service_settings(tmp_path / "data")
    configure(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        configure(None)


@pytest.fixture
def browser(monkeypatch):
    missing = _browser_missing()
    if missing:
        if os.environ.get("HOSTCP_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_shows_job_progress_and_plot(live_service, browser):
    from selenium.webdriver.common.by import By

    base, settings = live_service
    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name="browser")
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=h, timeout=30) as api:
        ids = {}
        for part in ("train", "test"):
            with open(SAMPLE / f"{part}.csv", "rb") as fh:
                r = api.post("/v1/datasets", files={"file": (f"{part}.csv", fh)},
                             data={"id_column": "id"})
            assert r.status_code == 201, r.text
            ids[part] = r.json()["id"]
        r = api.post("/v1/jobs", json={"train_dataset_id": ids["train"],
                                       "test_dataset_id": ids["test"], "method": "knn_shapley",
                                       "fraction": 0.2, "seed": 0})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        browser.get(f"{base}/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(token)
        browser.find_element(By.ID, "save-key").click()
        row = f'#jobs tbody tr[data-job-id="{job_id}"]'
        _wait(lambda: browser.execute_script("return !!document.querySelector(arguments[0])", row),
              15, "the job in the list")
        seen = set()

        def done() -> bool:
            # read in the page: the list is re-rendered on every poll, so element handles go stale
            status = browser.execute_script(
                "const c = document.querySelector(arguments[0]); return c && c.textContent;",
                f"{row} td.status")
            if status:
                seen.add(status)
            return "succeeded" in seen

        _wait(done, 60, "the job to succeed on the page")
        assert seen <= {"queued", "running", "succeeded"}, seen

        # the curves plot: an image fetched with the key and decoded by the browser
        img = browser.find_element(By.ID, "plot-curves")
        _wait(lambda: img.get_attribute("data-loaded") == "1", 20, "the curves plot")
        width = browser.execute_script("return arguments[0].naturalWidth", img)
        assert width == 640, width
        assert img.get_attribute("src").startswith("blob:")

        # the subset summary and mislabel table show what the API holds
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#subset-summary tbody tr"), 10,
              "the subset summary")
        last = browser.find_elements(By.CSS_SELECTOR, "#subset-summary tbody tr")[-1]
        assert last.text.split()[:2] == ["all", str(job["summary"]["n_selected"])]
        suspects = api.get(f"/v1/jobs/{job_id}/mislabels",
                           params={"suspected_only": True, "page_size": 20}).json()["items"]
        rows = browser.find_elements(By.CSS_SELECTOR, "#mislabels-table tbody tr")
        assert [r.text.split()[1] for r in rows] == [str(m["index"]) for m in suspects]
        # the calibrated report: P(given wrong) per suspect, the expected number of label
        # errors in the summary, and the confusion estimate's plot
        assert [r.text.split()[-1] for r in rows] == [f"{m['label_error_prob']:.3f}"
                                                      for m in suspects]
        summary = browser.find_element(By.ID, "summary").text
        assert f"Expected label errors\n{job['expected_label_errors']:.1f}" in summary
        confusion = browser.find_element(By.ID, "plot-confusion")
        _wait(lambda: confusion.get_attribute("data-loaded") == "1", 20, "the confusion plot")
        buttons = browser.find_elements(By.CSS_SELECTOR, "#downloads button")
        assert "subset.csv" in [b.text for b in buttons]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs  # no script errors, no refused resources (CSP) on the page
