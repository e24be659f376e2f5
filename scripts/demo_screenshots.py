"""Screenshots of `caphuman demo` for the README, taken in headless Chromium (Playwright + Debian's
chromium). Starts the demo on a free port, uploads real photos that ship with scikit-image, moves
the head sliders, generates, turns the head, and saves docs/images/demo_*.png (palette PNGs, small).

  python scripts/demo_screenshots.py --config configs/tiny.yaml --out docs/images
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_small(png_bytes_path: Path, out: Path) -> None:
    """Palette-quantise a screenshot (UI colours survive; a few kB instead of a few hundred)."""
    image = Image.open(png_bytes_path).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--weights", default="checkpoints")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="caphuman-shots-"))
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(work / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(work / "mirrored.png")

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caphuman.cli",
            "demo",
            "--config",
            args.config,
            "--weights",
            args.weights,
            "--port",
            str(port),
            "--output-dir",
            str(work / "results"),
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(360):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(url)
            page.wait_for_selector("#generate")
            page.locator("#reference input[type=file]").set_input_files(str(work / "astronaut.png"))
            page.wait_for_selector("#hint_preview img")
            page.locator("#prompt textarea").fill("a photo of a woman, on the beach")
            page.locator("#yaw input[type=range]").fill("30")
            page.wait_for_timeout(1500)
            page.click("#generate")
            page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Generated')")
            page.screenshot(path=str(work / "main.png"), full_page=True)
            save_small(work / "main.png", out / "demo_main.png")

            page.click("#sweep")
            page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Turned')")
            page.locator("#strip").screenshot(path=str(work / "sweep.png"))
            save_small(work / "sweep.png", out / "demo_turn_head.png")

            page.get_by_role("tab", name="Person 2 (optional)").click()
            page.locator("#reference2 input[type=file]").set_input_files(str(work / "mirrored.png"))
            page.wait_for_timeout(3000)
            page.locator("#hint_preview").screenshot(path=str(work / "two.png"))
            save_small(work / "two.png", out / "demo_two_people_hint.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("demo_main.png", "demo_turn_head.png", "demo_two_people_hint.png"):
        print(f"{out / name}: {(out / name).stat().st_size // 1024} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
