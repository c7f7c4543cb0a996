"""Slices: the score on groups of validation images that share an attribute, the worst group and its gap.

Attributes come from three places:
- built in: ``object_size`` (median box area of the image's objects, COCO's small < 32² <= medium < 96² <=
  large), ``object_count`` (0, 1, 2-3, 4-7, 8+), ``brightness`` (quartile of the mean luma over the split),
  ``image_size`` (quartile of the pixel count);
- COCO ``images[].attributes`` objects, read from the annotation files;
- ``slices.attributes``: a CSV beside the dataset with a ``file_name`` column and one column per attribute.

Each slice is scored exactly as the whole set is (pycocotools AP or mIoU on those images alone, through
the same per-image matches as the bootstrap); slices smaller than ``slices.min_images`` are listed but never
flagged, and a slice scoring more than ``slices.max_gap`` below the whole set is flagged.
"""
from __future__ import annotations

import csv
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.data.index import DatasetIndex
from cvtrain.errors import ConfigError

COUNT_BINS = ((0, 0, "0"), (1, 1, "1"), (2, 3, "2-3"), (4, 7, "4-7"), (8, 10 ** 9, "8+"))


@dataclass
class SliceRow:
    attribute: str
    value: str
    images: int
    score: float | None  # None: pycocotools has no score (no ground truth in the slice)
    gap: float | None = None  # whole - score
    flagged: bool = False


@dataclass
class SliceReport:
    """Per-slice scores of ``metric``, the worst eligible slice and whether it is flagged."""

    metric: str
    whole: float
    rows: list[SliceRow] = field(default_factory=list)
    min_images: int = 5
    max_gap: float = 0.1

    @property
    def worst(self) -> SliceRow | None:
        eligible = [row for row in self.rows if row.score is not None and row.images >= self.min_images]
        return min(eligible, key=lambda row: row.score) if eligible else None

    @property
    def flagged(self) -> list[SliceRow]:
        return [row for row in self.rows if row.flagged]

    def to_json(self) -> dict[str, Any]:
        worst = self.worst
        return {"metric": self.metric, "whole": self.whole, "min_images": self.min_images, "max_gap": self.max_gap,
                "worst": worst.__dict__ if worst else None, "flagged": [row.__dict__ for row in self.flagged],
                "slices": [row.__dict__ for row in self.rows]}

    def summary_line(self) -> str:
        worst = self.worst
        if worst is None:
            return f"slices: none with {self.min_images}+ images and a score"
        flag = f"  FLAGGED (more than {self.max_gap:g} below the whole set)" if worst.flagged else ""
        return (f"worst slice: {worst.attribute}={worst.value} ({worst.images} images) {self.metric} "
                f"{worst.score:.4f}, {worst.gap:+.4f} below the whole set{flag}")


def built_in_attributes(index: DatasetIndex, names: list[str], *, brightness: dict[int, float],
                        sizes: dict[int, tuple[int, int]], semantic: bool) -> dict[str, dict[int, str]]:
    """The built-in attributes of ``index``'s images (``sizes``: image id -> (height, width))."""
    attributes: dict[str, dict[int, str]] = {}
    ids = [record.id for record in index.images]
    if not semantic:
        boxes = index.annotations_by_image
        if "object_size" in names:
            values = {}
            for image_id in ids:
                areas = [a.bbox[2] * a.bbox[3] for a in boxes.get(image_id, []) if not a.iscrowd]
                median = float(np.median(areas)) if areas else None
                values[image_id] = ("none" if median is None else "small" if median < 32 ** 2
                                    else "medium" if median < 96 ** 2 else "large")
            attributes["object_size"] = values
        if "object_count" in names:
            counts = {i: sum(not a.iscrowd for a in boxes.get(i, [])) for i in ids}
            attributes["object_count"] = {i: next(label for low, high, label in COUNT_BINS if low <= n <= high)
                                          for i, n in counts.items()}
    if "brightness" in names and brightness:
        attributes["brightness"] = _quartiles({i: brightness[i] for i in ids if i in brightness}, "luma",
                                              lambda v: f"{v:.2f}")
    if "image_size" in names:
        pixels = {}
        for record in index.images:
            height, width = sizes.get(record.id) or (record.height, record.width)
            if height and width:
                pixels[record.id] = float(height * width)
        attributes["image_size"] = _quartiles(pixels, "pixels", lambda v: f"{v / 1e6:.2f} MP" if v >= 1e5 else
                                              f"{v:.0f}")
    return attributes


