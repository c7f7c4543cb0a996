"""report.html opened in a real headless Chromium (skipped where Chromium is not installed, as in CI)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from curation_builders import add_box, clean_coco, write
from PIL import Image

from cvtrain.curation import ChecksConfig, check_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"


def load_script():
    spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_renders_in_chromium(tmp_path):
    screenshot = load_script()
    if screenshot.find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); the HTML itself is tested elsewhere")
    root = tmp_path / "set"
    data = clean_coco(root)
    add_box(data, 2, 1, [50, 30, 30, 16], segmentation=None)  # an error with a crop to draw
    report = check_dataset(write(root, data, {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8]}),
                           ChecksConfig(cache_file=tmp_path / "cache.json", workers=1), image_size=512, progress=False)
    folder = report.write(tmp_path / "report")

    png = screenshot.screenshot(folder / "report.html", tmp_path / "shot.png", size="1280,2400")

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2400, 1280, 3)
    rows_with_ink = (pixels.min(axis=(1, 2)) < 200).sum()
    assert rows_with_ink > 400  # text, tables and plots, not a blank or error page
    # the error badge (#fbe3e3 background, #b00 text) and matplotlib's blue bars (#1f77b4) are drawn
    assert (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 30).sum() > 500
    assert (np.abs(pixels - [251, 227, 227]).sum(axis=2) < 10).sum() > 100
