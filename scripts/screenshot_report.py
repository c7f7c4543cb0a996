"""Render a ``report.html`` to PNG in headless Chromium, to look at it as a person would.

    python scripts/screenshot_report.py runs/check-raccoon/report.html report.png [--size 1280,2400]

Needs Debian's ``chromium`` (``apt-get install -y chromium``). The page is
self-contained, and the browser is started without network features, so
nothing is fetched. Exits 2 when no Chromium is installed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(html: Path, png: Path, *, size: str = "1280,2400", timeout: float = 120.0) -> Path:
    """Write a PNG of ``html`` at window ``size`` (``width,height``); raises if the browser fails."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cvtrain-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--hide-scrollbars", f"--screenshot={png}", f"--window-size={size}",
                   html.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="report.html to render")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--size", default="1280,2400", help="window width,height in pixels")
    args = parser.parse_args()
    if find_chromium() is None:
        print("error: chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    print(screenshot(args.html, args.png, size=args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
