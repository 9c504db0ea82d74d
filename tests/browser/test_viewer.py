"""The web viewer in headless Chromium against the real server: upload a scan, wait for its job, read the findings,
move through slices, and check that the slice view shows an image (not a blank canvas)."""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WAIT_S = 90  # upload + detection of one half-size scan on a loaded 2-core machine


def _pixels(element) -> np.ndarray:
    """(H, W) grayscale 0-255 of an element's screenshot."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"), dtype=np.float32)


def test_upload_then_findings_and_slices(browser, detector, server, token, get_json, tmp_path):
    """`browser` comes first: without Chromium the test is skipped before the detector is trained."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from noduleflow.ct import read_volume, write_volume

    data, run_dir = detector
    volume = read_volume(min(data.glob("subset*/*.mhd")))
    scan = write_volume(volume, tmp_path / "chest.mha")
    driver, wait = browser, WebDriverWait(browser, WAIT_S, poll_frequency=0.2)
    driver.get(server + "/")
    assert driver.title == "noduleflow viewer"

    # the server wants a token: the viewer asks for it, says when one is refused, and goes on with the right one
    field = driver.find_element(By.ID, "token")
    wait.until(lambda d: field.is_displayed())
    assert driver.find_element(By.ID, "model-info").text == "Enter the access token to connect."
    field.send_keys("not-the-token", Keys.ENTER)
    wait.until(lambda d: "did not accept" in d.find_element(By.ID, "token-label").text and field.is_displayed())
    field.clear()
    field.send_keys(token, Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "model-info").text.startswith(f"Model {run_dir.name} "))
    assert not field.is_displayed()

    # a file the server refuses: its one-sentence reason is shown, nothing is queued
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    driver.find_element(By.ID, "upload-button").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Upload failed: "))
    assert "notes.txt" in driver.find_element(By.ID, "status").text and get_json(f"{server}/v1/scans")["jobs"] == []

    driver.find_element(By.ID, "file").clear()
    driver.find_element(By.ID, "file").send_keys(str(scan))
    driver.find_element(By.ID, "upload-button").click()
    wait.until(lambda d: any(word in d.find_element(By.ID, "status").text for word in ("done", "failed")))
    status = driver.find_element(By.ID, "status").text
    assert "chest.mha: done" in status, status
    job_id = driver.execute_script("return decodeURIComponent(location.hash.slice('#job='.length))")
    job = get_json(f"{server}/v1/scans/{job_id}")
    assert job["status"] == "done" and job["filename"] == "chest.mha" and job["scan"]["shape"] == list(volume.shape)

    # the findings table: one row per finding of the job, in its order, with its values
    rows = driver.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    findings = job["findings"]
    assert len(findings) >= 1, "the test detector found nothing on this scan; the table would be empty"
    assert len(rows) == len(findings)
    assert f"{len(findings)} finding" in status
    first = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert first[:3] == ["1", f"{findings[0]['probability']:.2f}", f"{findings[0]['malignancy']:.2f}"]
    assert first[5] == str(round(findings[0]["center_irc"][0]) + 1)

    # the slice view opened on the first finding's slice and shows a real image, not a blank canvas
    canvas = driver.find_element(By.ID, "slice-canvas")
    wait.until(lambda d: canvas.get_attribute("data-loaded") == "true")
    assert int(canvas.get_attribute("data-slice")) == round(findings[0]["center_irc"][0])
    assert "finding" in canvas.get_attribute("aria-label")  # the finding is marked on its slice
    lung = _pixels(canvas)
    assert lung.shape[0] > 300 and lung.std() > 20, f"slice view looks blank: std {lung.std():.1f}"

    # the mediastinum preset changes the picture (soft tissue window: lung turns black)
    driver.find_element(By.CSS_SELECTOR, ".preset[data-window=mediastinum]").click()
    wait.until(lambda d: "mediastinum window" in canvas.get_attribute("aria-label"))
    soft = _pixels(canvas)
    assert soft.mean() < lung.mean() - 5 and np.abs(soft - lung).mean() > 5

    # keys and the wheel move through slices; a row of the table jumps to its finding's slice
    stage = driver.find_element(By.ID, "stage")
    start = int(canvas.get_attribute("data-slice"))
    step = 1 if start < volume.shape[0] - 1 else -1
    stage.send_keys(Keys.ARROW_DOWN if step == 1 else Keys.ARROW_UP)
    wait.until(lambda d: canvas.get_attribute("data-slice") == str(start + step))
    assert driver.find_element(By.ID, "slice-slider").get_attribute("value") == str(start + step)
    wheel_up = "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, bubbles: true, cancelable: true}))"
    driver.execute_script(wheel_up, stage)
    wait.until(lambda d: canvas.get_attribute("data-slice") == str(start))
    last = rows[-1]
    last.click()
    target = round(findings[-1]["center_irc"][0])
    wait.until(lambda d: canvas.get_attribute("data-slice") == str(target))
    assert "on-slice" in last.get_attribute("class")

    # the candidate mask overlay tints exactly what the server's mask PNG sets (nothing where it sets nothing)
    driver.find_element(By.CSS_SELECTOR, ".preset[data-window=lung]").click()
    wait.until(lambda d: "lung window" in canvas.get_attribute("aria-label"))
    driver.find_element(By.ID, "show-findings").click()  # circles off: only slice and mask remain
    wait.until(lambda d: "marked" not in canvas.get_attribute("aria-label"))
    plain = _rgb(canvas)
    assert _spread(plain) < 1  # a grayscale slice
    set_voxels = int((_png_array(_get(f"{server}/v1/scans/{job_id}/mask/{target}.png", token))[..., 3] > 0).sum())
    driver.find_element(By.ID, "show-mask").click()
    wait.until(lambda d: d.execute_script("return document.getElementById('slice-canvas').dataset.mask") == "on")
    masked = _rgb(canvas)
    tinted = np.abs(masked - plain).max(axis=2) > 20
    if set_voxels:
        voxels = volume.shape[1] * volume.shape[2]
        assert 0.25 * set_voxels / voxels < tinted.mean() < 4 * set_voxels / voxels + 0.01, (tinted.mean(), set_voxels)
        assert _spread(masked[tinted][None]) > 10  # the overlay is coloured where it tints
    else:
        assert not tinted.any()


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def _rgb(element) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"), dtype=np.float32)


def _spread(rgb: np.ndarray) -> float:
    """Largest mean difference between colour channels (0 for a grayscale picture)."""
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean(axis=(0, 1)).max())
