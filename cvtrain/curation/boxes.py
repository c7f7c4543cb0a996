"""Box-level warnings: duplicates, class conflicts, robust outliers, tiny boxes, area and mask disagreements."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cvtrain.curation.columns import group_starts
from cvtrain.curation.findings import Collector
from cvtrain.curation.structure import Geometry, format_box, format_number

MAX_PAIRS = 4_000_000  # box pairs compared at once (memory bound)
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
# Floor on the robust sigma (log units): without it, a class whose boxes are nearly all one size would
# flag a box only 1.5x larger; with it, an outlier is at least exp(0.25 * outlier_mads) = 4.5x off the median.
MIN_LOG_SIGMA = 0.25


def check_box_warnings(out: Collector, usable: np.ndarray, labels: np.ndarray, width: np.ndarray,
                       height: np.ndarray, geometry: Geometry, image_size: int | None) -> None:
    """All box warnings over the ``usable`` rows (finite, positive, on a declared image)."""
    annotations = out.annotations
    image_w = np.where(usable, width[np.maximum(annotations.image_row, 0)], np.nan)
    image_h = np.where(usable, height[np.maximum(annotations.image_row, 0)], np.nan)
    rows = np.flatnonzero(usable & (labels >= 0))
    _duplicates_and_conflicts(out, rows, labels)
    _outliers(out, rows, labels, image_w, image_h)
    if image_size is not None:
        _tiny(out, rows, image_w, image_h, image_size)
    _area(out, geometry)
    _segmentation_extent(out, geometry)


def same_image_pairs(image_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All pairs ``(i, j)``, ``i < j``, of positions with the same value in the sorted ``image_ids``, in chunks."""
    starts = group_starts(image_ids)
    sizes = np.diff(np.append(starts, len(image_ids)))
    local = np.arange(len(image_ids)) - np.repeat(starts, sizes)
    partners = np.repeat(sizes, sizes) - 1 - local  # later elements of the same group
    cumulative = np.cumsum(partners)
    begin = 0
    while begin < len(image_ids):
        done = cumulative[begin - 1] if begin else 0
        end = max(int(np.searchsorted(cumulative, done + MAX_PAIRS, side="right")), begin + 1)
        count = partners[begin:end]
        first = np.repeat(np.arange(begin, end), count)
        offset = np.arange(len(first)) - np.repeat(np.cumsum(count) - count, count)
        yield first, first + 1 + offset
        begin = end


def _duplicates_and_conflicts(out: Collector, rows: np.ndarray, labels: np.ndarray) -> None:
    annotations = out.annotations
    boxes = annotations.bbox[rows]
    image = annotations.image_id[rows]
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], labels[rows], image))
    sorted_rows = rows[order]
    same = (
        (np.diff(image[order]) == 0) & (np.diff(labels[rows][order]) == 0) & (np.diff(boxes[order], axis=0) == 0).all(1)
    )
    duplicate = sorted_rows[1:][same]
    original = sorted_rows[:-1][same]
    out.add_annotations("box.duplicate", duplicate, lambda shown: (
        f"same class and box as annotation {annotations.id[r]}" for r in original[: len(shown)]))
    if not out.enabled("box.class_conflict"):
        return
    names = out.index.class_names
    flagged, texts = [], []
    xyxy = np.concatenate([boxes[order][:, :2], boxes[order][:, :2] + boxes[order][:, 2:]], axis=1)
    sorted_labels = labels[sorted_rows]
    for i, j in same_image_pairs(image[order]):
        keep = sorted_labels[i] != sorted_labels[j]
        i, j = i[keep], j[keep]
        iou = _iou(xyxy[i], xyxy[j])
        hit = iou >= out.config.conflict_iou
        for a, b, value in zip(i[hit].tolist(), j[hit].tolist(), iou[hit].tolist()):
            flagged.append(int(sorted_rows[b]))
            texts.append(f"labelled {names[sorted_labels[b]]!r}; annotation {annotations.id[sorted_rows[a]]} "
                         f"labels the same box {names[sorted_labels[a]]!r} (IoU {value:.2f})")
    order = np.argsort(flagged, kind="stable")
    out.add_annotations("box.class_conflict", np.array(flagged, np.int64)[order], [texts[p] for p in order])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-12)


