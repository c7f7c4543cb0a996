"""Pictures for report.html, as base64 PNG: class histograms, box distributions, crops of flagged boxes."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvtrain.curation.files import resolve_inside

if TYPE_CHECKING:
    from cvtrain.curation.findings import Finding

COLOURS = {"error": (220, 40, 40), "warning": (240, 150, 0), "info": (60, 120, 220)}
CROP_SIDE = 220


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op where a notebook backend is already active
    import matplotlib.pyplot as plt

    return plt


def class_histogram(statistics: dict) -> str | None:
    """Horizontal bars: examples per class, one colour per split."""
    splits = statistics.get("splits") or {}
    classes = statistics.get("classes") or []
    if not splits or not classes:
        return None
    plt = _pyplot()
    shown = classes[:100]
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.22 * len(shown) * max(1, len(splits)) ** 0.5))
    step = 0.8 / len(splits)
    positions = np.arange(len(shown))
    for number, (name, split) in enumerate(splits.items()):
        counts = [split["class_counts"].get(c, 0) for c in shown]
        axis.barh(positions + number * step, counts, height=step, label=f"{name} ({split['images']} images)")
    axis.set_yticks(positions + 0.4 - step / 2, shown, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("images containing the class" if statistics.get("semantic") else "annotations")
    axis.set_title("Class counts per split" + (" (first 100 classes)" if len(classes) > 100 else ""))
    axis.legend(fontsize=8)
    return _png(figure)


def box_distributions(samples: dict[str, dict[str, np.ndarray]]) -> str | None:
    """Two histograms per split: box size (sqrt of area, px, log scale) and aspect ratio (w/h, log scale)."""
    sizes, aspects = samples.get("box_size", {}), samples.get("aspect", {})
    if not any(len(v) for v in sizes.values()):
        return None
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    size_bins = _log_bins(np.concatenate([v for v in sizes.values() if len(v)]))
    aspect_bins = _log_bins(np.concatenate([v for v in aspects.values() if len(v)]))
    for name in sizes:
        if len(sizes[name]):
            left.hist(sizes[name], bins=size_bins, histtype="step", linewidth=1.5, label=name)
            right.hist(aspects[name], bins=aspect_bins, histtype="step", linewidth=1.5, label=name)
    left.set_xscale("log")
    left.set_xlabel("box size: sqrt(width x height), pixels of the original image")
    left.set_title("Box sizes")
    right.set_xscale("log")
    right.set_xlabel("aspect ratio: width / height")
    right.set_title("Box aspect ratios")
    from matplotlib import ticker

    for axis in (left, right):
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_ylabel("boxes")
        axis.legend(fontsize=8)
    return _png(figure)


def _log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    """Log-spaced bins over the values, at least a factor of 4 wide so that a narrow spread stays readable."""
    low, high = max(float(values.min()), 1e-3), max(float(values.max()), 1e-3)
    middle = np.sqrt(low * high)
    low, high = min(low, middle / 2), max(high, middle * 2) * 1.01
    return np.geomspace(low, high, count)


def pick_for_crops(findings: list[Finding], count: int) -> list[Finding]:
    """Up to ``count`` errors and warnings about an image, errors first, codes in turn so every kind is seen."""
    by_code: dict[str, list] = {}
    for finding in findings:
        if finding.severity != "info" and finding.image is not None and (
                finding.bbox is None or np.isfinite(finding.bbox).all()):
            by_code.setdefault(finding.code, []).append(finding)
    picked: list = []
    queues = list(by_code.values())
    while queues and len(picked) < count:
        for queue in list(queues):
            if len(picked) == count:
                break
            picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


def crop(root: Path, finding: Finding) -> str | None:
    """The flagged box drawn on its image and cropped around it, or the whole flagged image, as PNG.

    A truncated image is shown as far as it decodes (the missing part is grey).
    None when the file cannot be read at all.
    """
    from PIL import Image, ImageDraw, ImageFile

    path = resolve_inside(root.resolve(), finding.image)
    if path is None or not path.is_file():
        return None
    truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        with Image.open(path) as source:
            image = source.convert("RGB")
    except Exception:  # noqa: BLE001 - an unreadable image is already reported; it just has no picture
        return None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    if finding.bbox is None:
        return _encode(image, scale=CROP_SIDE / max(image.width, image.height))
    x, y, w, h = finding.bbox
    margin = max(w, h) * 0.6 + 16
    left, top = max(int(x - margin), 0), max(int(y - margin), 0)
    right, bottom = min(int(x + w + margin), image.width), min(int(y + h + margin), image.height)
    if right <= left or bottom <= top:  # the box lies wholly outside: show the whole image
        left, top, right, bottom = 0, 0, image.width, image.height
    draw = ImageDraw.Draw(image)
    line = max(1, round(max(right - left, bottom - top) / CROP_SIDE))
    x0, x1 = sorted((x, x + w))
    y0, y1 = sorted((y, y + h))
    draw.rectangle([x0, y0, x1, y1], outline=COLOURS[finding.severity], width=line)
    piece = image.crop((left, top, right, bottom))
    return _encode(piece, scale=CROP_SIDE / max(piece.width, piece.height))


def _encode(image, *, scale: float) -> str:
    from PIL import Image

    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
