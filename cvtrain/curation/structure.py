"""Structural checks over the annotation table: ids, references, categories, boxes, segmentations.

Everything here is vectorised over ``AnnotationColumns``; Python only runs
for the findings that are listed in the report.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvtrain.curation.columns import NO_IMAGE, group_starts
from cvtrain.curation.findings import Collector


@dataclass
class Geometry:
    """Per annotation row: area and extent of its own segmentation (NaN when it has none or it is invalid)."""

    area: np.ndarray
    extent: np.ndarray  # (n, 4) x y w h


def repeated_rows(keys: np.ndarray) -> np.ndarray:
    """Rows whose key already appeared in an earlier row."""
    order = np.argsort(keys, kind="stable")
    repeat = keys[order][1:] == keys[order][:-1]
    return np.sort(order[1:][repeat])


def check_ids(out: Collector) -> None:
    """Image and annotation ids: duplicates, annotations of unknown images or categories."""
    images, annotations, index = out.images, out.annotations, out.index
    rows = repeated_rows(images.id)
    first = dict(zip(images.id[::-1].tolist(), range(len(images.id) - 1, -1, -1))) if len(rows) else {}
    out.add_images("image.duplicate_id", rows, [
        f"image id {images.id[r]} is already used by {index.images[first[images.id[r]]].file_name!r}" for r in rows])
    rows = repeated_rows(annotations.id)
    values, counts = np.unique(annotations.id[rows], return_counts=True)
    uses = dict(zip(values.tolist(), (counts + 1).tolist()))
    out.add_annotations("annotation.duplicate_id", rows, [
        f"annotation id {annotations.id[r]} is used {uses[annotations.id[r]]} times" for r in rows])
    rows = np.flatnonzero(annotations.image_row == NO_IMAGE)
    out.add_annotations("annotation.unknown_image", rows, lambda shown: (
        f"image_id {annotations.image_id[r]} is not among the declared images" for r in shown))
    declared = np.array([category.id for category in index.categories], dtype=np.int64)
    rows = np.flatnonzero(~np.isin(annotations.category_id, declared))
    out.add_annotations("annotation.unknown_category", rows, lambda shown: (
        _unknown_category_text(out, r, declared) for r in shown))
    if 0 in declared and index.task != "semantic_segmentation":  # mask value 0 is an ordinary class
        zero = next(c for c in index.categories if c.id == 0)
        out.add("category.zero_id", f"category {zero.name!r} has id 0 (ids here are 0-based)",
                file=index.sources[0] if index.sources else None)


def _unknown_category_text(out: Collector, row: int, declared: np.ndarray) -> str:
    annotation = out.index.annotations[row]
    name = (annotation.extra or {}).get("name")
    if annotation.category_id == -1 and name is not None:
        return f"class {name!r} is not in data.classes {out.index.class_names}"
    return f"category_id {annotation.category_id} is not declared (declared: {declared.tolist()[:20]})"


def check_boxes(out: Collector, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Box errors; returns the rows whose boxes are usable for statistics."""
    boxes = out.annotations.bbox
    finite = np.isfinite(boxes).all(axis=1)
    out.add_annotations("box.not_finite", np.flatnonzero(~finite), lambda shown: (
        f"box {format_box(boxes[r])} has a NaN or infinite value" for r in shown))
    positive = finite & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    out.add_annotations("box.non_positive", np.flatnonzero(finite & ~positive), lambda shown: (
        f"box {format_box(boxes[r])} has width {boxes[r, 2]:g} and height {boxes[r, 3]:g}" for r in shown))
    image_row = out.annotations.image_row
    known = image_row != NO_IMAGE
    image_w = np.where(known, width[image_row], np.nan)
    image_h = np.where(known, height[image_row], np.nan)
    x, y, w, h = boxes.T
    tolerance = out.config.box_tolerance
    with np.errstate(invalid="ignore"):
        past = np.maximum.reduce([-x, -y, x + w - image_w, y + h - image_h])
        outside = positive & (past > tolerance)  # NaN (unknown image size) compares False
    out.add_annotations("box.outside_image", np.flatnonzero(outside), lambda shown: (
        f"box {format_box(boxes[r])} reaches {format_number(past[r])} px past the "
        f"{image_w[r]:.0f}x{image_h[r]:.0f} image" for r in shown))
    return positive & known


def format_number(value: float) -> str:
    """``12.5``; a number from the user's file that is huge (1e+259) in exponent form, not 260 digits.

    >>> format_number(26.04), format_number(1e308)
    ('26.0', '1e+308')
    """
    return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.3g}"


def format_box(box: np.ndarray) -> str:
    """A box as ``[x, y, w, h]`` with short numbers, for messages."""
    return "[" + ", ".join(f"{v:.6g}" for v in box) + "]"