def _outliers(out: Collector, rows: np.ndarray, labels: np.ndarray, image_w: np.ndarray, image_h: np.ndarray) -> None:
    """Per class, flag boxes whose log size or log aspect is more than ``outlier_mads`` robust sigmas away.

    Size is relative to the image (sqrt of the area fraction) where the image size
    is known, so one class photographed at two resolutions is not an outlier.
    """
    rows = rows[~out.annotations.iscrowd[rows]]
    w, h = out.annotations.bbox[rows, 2], out.annotations.bbox[rows, 3]
    scale = np.sqrt(image_w[rows] * image_h[rows])
    size = np.log(np.sqrt(w * h) / np.where(np.isnan(scale), 1.0, scale))
    aspect = np.log(w / h)
    label = labels[rows]
    names = out.index.class_names
    for code, values, what in (("box.size_outlier", size, "size"), ("box.aspect_outlier", aspect, "aspect ratio")):
        if not out.enabled(code):
            continue
        flagged, texts = [], []
        for klass in np.unique(label).tolist():  # a loop over classes, not annotations
            members = np.flatnonzero(label == klass)
            if len(members) < out.config.outlier_min_examples:
                continue
            sample = values[members]
            median = np.median(sample)
            spread = max(MAD_TO_SIGMA * float(np.median(np.abs(sample - median))), MIN_LOG_SIGMA)
            z = (sample - median) / spread
            for position in np.flatnonzero(np.abs(z) > out.config.outlier_mads).tolist():
                flagged.append(int(rows[members[position]]))
                factor = float(np.exp(abs(sample[position] - median)))
                texts.append(f"{what} is {format_number(factor)}x {'above' if z[position] > 0 else 'below'} the "
                             f"median of class {names[klass]!r} ({format_number(abs(z[position]))} robust sigmas)")
        order = np.argsort(flagged, kind="stable")
        out.add_annotations(code, np.array(flagged, np.int64)[order], [texts[p] for p in order])


def _tiny(out: Collector, rows: np.ndarray, image_w: np.ndarray, image_h: np.ndarray, image_size: int) -> None:
    rows = rows[~out.annotations.iscrowd[rows]]
    scale = image_size / np.maximum(image_w[rows], image_h[rows])
    side = np.minimum(out.annotations.bbox[rows, 2], out.annotations.bbox[rows, 3]) * scale
    tiny = side < out.config.min_box_pixels  # NaN (unknown image size) compares False
    flagged, shown = rows[tiny], side[tiny]
    out.add_annotations("box.tiny_at_input_size", flagged, lambda listed: (
        f"shorter side is {format_number(value)} px at image_size {image_size}" for value in shown[: len(listed)]))


def _area(out: Collector, geometry: Geometry) -> None:
    annotations = out.annotations
    w, h = annotations.bbox[:, 2], annotations.bbox[:, 3]
    has_mask = ~np.isnan(geometry.area)
    reference = np.where(has_mask, geometry.area, w * h)
    slack = np.abs(w) + np.abs(h)  # rasterising an outline can add or lose about one pixel along it
    ratio = out.config.area_ratio
    stored = annotations.area
    with np.errstate(invalid="ignore"):
        bad = (stored > reference * ratio + slack) | (stored < reference / ratio - slack)
    # a box-only reference needs a usable box: a zero or NaN box is reported once, by its own error
    measurable = has_mask | (np.isfinite(annotations.bbox).all(axis=1) & (w > 0) & (h > 0))
    rows = np.flatnonzero(bad & np.isfinite(reference) & measurable)
    out.add_annotations("annotation.area_mismatch", rows, lambda shown: (
        f"area {stored[r]:g} but the {'mask' if has_mask[r] else 'box'} covers {reference[r]:.6g}" for r in shown))


def _segmentation_extent(out: Collector, geometry: Geometry) -> None:
    annotations = out.annotations
    known = ~np.isnan(geometry.extent).any(axis=1) & np.isfinite(annotations.bbox).all(axis=1)
    rows = np.flatnonzero(known)
    box, extent = annotations.bbox[rows], geometry.extent[rows]
    iou = _iou(np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], 1),
               np.concatenate([extent[:, :2], extent[:, :2] + extent[:, 2:]], 1))
    bad = iou < out.config.segmentation_box_iou
    flagged, flagged_iou = rows[bad], iou[bad]
    out.add_annotations("box.segmentation_mismatch", flagged, lambda shown: (
        f"box {format_box(annotations.bbox[r])} vs segmentation extent {format_box(geometry.extent[r])} (IoU {v:.2f})"
        for r, v in zip(shown.tolist(), flagged_iou.tolist())))
