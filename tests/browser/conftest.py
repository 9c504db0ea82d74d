"""Fixtures of the browser test: a small trained detector, the real server over it on loopback, headless Chromium.

Chromium and its driver come from Debian's packages (`chromium`, `chromium-driver`; `.ci/run` installs them);
selenium is pointed at them explicitly, so it never tries to download a browser (this machine has no internet).
Without them the test is skipped with the reason, never passed.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
TOKEN = "browser-test-token"  # the server asks for one, so the test goes through the viewer's token field


def _first(paths: tuple[str, ...], name: str) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None) or shutil.which(name)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder): 3 half-size synthetic scans and a detector trained on them for a few seconds.

    Longer than the integration tests' tiny recipe (scale 0.02, one epoch): that U-Net's probabilities peak
    near 0.2, under the Predictor's 0.5 threshold, so it finds nothing and the findings list would stay empty.
    Two segmentation epochs at scale 0.1 find a few candidates on every one of these scans.
    """
    from noduleflow.recipes.detector import train_detector
    from noduleflow.synth import synthesize

    root = tmp_path_factory.mktemp("viewer")
    data = root / "data"
    synthesize(data, scans=3, seed=2, size="small", scale=0.5, progress=False)
    overrides = {part: {"run.epochs": 1, "data.num_workers": 0} for part in ("segment", "classify", "malignancy")}
    overrides["segment"]["run.epochs"] = 2
    result = train_detector(
        data, run="tiny", runs_dir=root / "runs", scale=0.1, progress=False, threads=2, overrides=overrides
    )
    return data, result.run_dir


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _get_json(url: str, token: str | None = None) -> dict:
    """GET url (loopback only) and decode its JSON body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def token() -> str:
    """The bearer token the test server wants."""
    return TOKEN


@pytest.fixture
def get_json():
    """GET a URL of the test server with its token and decode the JSON body: get_json(url) -> dict."""
    return lambda url: _get_json(url, TOKEN)


@pytest.fixture(scope="module")
def server(detector, tmp_path_factory):
    """Base URL (http://127.0.0.1:PORT) of the real app under uvicorn in a thread, ready (models loaded),
    with the bearer token `TOKEN`."""
    import uvicorn

    from noduleflow.serve.app import create_app
    from noduleflow.serve.settings import ServeSettings

    _, run_dir = detector
    settings = ServeSettings(
        run=run_dir, state=tmp_path_factory.mktemp("state"), host="127.0.0.1", threads=2, token=TOKEN
    )
    sock = _free_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app_server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if _get_json(f"{base}/readyz").get("status") == "ready":
                break
        except OSError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server at {base} did not become ready within 60 s")
        time.sleep(0.2)
    yield base
    app_server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium under selenium, 1400 x 900; skipped (with the reason) where Chromium is not installed."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _first(CHROMIUM, "chromium"), _first(CHROMEDRIVER, "chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("Chromium or chromedriver is missing: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,900",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
