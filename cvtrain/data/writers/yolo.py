"""YOLO out, as Ultralytics reads it: ``data.yaml``, ``images/<split>/...``, ``labels/<split>/....txt``.

Boxes are written as ``class cx cy w h`` normalised by the image's size, with 6 decimals (within
0.0005 % of the image side of the box as it was); with ``segments`` a polygon annotation is written as
``class x1 y1 ...`` instead (its largest polygon; Ultralytics takes the box from the polygon's extent).
YOLO has no crowd regions, areas, category ids, RLE masks or per-object flags: those are listed as not
carried over.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cvtrain.data.index import DatasetIndex
from cvtrain.data.writers import (
    Losses,
    WriteResult,
    image_size,
    place_image,
    progress,
    register_writer,
    relative_names,
    split_of,
    write_dataset_file,
    write_text,
)


@register_writer("yolo")
def write_yolo(index: DatasetIndex, out: Path, *, images: str = "copy", segments: bool = False,
               **_: Any) -> WriteResult:
    """Write ``index`` as a YOLO dataset below ``out``.

    Args:
        index: a detection or instance-segmentation index.
        out: a new or empty folder.
        images: ``copy``, ``link``, ``symlink`` or ``none``.
        segments: write polygons as YOLO segmentation lines (boxes otherwise).

    Returns:
        The ``WriteResult``; ``lost`` counts crowd regions, segmentations not written, annotations of
        undeclared categories, per-object flags and DontCare regions, and says when ids were renumbered.
    """
    losses = Losses()
    names = relative_names(index.images)
    label_of = {c.id: position for position, c in enumerate(index.categories)}
    if [c.id for c in index.categories] != list(range(1, len(index.categories) + 1)):
        losses.add("category ids (YOLO has class indices; they read back as 1..K in the same order)",
                   len(index.categories))
    by_image = index.annotations_by_image
    splits: set[str] = set()
    written = 0
    for image in progress(index.images, "writing YOLO"):
        split = split_of(image)
        splits.add(split)
        width, height = image_size(index, image)
        lines = []
        for annotation in by_image.get(image.id, []):
            if annotation.iscrowd:
                losses.add("crowd regions (YOLO has none)")
                continue
            if annotation.category_id not in label_of:
                losses.add("annotations of undeclared categories (no class index to write)")
                continue
            if not width or not height:
                losses.add("annotations of images whose size is unknown (unreadable image)")
                continue
            lines.append(_line(label_of[annotation.category_id], annotation, width, height, segments, losses))
            extra = annotation.extra or {}
            if any(extra.get(key) for key in ("difficult", "truncated", "occluded", "alpha", "dimensions")):
                losses.add("per-object flags (difficult, truncated, occluded, KITTI 3-D values)")
            written += 1
        losses.add("DontCare regions (YOLO has none)", len((image.extra or {}).get("ignore_regions", [])))
        relative = PurePosixPath(names[image.id])
        write_text(out / "labels" / split / relative.with_suffix(".txt"), "".join(lines))
        place_image(index, image, out / "images" / split / relative, images)
    description = {"path": ".", **{split: f"images/{split}" for split in sorted(splits)},
                   "names": dict(enumerate(index.class_names))}
    write_text(out / "data.yaml", yaml.safe_dump(description, sort_keys=False, allow_unicode=True))
    dataset_file = write_dataset_file(out, {"format": "yolo", "annotations": "data.yaml"})
    return WriteResult(out=out, format="yolo", dataset_file=dataset_file, images=len(index.images), annotations=written,
                       lost=losses.lines())


def _line(label: int, annotation, width: int, height: int, segments: bool, losses: Losses) -> str:
    segmentation = annotation.segmentation
    if segments and isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if len(polygons) > 1:
            losses.add("objects of several polygons (only the largest is written)")
        if polygons:
            polygon = max(polygons, key=_area)
            xs, ys = polygon[0::2], polygon[1::2]
            extent = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            if max(abs(a - b) for a, b in zip(extent, annotation.bbox)) > 0.5:
                losses.add("boxes replaced by their polygon's extent, more than 0.5 px away (YOLO reads the box "
                           "from the polygon)")
            values = [v / (width if k % 2 == 0 else height) for k, v in enumerate(polygon)]
            return f"{label} " + " ".join(f"{v:.6f}" for v in values) + "\n"
    if isinstance(segmentation, dict):
        losses.add("RLE masks (YOLO lines hold boxes or polygons)")
    elif segmentation is not None and not segments:
        losses.add("polygons (YOLO detection lines hold boxes; --segments writes the polygons)")
    x, y, w, h = annotation.bbox
    return f"{label} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}\n"


def _area(polygon: list[float]) -> float:
    xs, ys = polygon[0::2], polygon[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