def _quartiles(values: dict[int, float], what: str, show: Callable[[float], str]) -> dict[int, str]:
    if not values:
        return {}
    edges = np.quantile(np.array(list(values.values())), [0.25, 0.5, 0.75])
    labels = [f"Q1 ({what} <= {show(edges[0])})", f"Q2 (<= {show(edges[1])})", f"Q3 (<= {show(edges[2])})",
              f"Q4 ({what} > {show(edges[2])})"]
    return {i: labels[int(np.searchsorted(edges, v, side="left"))] for i, v in values.items()}


def file_attributes(index: DatasetIndex, path: str | None) -> dict[str, dict[int, str]]:
    """Attributes from a CSV (``file_name`` plus one column each) and from COCO ``images[].attributes``.

    Raises:
        ConfigError: the CSV is missing or has no ``file_name`` column.
    """
    attributes: dict[str, dict[int, str]] = {}
    by_name: dict[str, int] = {}
    for record in index.images:
        by_name.setdefault(record.file_name, record.id)
        by_name.setdefault(posixpath.basename(record.file_name), record.id)
    for source in index.sources:
        if str(source).endswith(".json") and Path(source).is_file():
            try:
                document = json.loads(Path(source).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            for image in document.get("images", []) if isinstance(document, dict) else []:
                extra = image.get("attributes") if isinstance(image, dict) else None
                image_id = _match(by_name, str(image.get("file_name", "")))
                if isinstance(extra, dict) and image_id is not None:
                    for key, value in extra.items():
                        attributes.setdefault(str(key), {})[image_id] = str(value)
    if path:
        csv_path = Path(path) if Path(path).is_absolute() else index.root / path
        if not csv_path.is_file():
            raise ConfigError("slice attributes file not found", where=str(csv_path),
                              hint="slices.attributes is a CSV relative to data.root")
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "file_name" not in reader.fieldnames:
                raise ConfigError("no 'file_name' column", where=str(csv_path),
                                  hint="the first row names the columns: file_name, then one per attribute")
            for row in reader:
                image_id = _match(by_name, row["file_name"])
                if image_id is None:
                    continue
                for key, value in row.items():
                    if key != "file_name" and value not in (None, ""):
                        attributes.setdefault(key, {})[image_id] = value
    return attributes


def _match(by_name: dict[str, int], name: str) -> int | None:
    return by_name.get(name) if name in by_name else by_name.get(posixpath.basename(name))


def slice_report(statistic: Callable[[np.ndarray], dict[str, np.ndarray]], image_ids: list[int],
                 attributes: dict[str, dict[int, str]], *, metric: str, statistic_name: str, whole: float,
                 min_images: int, max_gap: float) -> SliceReport:
    """Score every slice: ``statistic`` maps 0/1 rows over ``image_ids`` to scores (a bootstrap's)."""
    keys, rows = [], []
    for attribute, values in attributes.items():
        for value in sorted(set(values.values())):
            members = {i for i, v in values.items() if v == value}
            keys.append((attribute, value, len(members)))
            rows.append([1.0 if i in members else 0.0 for i in image_ids])
    report = SliceReport(metric=metric, whole=whole, min_images=min_images, max_gap=max_gap)
    if not rows:
        return report
    scores = statistic(np.array(rows))[statistic_name]
    for (attribute, value, count), score in zip(keys, scores):
        usable = score >= 0
        gap = whole - float(score) if usable else None
        report.rows.append(SliceRow(attribute, value, count, float(score) if usable else None, gap,
                                    bool(usable and count >= min_images and gap > max_gap)))
    return report
