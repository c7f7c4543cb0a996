"""Label-error scores from out-of-fold predictions: one record per suspect annotation (or region, or missed object).

Every record has a ``kind`` and a ``score`` in [0, 1] (1: the label is surely wrong). The scores are confident
learning (Northcutt et al., 2021) carried over to boxes: a prediction counts as confident for class ``c`` when its
score reaches ``t_c``, the mean score the model gives class ``c`` where class ``c`` is annotated (its out-of-fold
self-confidence), so a class the model is shy about is judged by its own standard. With ``r_c = min(1, s_c / t_c)``
(``s_c``: the best class-``c`` prediction at the box) and ``k`` the given class:

- ``swapped``: ``max_{c != k} r_c * (1 - r_k)``, predictions at ``audit.match_iou`` (another class is confidently
  there, the given one is not);
- ``badly_located``: ``r_k' * clip((l_k - iou) / (l_k - match_iou), 0, 1)`` with the best same-class prediction
  from ``audit.near_iou`` on (``r_k'`` its calibrated score, ``iou`` its overlap, ``l_k`` the median overlap of
  the class's confidently found annotations: how well the model usually fits class ``k``); an overlap at or
  below ``match_iou`` is as bad as it gets, one as good as usual is fine; times ``1 - r_fit``, with ``r_fit`` the
  calibrated score of the best same-class prediction that fits the box by ``l_k`` or more (the model also finds
  the object where it is given: the partial overlap is a looser detection);
- ``spurious``: ``1 - max_c r_c`` with predictions from ``audit.near_iou`` on (nothing of any class is near);
- ``missing``: ``r_c`` of a prediction that overlaps no annotation by ``audit.missing_iou`` (one per object:
  class-agnostic NMS at ``match_iou``).

Every kind mixes in ``TIE_BREAK`` (0.1 %) of the same expression on raw scores: ``r_c`` is 1 for every prediction
above ``t_c``, and the raw score orders those ties (the more confident prediction first), within a kind and across
kinds (an image's score is its highest record).

An annotation's record takes the kind that scores highest. Semantic segmentation scores connected regions of one
class in the given mask: the mean over the region's pixels of ``r_c`` for the pixels whose predicted class ``c`` is
not the given one (``t_c``: the mean probability of class ``c`` over the pixels labelled ``c``), so a region the
model gives wholly and confidently to another class scores 1.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvtrain.data.index import DatasetIndex

KINDS = ("swapped", "badly_located", "missing", "spurious")
# Calibrated scores saturate at 1 for every prediction above its class's threshold; this much of the raw score is
# mixed in so that, among those, the more confident one ranks first (a tie would be ordered by chance).
TIE_BREAK = 1e-3
ANNOTATION_KINDS = ("swapped", "badly_located", "spurious")
HISTOGRAM_BINS = 20  # semantic segmentation: confidence bins per predicted class in a region's statistics


@dataclass
class Record:
    """One suspect label: what is given, what the model suggests, how sure the audit is."""

    kind: str
    score: float
    image_id: int
    annotation_id: int | None  # None for a missing annotation and for semantic regions
    given: dict[str, Any] | None  # category_id, bbox [x, y, w, h] (regions: also pixels); None when missing
    suggested: dict[str, Any]  # action (relabel, move, delete, add), category_id, bbox, confidence
    kind_scores: dict[str, float] = field(default_factory=dict)  # every kind's score of this annotation

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": round(self.score, 5), "image_id": self.image_id,
                "annotation_id": self.annotation_id, "given": self.given, "suggested": self.suggested,
                "kind_scores": {k: round(v, 5) for k, v in self.kind_scores.items()}}


@dataclass
class Calibration:
    """Per-class thresholds from the out-of-fold scores; ``typical_iou`` is ``l_k`` (boxes and masks only)."""

    thresholds: dict[int, float]
    raw_thresholds: dict[int, float] = field(default_factory=dict)  # before the audit.min_threshold floor
    typical_iou: dict[int, float] = field(default_factory=dict)
    supported: dict[int, float] = field(default_factory=dict)  # share of the class's annotations found confidently


# ----------------------------------------------------------------------------------------------- overlaps
def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(N, 4)`` and ``(M, 4)`` boxes given as ``[x, y, w, h]``."""
    first = np.asarray(first, dtype=np.float64).reshape(-1, 4)
    second = np.asarray(second, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(first[:, None, 0], second[None, :, 0])
    y0 = np.maximum(first[:, None, 1], second[None, :, 1])
    x1 = np.minimum(first[:, None, 0] + first[:, None, 2], second[None, :, 0] + second[None, :, 2])
    y1 = np.minimum(first[:, None, 1] + first[:, None, 3], second[None, :, 1] + second[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (first[:, 2] * first[:, 3])[:, None] + (second[:, 2] * second[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mask_iou(first: list[dict], second: list[dict]) -> np.ndarray:
    """IoU matrix of two lists of COCO RLE masks (pycocotools)."""
    from pycocotools import mask as mask_utils

    if not first or not second:
        return np.zeros((len(first), len(second)))
    overlaps = mask_utils.iou(first, second, [0] * len(second))
    return np.asarray(overlaps, dtype=np.float64).reshape(len(first), len(second))


def annotation_rle(annotation, height: int, width: int) -> dict:
    """COCO RLE of an annotation's polygons or RLE; its box when it has no segmentation."""
    from pycocotools import mask as mask_utils

    segmentation = annotation.segmentation
    if isinstance(segmentation, list):
        segmentation = [p for p in segmentation if isinstance(p, list) and len(p) >= 6] or None
    if segmentation is None:
        x, y, w, h = annotation.bbox
        return mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)[0]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _decoded(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


# ------------------------------------------------------------------------------------------ boxes and masks
@dataclass
class _ImageEvidence:
    """What the predictions say about one image's annotations, before calibration."""

    image_id: int
    annotations: list  # scored (non-crowd) annotations
    labels: np.ndarray  # (A,) contiguous 0..K-1
    support: np.ndarray  # (A, K) best score per class at match_iou
    support_at: np.ndarray  # (A, K) row of that prediction, -1 if none
    near: np.ndarray  # (A, K) best score per class at near_iou
    located: np.ndarray  # (A,) row of the best same-class prediction from near_iou on, -1 if none
    located_iou: np.ndarray  # (A,)
    located_score: np.ndarray  # (A,)
    boxes: np.ndarray  # (P, 4) predictions, xywh
    classes: np.ndarray  # (P,) contiguous
    scores: np.ndarray  # (P,)
    lonely: np.ndarray  # (P,) bool: overlaps no annotation by missing_iou
    pairwise: np.ndarray  # (P, P) prediction overlaps, for the NMS of missing objects
    overlap: np.ndarray  # (A, P) overlaps of the scored annotations with the predictions


def _evidence(index: DatasetIndex, image_id: int, predictions: list[dict], config, use_masks: bool) -> _ImageEvidence:
    classes = index.num_classes
    label_of = {category.id: position for position, category in enumerate(index.categories)}
    all_annotations = [a for a in index.annotations_by_image.get(image_id, []) if a.category_id in label_of]
    scored = [a for a in all_annotations if not a.iscrowd]
    predictions = [p for p in predictions if p["category_id"] in label_of]
    boxes = np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)
    pred_classes = np.array([label_of[p["category_id"]] for p in predictions], dtype=np.int64)
    scores = np.array([p["score"] for p in predictions], dtype=np.float64)
    if use_masks:
        image = index.image_by_id[image_id]
        truth = [annotation_rle(a, image.height, image.width) for a in all_annotations]
        masks = [_decoded(p["segmentation"]) for p in predictions]
        overlap_all = mask_iou(truth, masks)
        pairwise = mask_iou(masks, masks)
    else:
        overlap_all = box_iou([a.bbox for a in all_annotations], boxes)
        pairwise = box_iou(boxes, boxes)
    keep_rows = [row for row, a in enumerate(all_annotations) if not a.iscrowd]
    overlap = overlap_all[keep_rows] if len(keep_rows) else np.zeros((0, len(predictions)))
    labels = np.array([label_of[a.category_id] for a in scored], dtype=np.int64)
    support = np.zeros((len(scored), classes))
    support_at = np.full((len(scored), classes), -1, dtype=np.int64)
    near = np.zeros((len(scored), classes))
    for klass in range(classes):
        of_class = pred_classes == klass
        if not of_class.any():
            continue
        at_match = np.where((overlap >= config.match_iou) & of_class[None, :], scores[None, :], -1.0)
        best = at_match.argmax(axis=1) if len(scored) else np.zeros(0, np.int64)
        found = at_match[np.arange(len(scored)), best] >= 0
        support[found, klass] = scores[best[found]]
        support_at[found, klass] = best[found]
        near[:, klass] = np.where((overlap >= config.near_iou) & of_class[None, :], scores[None, :], 0.0).max(
            axis=1, initial=0.0)
    located = np.full(len(scored), -1, dtype=np.int64)
    located_iou = np.zeros(len(scored))
    located_score = np.zeros(len(scored))
    for row in range(len(scored)):
        same = np.flatnonzero((pred_classes == labels[row]) & (overlap[row] >= config.near_iou))
        if len(same):
            # the prediction that is most surely this object: score times overlap, so a confident
            # neighbour that only touches the box does not stand in for it
            best_row = same[np.argmax(scores[same] * overlap[row, same])]
            located[row], located_iou[row], located_score[row] = best_row, overlap[row, best_row], scores[best_row]
    lonely = (overlap_all.max(axis=0) < config.missing_iou) if len(all_annotations) else np.ones(len(predictions), bool)
    return _ImageEvidence(image_id, scored, labels, support, support_at, near, located, located_iou, located_score,
                          boxes, pred_classes, scores, lonely, pairwise, overlap)


def calibrate(evidence: list[_ImageEvidence], num_classes: int,
              floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class thresholds ``t_c`` (mean self-confidence over the class's annotations, at least ``floor``), the
    same before the floor, the typical overlap ``l_c`` of confidently found annotations, and the share of
    annotations found confidently."""
    sums, counts = np.zeros(num_classes), np.zeros(num_classes)
    for item in evidence:
        for label, row in zip(item.labels, item.support):
            sums[label] += row[label]
            counts[label] += 1
    raw = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    thresholds = np.maximum(raw, floor)
    overlaps: list[list[float]] = [[] for _ in range(num_classes)]
    for item in evidence:
        for label, iou, score in zip(item.labels, item.located_iou, item.located_score):
            if score >= thresholds[label]:
                overlaps[label].append(iou)
    typical = np.array([float(np.median(values)) if values else 0.75 for values in overlaps])
    found = np.array([len(values) / counts[c] if counts[c] else 0.0 for c, values in enumerate(overlaps)])
    return thresholds, raw, typical, found


def _box(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def score_annotations(index: DatasetIndex, predictions: list[dict[str, Any]], config, *,
                      use_masks: bool = False) -> tuple[list[Record], Calibration]:
    """Records for every annotation and every missed object, sorted by score (highest first).

    Args:
        index: the dataset as given (category ids, boxes, polygons).
        predictions: COCO results in the original images' pixels: ``image_id``, ``category_id``, ``bbox``
            ``[x, y, w, h]``, ``score`` (and ``segmentation`` RLE with ``use_masks``).
        config: the spec's ``audit`` section (``AuditConfig``).
        use_masks: match by mask IoU (instance segmentation) instead of box IoU.

    Returns:
        ``(records, calibration)``: one record per scored (non-crowd) annotation, whatever its score, plus one per
        missing-object candidate; and the per-class thresholds used.
    """
    by_image: dict[int, list[dict]] = {image.id: [] for image in index.images}
    for prediction in predictions:
        if prediction["score"] >= config.min_score and prediction["image_id"] in by_image:
            by_image[prediction["image_id"]].append(prediction)
    evidence = [_evidence(index, image.id, by_image[image.id], config, use_masks) for image in index.images]
    classes = index.num_classes
    thresholds, raw, typical, found = calibrate(evidence, classes, config.min_threshold)
    category_ids = [category.id for category in index.categories]
    records: list[Record] = []
    for item in evidence:
        records.extend(_annotation_records(item, thresholds, typical, category_ids, config))
        records.extend(_missing_records(item, thresholds, category_ids, config))
    records.sort(key=lambda record: -record.score)
    calibration = Calibration(thresholds=dict(zip(category_ids, thresholds.tolist())),
                              raw_thresholds=dict(zip(category_ids, raw.tolist())),
                              typical_iou=dict(zip(category_ids, typical.tolist())),
                              supported=dict(zip(category_ids, found.tolist())))
    return records, calibration


def _annotation_records(item: _ImageEvidence, thresholds: np.ndarray, typical: np.ndarray, category_ids: list[int],
                        config) -> list[Record]:
    records = []
    calibrated = np.minimum(item.support / thresholds, 1.0)  # r_c at match_iou
    calibrated_near = np.minimum(item.near / thresholds, 1.0)
    for row, annotation in enumerate(item.annotations):
        label = item.labels[row]
        others = calibrated[row].copy()
        others[label] = -1.0
        other = int(np.argmax(others))
        raw_swap = item.support[row, other] * (1.0 - item.support[row, label]) if others[other] >= 0 else 0.0
        swapped = float(_tie_broken(max(others[other], 0.0) * (1.0 - calibrated[row, label]), raw_swap))
        spurious = float(_tie_broken(1.0 - calibrated_near[row].max(), 1.0 - item.near[row].max()))
        located = item.located[row]
        if located >= 0:
            confidence = min(item.located_score[row] / thresholds[label], 1.0)
            span = max(typical[label] - config.match_iou, 1e-6)
            shortfall = float(np.clip((typical[label] - item.located_iou[row]) / span, 0.0, 1.0))
            # ... unless the model also fits the given box as well as it usually fits the class: then the given box
            # is found where it is, and the partial overlap is another, looser detection (a box around two animals)
            fits = (item.classes == label) & (item.overlap[row] >= typical[label])
            raw_fit = float(item.scores[fits].max(initial=0.0))
            fit = min(raw_fit / thresholds[label], 1.0)
            badly = float(_tie_broken(confidence * shortfall * (1.0 - fit),
                                      item.located_score[row] * shortfall * (1.0 - raw_fit)))
        else:
            badly = 0.0
        kind_scores = {"swapped": swapped, "badly_located": badly, "spurious": spurious}
        kind = max(kind_scores, key=kind_scores.get)
        given = {"category_id": annotation.category_id, "bbox": _box(annotation.bbox)}
        if kind == "swapped":
            column = item.support_at[row, other]
            suggested = {"action": "relabel", "category_id": category_ids[other],
                         "bbox": _box(item.boxes[column]) if column >= 0 else given["bbox"],
                         "confidence": round(float(item.support[row, other]), 5)}
        elif kind == "badly_located":
            suggested = {"action": "move", "category_id": annotation.category_id, "bbox": _box(item.boxes[located]),
                         "confidence": round(float(item.located_score[row]), 5),
                         "iou": round(float(item.located_iou[row]), 4)}
        else:
            suggested = {"action": "delete", "category_id": None, "bbox": None,
                         "confidence": round(float(item.near[row].max()), 5)}
        records.append(Record(kind, max(kind_scores.values()), item.image_id, annotation.id, given, suggested,
                              kind_scores))
    return records


def _tie_broken(calibrated, raw):
    """A calibrated score with ``TIE_BREAK`` of the same expression on raw scores mixed in (arrays or floats)."""
    return (1.0 - TIE_BREAK) * calibrated + TIE_BREAK * raw


def _missing_records(item: _ImageEvidence, thresholds: np.ndarray, category_ids: list[int], config) -> list[Record]:
    candidates = np.flatnonzero(item.lonely)
    if not len(candidates):
        return []
    calibrated = np.minimum(item.scores / thresholds[item.classes], 1.0)
    order = candidates[np.argsort(-calibrated[candidates], kind="stable")]
    kept: list[int] = []
    for column in order:  # one record per object: class-agnostic NMS over the candidates
        if all(item.pairwise[column, other] < config.match_iou for other in kept):
            kept.append(int(column))
    score = _tie_broken(calibrated, item.scores)
    return [Record("missing", float(score[c]), item.image_id, None, None,
                   {"action": "add", "category_id": category_ids[item.classes[c]], "bbox": _box(item.boxes[c]),
                    "confidence": round(float(item.scores[c]), 5)}, {"missing": float(score[c])})
            for c in kept]


# --------------------------------------------------------------------------------------- semantic regions
@dataclass
class RegionStatistics:
    """One image's connected regions of the given mask and what the model predicts inside them."""

    image_id: int
    regions: list[dict[str, Any]]  # label, pixels, bbox, histogram (K, HISTOGRAM_BINS) of argmax class x confidence
    class_sums: np.ndarray  # (K,) sum of p_c over the pixels labelled c
    class_counts: np.ndarray  # (K,) pixels labelled c


def region_statistics(image_id: int, mask: np.ndarray, probabilities: np.ndarray, num_classes: int,
                      min_pixels: int) -> RegionStatistics:
    """Summarise one image for ``score_regions``; the probability map is not kept.

    Args:
        mask: ``(H, W)`` given class indices; values outside ``0..K-1`` (ignore_index) are skipped.
        probabilities: ``(K, H, W)`` softmax of the model at the mask's size.
        min_pixels: connected regions smaller than this are not scored (they still count for the thresholds).
    """
    import cv2

    predicted = probabilities.argmax(0)
    confidence = probabilities.max(0)
    bins = np.minimum((confidence * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    class_sums = np.zeros(num_classes)
    class_counts = np.zeros(num_classes)
    regions = []
    for label in np.unique(mask):
        if label >= num_classes:
            continue
        inside = mask == label
        class_sums[label] = float(probabilities[label][inside].sum())
        class_counts[label] = float(inside.sum())
        count, components, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=8)
        for component in range(1, count):
            pixels = int(stats[component, cv2.CC_STAT_AREA])
            if pixels < min_pixels:
                continue
            where = components == component
            histogram = np.bincount(predicted[where] * HISTOGRAM_BINS + bins[where],
                                    minlength=num_classes * HISTOGRAM_BINS).reshape(num_classes, HISTOGRAM_BINS)
            x, y, w, h = (int(stats[component, key]) for key in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                                  cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
            regions.append({"label": int(label), "pixels": pixels, "bbox": [x, y, w, h], "histogram": histogram,
                            "self_confidence": float(probabilities[label][where].mean())})
    return RegionStatistics(image_id, regions, class_sums, class_counts)


def score_regions(statistics: list[RegionStatistics], category_ids: list[int],
                  config) -> tuple[list[Record], Calibration]:
    """Records for every scored region, sorted by score: how much of it the model confidently gives another class."""
    classes = len(category_ids)
    sums = np.sum([s.class_sums for s in statistics], axis=0) if statistics else np.zeros(classes)
    counts = np.sum([s.class_counts for s in statistics], axis=0) if statistics else np.zeros(classes)
    raw = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    thresholds = np.maximum(raw, config.min_threshold)
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    weight = np.minimum(centres[None, :] / thresholds[:, None], 1.0)  # r_c of a pixel, by confidence bin
    records = []
    for item in statistics:
        for region in item.regions:
            label, histogram = region["label"], region["histogram"]
            evidence = (histogram * weight).sum(axis=1)
            evidence[label] = 0.0
            other = int(np.argmax(evidence))
            score = float(min(evidence.sum() / region["pixels"], 1.0))
            records.append(Record(
                "swapped", score, item.image_id, None,
                {"category_id": category_ids[label], "bbox": region["bbox"], "pixels": region["pixels"]},
                {"action": "relabel", "category_id": category_ids[other], "bbox": region["bbox"],
                 "confidence": round(float(evidence[other] / region["pixels"]), 5)},
                {"swapped": score, "self_confidence": region["self_confidence"]}))
    records.sort(key=lambda record: -record.score)
    return records, Calibration(thresholds=dict(zip(category_ids, thresholds.tolist())),
                                raw_thresholds=dict(zip(category_ids, raw.tolist())))


def image_scores(records: list[Record], image_ids: Iterable[int]) -> dict[int, float]:
    """Per image, the highest score of its records (0 for an image nothing is suspected in)."""
    scores = {image_id: 0.0 for image_id in image_ids}
    for record in records:
        scores[record.image_id] = max(scores.get(record.image_id, 0.0), record.score)
    return scores
