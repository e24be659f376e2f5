"""End to end: `caphuman demo --config configs/tiny.yaml` on a free port, driven in headless Chromium.

Uses Debian's chromium (`apt-get install chromium`; .ci/run does) through Playwright for Python
with the system executable; no browser is downloaded.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CAPHUMAN_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)"
)
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage.data.astronaut()
    paths = {"face": folder / "astronaut.png", "mirrored": folder / "mirrored.jpg", "text": folder / "notes.txt", "fake": folder / "fake.jpg"}
    Image.fromarray(astronaut).save(paths["face"])
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(paths["mirrored"], quality=95)
    paths["text"].write_text("this is not a photo\n")
    paths["fake"].write_text("this is not a photo either\n")
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    out = tmp_path_factory.mktemp("demo-results")
    log = open(out / "server.log", "wb")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caphuman.cli",
            "demo",
            "--config",
            "configs/tiny.yaml",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--output-dir",
            str(out),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                log.close()
                raise RuntimeError(f"the demo did not start:\n{(out / 'server.log').read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"), args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def image_pixels(page, selector: str) -> np.ndarray:
    """The pixels the page shows in ``selector``'s image, read back from the browser (canvas)."""
    data_url = page.evaluate(
        """async (sel) => {
            const img = document.querySelector(sel + ' img');
            if (!img.complete || !img.naturalWidth) await new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; });
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            canvas.getContext('2d').drawImage(img, 0, 0);
            return canvas.toDataURL('image/png');
        }""",
        selector,
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def wait_for_new_image(page, selector: str, old_src: str | None) -> None:
    page.wait_for_function(
        "([sel, old]) => { const img = document.querySelector(sel + ' img'); return img && img.src && img.src !== old; }",
        arg=[selector, old_src or ""],
    )


def upload(page, element_id: str, path: Path) -> None:
    page.locator(f"#{element_id} input[type=file]").set_input_files(str(path))


def set_slider(page, element_id: str, value: int) -> None:
    """Drag-equivalent: set the range input (an 'input' event, as a drag fires). A slider that was
    just revealed may not listen yet, so try again until its number box shows the value."""
    for _ in range(20):
        page.locator(f"#{element_id} input[type=range]").fill(str(value))
        try:
            page.wait_for_function(
                "([id, v]) => document.querySelector(`#${id} input[type=number]`).value === v", arg=[element_id, str(value)], timeout=1000
            )
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"slider {element_id} did not take the value {value}")


def text_count(page, text: str) -> int:
    return page.evaluate("text => document.body.innerText.split(text).length - 1", text)


def generate(page) -> list[str]:
    """Click Generate and return the gallery's image sources once new ones are shown."""
    before = page.locator("#status").inner_text()
    page.click("#generate")
    page.wait_for_function(
        "old => { const s = document.querySelector('#status').innerText; return s !== old && s.startsWith('Generated'); }",
        arg=before,
    )
    images = page.locator("#gallery img")
    return [images.nth(index).get_attribute("src") for index in range(images.count())]


def test_photo_slider_preview_generate_error_and_recovery(server, browser, photos):
    page = open_page(browser, server)

    upload(page, "reference", photos["face"])
    wait_for_new_image(page, "#hint_preview", None)
    before = image_pixels(page, "#hint_preview")
    assert before.std() > 5  # a head is drawn, not an empty canvas

    # Moving the yaw slider turns the head in the preview (and switches "set angles" on).
    src = page.locator("#hint_preview img").get_attribute("src")
    set_slider(page, "yaw", 40)
    wait_for_new_image(page, "#hint_preview", src)
    turned = image_pixels(page, "#hint_preview")
    assert turned.shape == before.shape
    assert np.abs(turned.astype(int) - before.astype(int)).mean() > 1.0
    assert page.locator("#set_angles input").is_checked()

    # Generate: the images arrive, with downloads (PNG + config.yaml).
    sources = generate(page)
    assert len(sources) == 1
    shown = image_pixels(page, "#gallery")
    assert shown.shape[:2] == (256, 256) and shown.std() > 1
    downloads = page.locator("#downloads").inner_text()
    assert ".png" in downloads and "config" in downloads
    assert "seed 12345" in page.locator("#status").inner_text()

    # A text file: refused with a message in the page; a text file named .jpg: our sentence.
    upload(page, "reference", photos["text"])
    page.get_by_text("Invalid file type").first.wait_for()
    upload(page, "reference", photos["fake"])
    page.get_by_text("is not an image file that can be read").first.wait_for()
    assert "/tmp" not in page.get_by_text("is not an image file that can be read").first.inner_text()
    shown_before = text_count(page, "fake.jpg' is not an image file")
    page.click("#generate")  # generating with it says so too, in the page
    page.wait_for_function("([text, n]) => document.body.innerText.split(text).length - 1 > n", arg=["fake.jpg' is not an image file", shown_before])

    # The server kept serving: a real photo generates again.
    upload(page, "reference", photos["mirrored"])
    assert len(generate(page)) == 1
    page.close()


def test_two_sessions_generate_at_the_same_time(server, browser, photos):
    pages = [open_page(browser, server) for _ in range(2)]
    for page, photo in zip(pages, (photos["face"], photos["mirrored"]), strict=True):
        upload(page, "reference", photo)
        wait_for_new_image(page, "#hint_preview", None)
        page.get_by_text("Advanced options").click()
        set_slider(page, "num_images", 2)
    results: dict[int, list[str]] = {}
    for page in pages:  # click both before either finishes
        page.click("#generate")
    for index, page in enumerate(pages):
        try:
            page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Generated')")
        except sync_api.TimeoutError:
            page.screenshot(path=f"/tmp/demo_two_{index}.png", full_page=True)
            raise AssertionError(f"session {index} shows: {page.locator('body').inner_text()[-1500:]}") from None
        assert page.locator("#status").inner_text().startswith("Generated 2 image(s)"), page.locator("#status").inner_text()
        images = page.locator("#gallery img")
        results[index] = [images.nth(i).get_attribute("src") for i in range(images.count())]
    assert [len(sources) for sources in results.values()] == [2, 2]
    assert not set(results[0]) & set(results[1])  # each session got its own files
    for page in pages:
        page.close()