def check_segmentations(out: Collector, width: np.ndarray, height: np.ndarray) -> Geometry:
    """Polygon and RLE errors; returns the area and extent of every valid segmentation."""
    annotations = out.annotations
    n = len(annotations.id)
    geometry = Geometry(area=np.full(n, np.nan), extent=np.full((n, 4), np.nan))
    out.add_annotations("segmentation.invalid", annotations.other_segmentation_rows,
                        "segmentation is neither a list of polygons nor an RLE dict")
    polygons = annotations.polygons()
    out.add_annotations("segmentation.invalid", polygons.invalid_rows, "polygon holds values that are not numbers")
    odd = polygons.length % 2 == 1
    few = ~odd & (polygons.length < 6)
    odd_rows, where = np.unique(polygons.owner[odd], return_index=True)
    out.add_annotations("segmentation.polygon_odd_coordinates", odd_rows,
                        [f"polygon with {n} coordinates" for n in polygons.length[odd][where].tolist()])
    few_rows, where = np.unique(polygons.owner[few], return_index=True)
    out.add_annotations("segmentation.polygon_too_few_points", few_rows,
                        [f"polygon with {n // 2} points" for n in polygons.length[few][where].tolist()])
    bad = np.union1d(odd_rows, few_rows)
    good = ~np.isin(polygons.owner, bad)
    _polygon_geometry(polygons, good, geometry)
    _rle_geometry(out, width, height, geometry)
    return geometry


def _polygon_geometry(polygons, good: np.ndarray, geometry: Geometry) -> None:
    """Shoelace area and extent of each annotation's polygons, with ``reduceat`` over flat arrays."""
    length, start, owner = polygons.length[good], polygons.start[good], polygons.owner[good]
    if len(length) == 0:
        return
    if good.all():
        coords = polygons.coords
    else:  # gather the coordinates of the good polygons only
        total = int(length.sum())
        offsets = np.repeat(start - np.concatenate([[0], np.cumsum(length)[:-1]]), length)
        coords = polygons.coords[np.arange(total) + offsets]
    x, y = coords[0::2], coords[1::2]
    points = length // 2
    first = np.concatenate([[0], np.cumsum(points)[:-1]])
    following = np.arange(len(x)) + 1
    following[first + points - 1] = first
    cross = x * y[following] - x[following] * y
    area = np.abs(np.add.reduceat(cross, first)) / 2
    owners = group_starts(owner)
    rows = owner[owners]
    geometry.area[rows] = np.add.reduceat(area, owners)
    # extents: per polygon, then per annotation (owner is sorted, so polygons of a row are contiguous)
    x0 = np.minimum.reduceat(np.minimum.reduceat(x, first), owners)
    y0 = np.minimum.reduceat(np.minimum.reduceat(y, first), owners)
    x1 = np.maximum.reduceat(np.maximum.reduceat(x, first), owners)
    y1 = np.maximum.reduceat(np.maximum.reduceat(y, first), owners)
    geometry.extent[rows] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def _rle_geometry(out: Collector, width: np.ndarray, height: np.ndarray, geometry: Geometry) -> None:
    """RLE size against the image, then mask area and extent through pycocotools (in one batch)."""
    from pycocotools import mask as mask_utils

    annotations = out.annotations
    rows = annotations.rle_rows
    if len(rows) == 0:
        return
    encoded, kept, invalid, mismatch, texts = [], [], [], [], []
    for row in rows.tolist():  # RLEs are the crowd regions: few per dataset
        rle = annotations.segmentations[row]
        size, counts = rle.get("size"), rle.get("counts")
        valid = (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)
                 and isinstance(counts, (list, str, bytes)))
        if valid and isinstance(counts, list):
            valid = all(isinstance(v, int) and v >= 0 for v in counts) and sum(counts) == size[0] * size[1]
        if not valid:
            invalid.append(row)
            continue
        image_row = annotations.image_row[row]
        if image_row != NO_IMAGE and not np.isnan(width[image_row]) and \
                (size[0], size[1]) != (height[image_row], width[image_row]):
            mismatch.append(row)
            texts.append(f"RLE size [h, w] = {size}, image is {width[image_row]:.0f}x{height[image_row]:.0f} (w x h)")
            continue
        try:
            encoded.append(mask_utils.frPyObjects(rle, *size) if isinstance(counts, list)
                           else {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts})
            kept.append(row)
        except Exception:  # noqa: BLE001 - pycocotools raises plain Exceptions on malformed strings
            invalid.append(row)
    out.add_annotations("segmentation.invalid", np.array(invalid, np.int64),
                        "RLE needs size [height, width] and counts that cover height*width pixels")
    out.add_annotations("segmentation.rle_size_mismatch", np.array(mismatch, np.int64), texts)
    if kept:
        kept_rows = np.array(kept, np.int64)
        # pycocotools 2.0.11's area() overflows a uint8 counter past 255 RLEs: batch below that
        geometry.area[kept_rows] = np.concatenate([mask_utils.area(encoded[i:i + 255])
                                                   for i in range(0, len(encoded), 255)])
        geometry.extent[kept_rows] = mask_utils.toBbox(encoded)
