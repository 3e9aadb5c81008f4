"""The dashboard in a real browser: a node process translates a series, headless Chromium looks.

The node (``python -m ct2pet_node start``, tiny model), storescu and
Chromium all run inside one private network namespace (tests/peers.py), so
nothing the page asked for could have left the machine; the test also reads
every request the page made from Chromium's own network log and allows the
node's address only. Screenshots of both pages are saved to
``$CT2PET_ARTEFACTS`` (or a temporary folder), printed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctfactory import make_ct_series
from peers import DCMTK_ENV, NetNamespace, dcmtk_tool, namespaces_unavailable

from ct2pet_node.domain.jobs import Job, JobState
from ct2pet_node.spool.jobstore import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCP_PORT = 11112
ADMIN_PORT = 11180
TOKEN = "dashboard-test-token"
NODE = f"http://127.0.0.1:{ADMIN_PORT}"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "Chromium not found: apt-get install chromium chromium-driver (scripts/install.sh --test)"
        )
    return browser, driver


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    if reason := namespaces_unavailable():
        pytest.skip(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = Path(os.environ.get("CT2PET_ARTEFACTS") or tmp_path_factory.mktemp("dashboard-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\ndashboard screenshots: {folder}")


@pytest.fixture
def node(namespace: NetNamespace, tmp_path: Path, tiny_weights: Path) -> Iterator[Path]:
    """A node with a token and no destination; yields its data_dir."""
    data_dir = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nport = {SCP_PORT}\ndata_dir = {json.dumps(str(data_dir))}\nmin_free_mb = 0\n'
        "[routing]\nseries_quiet_seconds = 1.0\nmin_slices = 5\n"
        f'[engine]\nweights = {json.dumps(str(tiny_weights))}\ndevice = "cpu"\nsteps = 4\n'
        '[output]\nseries = ["pet"]\ngrid = "model"\n'
        f'[admin]\nlisten = "127.0.0.1:{ADMIN_PORT}"\ntoken = "{TOKEN}"\n'
    )
    log = (tmp_path / "node.log").open("wb")
    process = namespace.popen(
        [sys.executable, "-m", "ct2pet_node", "--log-json", "start", "--config", config],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        namespace.wait_for_port(SCP_PORT, 60, process)
        yield data_dir
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


def _wait_done(data_dir: Path, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with JobStore.open(data_dir) as store:
            jobs = store.list_jobs()
        if jobs and jobs[-1].state.is_final:
            assert jobs[-1].state is JobState.DONE, jobs[-1]
            return jobs[-1]
        time.sleep(0.2)
    raise AssertionError(f"no job finished in {timeout} s")


def _http_status(path: str, token: str | None) -> int:
    request = urllib.request.Request(NODE + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def _browser(browser: str, driver: str, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces it may not have
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _requests(session: Any) -> list[tuple[str, int | None]]:
    """(URL, status) of every request the page made since the last call, from Chromium's network log."""
    found: dict[str, tuple[str, int | None]] = {}
    for entry in session.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            found.setdefault(params["requestId"], (params["request"]["url"], None))
        elif message["method"] == "Network.responseReceived":
            found[params["requestId"]] = (params["response"]["url"], int(params["response"]["status"]))
    return list(found.values())


def _screenshot(session: Any, path: Path) -> None:
    """The whole page, below the fold too, as a PNG."""
    shot = session.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def test_dashboard_and_job_page_render_in_chromium_from_the_node_alone(
    namespace: NetNamespace, node: Path, tmp_path: Path, artefacts: Path
) -> None:
    browser, driver = _chromium()
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk's storescu not found (apt install dcmtk)")
    series = make_ct_series(tmp_path / "ct", n=12, rows=64, cols=64)
    sent = namespace.run(
        [storescu, "-aet", "SCANNER", "-aec", "CT2PET", "127.0.0.1", str(SCP_PORT), *map(str, series)],
        env=DCMTK_ENV,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job = _wait_done(node)

    with namespace.entered():
        assert _http_status("/", None) == 401
        assert _http_status("/", "wrong") == 401
        assert _http_status(f"/jobs/{job.id}", None) == 401
        assert _http_status("/healthz", None) == 200

        session = _browser(browser, driver, tmp_path / "profile")
        try:
            session.get(NODE + "/")  # Chromium would ask for the token here; headless, it gives up
            assert (NODE + "/", 401) in _requests(session)
            assert not session.find_elements("css selector", "#jobs")

            # A browser would ask for the token; the test hands it to every request instead.
            session.execute_cdp_cmd("Network.enable", {})
            session.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {TOKEN}"}}
            )
            session.get(NODE + "/")
            row = session.find_element("xpath", f'//a[@href="/jobs/{job.id}"]/ancestor::tr')
            assert "done" in row.find_element("css selector", ".state").text
            assert job.series_uid in row.text
            assert session.find_elements("css selector", "svg")  # the throughput charts
            _screenshot(session, artefacts / "dashboard.png")
            dashboard_requests = _requests(session)

            session.find_element("xpath", f'//a[@href="/jobs/{job.id}"]').click()
            assert session.current_url == f"{NODE}/jobs/{job.id}"
            images = session.find_elements("css selector", "img.preview")
            assert len(images) == 2
            for image in images:
                assert session.execute_script("return arguments[0].complete", image)
                assert session.execute_script("return arguments[0].naturalWidth", image) > 0
            text = session.find_element("tag name", "body").text
            assert all(uid in text for uid in job.output_series_uids) and job.series_uid in text
            assert "steps 4" in text and "translate" in text
            _screenshot(session, artefacts / "job.png")
            job_requests = _requests(session)
        finally:
            session.quit()

    every = dashboard_requests + job_requests
    assert every and all(url.startswith(NODE + "/") for url, _ in every), every
    assert all(status == 200 for url, status in every if status is not None), every
    for name in ("dashboard.png", "job.png"):
        assert (artefacts / name).stat().st_size > 10_000
