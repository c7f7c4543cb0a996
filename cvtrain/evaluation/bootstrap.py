"""Bootstrap confidence intervals over images for COCO AP and mIoU, vectorised over the resamples.

A resample draws the validation images with replacement; it is written as a row of counts (how many
times each image is drawn, ``resample_counts``). Every statistic here takes a matrix of such rows and
returns one value per row, so 1,000 resamples cost one pass of array arithmetic, and the same code scores
slices (rows of 0/1) and the full set (a row of ones, equal to pycocotools' own number).

AP, exactly as pycocotools accumulates it. ``COCOeval.evaluate()`` runs once; its per-image matches
(``evalImgs``) do not depend on which other images are in the set, so a resample only changes how often
each image's detections and ground truths count. For one category and IoU threshold, pycocotools sorts all
detections by score, builds the precision/recall curve at every detection, makes precision monotone from the
right and reads it at 101 recall thresholds. Only the curve's points at true positives decide those readings
(a false positive keeps the recall and lowers the precision of the point before it, so it can never be the
first point at a recall nor the maximum to the right), and a point's counts are sums of image counts over
the detections ranked up to it. Those sums are one sparse product per category (detections between two
true positives, grouped by image, times the counts) and a cumulative sum; reading the curve at the recall
thresholds is a histogram per row. A detection drawn ``n`` times counts as ``n`` copies next to each other;
ties between different detections keep pycocotools' order (score, then image, then rank in the image).

mIoU: the per-image confusion matrices, weighted by the counts and summed (one sparse product), then the
rules of ``cvtrain.evaluation.segmentation`` (a class neither true nor predicted has no IoU).
"""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import sparse

from cvtrain.evaluation.coco import coco_from_dict

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(num_images: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, num_images)`` counts: row ``b`` says how often each image is drawn in resample ``b``.

    Seeded: the same ``(num_images, resamples, seed)`` give the same rows, so two models scored on the
    same images with the same seed are compared on the same resamples (a paired bootstrap).
    """
    if num_images <= 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=resamples)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The central ``level`` interval of the finite values (the percentile bootstrap); None without any."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass
class _Threshold:
    positions: np.ndarray  # ranks (in score order) of the true positives
    images: np.ndarray  # image position of each true positive
    in_union: np.ndarray  # index of each true positive's rank in its group's union of ranks


@dataclass
class _IgnoreGroup:
    """IoU thresholds that ignore the same detections share one cumulative count of the others."""

    thresholds: list[int]
    union: np.ndarray  # sorted ranks of the true positives of any threshold of the group
    segments: Any  # sparse (len(union), num_images): detections up to each union rank, by image


@dataclass
class _Category:
    ground_truths: np.ndarray  # (num_images,) ground truths not ignored, per image
    thresholds: list[_Threshold] = field(default_factory=list)
    groups: list[_IgnoreGroup] = field(default_factory=list)


class DetectionBootstrap:
    """COCO AP (``AP``, ``AP50``, ``AP75``) of any weighting of the images, from one ``COCOeval.evaluate()``.

    Args:
        ground_truth: a COCO dict (``DatasetIndex.to_coco()``) or a ``COCO`` object.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` or ``segmentation``, ``score``).
        iou_type: ``"bbox"`` or ``"segm"``.

    ``image_ids`` orders the columns of the weight matrices (pycocotools' order: sorted ids).
    """

    def __init__(self, ground_truth: dict[str, Any] | COCO, results: Sequence[dict[str, Any]],
                 iou_type: str = "bbox"):
        gt = ground_truth if isinstance(ground_truth, COCO) else coco_from_dict(ground_truth)
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in results]) if results else coco_from_dict(
                {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []})
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.evaluate()
        params = evaluator.params
        self.image_ids: list[int] = list(params.imgIds)
        self.iou_thresholds = np.asarray(params.iouThrs)
        self.recall_thresholds = np.asarray(params.recThrs)
        self.categories = [self._category(evaluator, k) for k in range(len(params.catIds))]

    def _category(self, evaluator: COCOeval, k: int) -> _Category:
        params = evaluator.params
        num_images, num_areas = len(params.imgIds), len(params.areaRng)
        max_det = params.maxDets[-1]
        thresholds = len(params.iouThrs)
        ground_truths = np.zeros(num_images, dtype=np.int64)
        scores, images, matched, ignored = [], [], [], []
        for i in range(num_images):
            entry = evaluator.evalImgs[k * num_areas * num_images + i]  # area range 0: 'all'
            if entry is None:
                continue
            ground_truths[i] = int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
            count = len(entry["dtScores"][:max_det])
            scores.append(np.asarray(entry["dtScores"][:max_det], dtype=np.float64))
            images.append(np.full(count, i, dtype=np.int64))
            matched.append(np.asarray(entry["dtMatches"])[:, :max_det].reshape(thresholds, count))
            ignored.append(np.asarray(entry["dtIgnore"])[:, :max_det].reshape(thresholds, count))
        category = _Category(ground_truths=ground_truths)
        if not scores:
            return category
        scores = np.concatenate(scores)
        order = np.argsort(-scores, kind="mergesort")  # pycocotools' order
        images = np.concatenate(images)[order]
        matched = np.concatenate(matched, axis=1)[:, order] != 0
        ignored = np.concatenate(ignored, axis=1)[:, order].astype(bool)
        true_positive = matched & ~ignored
        positions = [np.flatnonzero(true_positive[t]) for t in range(thresholds)]
        patterns: dict[bytes, list[int]] = {}
        for t in range(thresholds):
            patterns.setdefault(np.packbits(ignored[t]).tobytes(), []).append(t)
        in_union = [np.zeros(0, dtype=np.int64)] * thresholds
        for members in patterns.values():
            union = np.unique(np.concatenate([positions[t] for t in members]))
            counted = np.flatnonzero(~ignored[members[0]])
            counted = counted[counted <= (union[-1] if union.size else -1)]
            segment = np.searchsorted(union, counted, side="left")
            segments = sparse.csr_matrix((np.ones(len(counted)), (segment, images[counted])),
                                         shape=(len(union), num_images))
            category.groups.append(_IgnoreGroup(thresholds=members, union=union, segments=segments))
            for t in members:
                in_union[t] = np.searchsorted(union, positions[t])
        category.thresholds = [_Threshold(positions=positions[t], images=images[positions[t]], in_union=in_union[t])
                               for t in range(thresholds)]
        return category

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def weights_for(self, image_ids: Iterable[int]) -> np.ndarray:
        """A 0/1 row selecting ``image_ids`` (a slice), in ``self.image_ids`` order."""
        chosen = set(image_ids)
        return np.array([[1.0 if i in chosen else 0.0 for i in self.image_ids]])

    def statistics(self, weights: np.ndarray, chunk: int = 128) -> dict[str, np.ndarray]:
        """AP, AP50 and AP75 (area all, 100 detections) for each row of ``weights`` ``(rows, num_images)``;
        -1 where no category has ground truth, as pycocotools."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        chunks = [weights[start:start + chunk] for start in range(0, len(weights), chunk)]
        # NumPy releases the GIL in its loops: chunks of rows run in parallel threads
        with ThreadPoolExecutor(max_workers=max(1, min(len(chunks), os.cpu_count() or 1))) as pool:
            parts = list(pool.map(self._statistics, chunks))
        return {name: np.concatenate([part[name] for part in parts]) for name in ("AP", "AP50", "AP75")}

    def _statistics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(weights)
        columns = np.ascontiguousarray(weights.T)  # (num_images, rows): points along axis 0 below
        t50 = int(np.argmin(np.abs(self.iou_thresholds - 0.5)))
        t75 = int(np.argmin(np.abs(self.iou_thresholds - 0.75)))
        sums = {"AP": np.zeros(rows), "AP50": np.zeros(rows), "AP75": np.zeros(rows)}
        valid_counts = np.zeros(rows)
        for category in self.categories:
            ground_truths = weights @ category.ground_truths
            valid = ground_truths > 0
            if not valid.any():
                continue
            per_threshold = np.zeros((rows, len(self.iou_thresholds)))
            for group in category.groups:
                if group.union.size == 0:
                    continue
                counted = np.cumsum(np.asarray(group.segments @ columns), axis=0)  # (len(union), rows)
                for t in group.thresholds:
                    per_threshold[:, t] = self._mean_precision(category.thresholds[t], counted, columns,
                                                               ground_truths)
            valid_counts += valid
            sums["AP"] += np.where(valid, per_threshold.mean(axis=1), 0.0)
            sums["AP50"] += np.where(valid, per_threshold[:, t50], 0.0)
            sums["AP75"] += np.where(valid, per_threshold[:, t75], 0.0)
        return {name: np.where(valid_counts > 0, total / np.maximum(valid_counts, 1), -1.0)
                for name, total in sums.items()}

    def _mean_precision(self, threshold: _Threshold, counted: np.ndarray, columns: np.ndarray,
                        ground_truths: np.ndarray) -> np.ndarray:
        """Mean interpolated precision over the recall thresholds, per row, for one category and IoU.

        Arrays are ``(points, rows)``: the curve's points at true positives, one column per resample.
        """
        points, rows = len(threshold.positions), columns.shape[1]
        recalls = self.recall_thresholds
        if points == 0:
            return np.zeros(rows)
        true_positives = np.cumsum(columns[threshold.images], axis=0)
        detections = counted[threshold.in_union]  # true + false positives up to each point
        recall = true_positives / np.maximum(ground_truths, 1)  # rows without ground truth are dropped later
        precision = true_positives / (detections + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        reached = _thresholds_reached(recall, recalls)  # how many recall thresholds each point reaches
        # the first point reaching threshold m is the number of points that reach m or fewer thresholds
        bins = len(recalls) + 1
        histogram = np.bincount((reached + np.arange(rows) * bins).ravel(), minlength=rows * bins)
        first = np.cumsum(histogram.reshape(rows, bins), axis=1)[:, :len(recalls)].T  # (thresholds, rows)
        readings = np.take_along_axis(precision, np.minimum(first, points - 1), axis=0)
        return np.where(first < points, readings, 0.0).mean(axis=0)


def _thresholds_reached(recall: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``np.searchsorted(thresholds, recall, side='right')`` for pycocotools' 101 evenly spaced recall
    thresholds: a guess from ``floor(recall * 100)``, corrected by the same float comparisons."""
    steps = len(thresholds) - 1
    padded = np.concatenate([[-np.inf], thresholds, [np.inf]])
    guess = np.clip(np.floor(recall * steps).astype(np.int64) + 1, 0, len(thresholds))
    guess += padded[guess + 1] <= recall
    guess -= padded[guess] > recall
    return guess


class SegmentationBootstrap:
    """mIoU of any weighting of the images, from per-image confusion matrices.

    Args:
        confusions: per image, the sparse confusion ``(cells, counts)`` of ``to_sparse`` (flat positions
            in a ``K x K`` matrix, rows true, columns predicted).
        num_classes: ``K``.
    """

    def __init__(self, confusions: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int):
        self.num_classes = num_classes
        rows = np.concatenate([np.full(len(cells), i) for i, (cells, _) in enumerate(confusions)] or [np.zeros(0)])
        cells = np.concatenate([np.asarray(c) for c, _ in confusions] or [np.zeros(0)])
        counts = np.concatenate([np.asarray(n) for _, n in confusions] or [np.zeros(0)])
        self.matrix = sparse.csr_matrix((counts.astype(np.float64), (rows.astype(np.int64), cells.astype(np.int64))),
                                        shape=(len(confusions), num_classes * num_classes))

    @property
    def num_images(self) -> int:
        return self.matrix.shape[0]

    def statistics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """``mIoU`` and ``pixel_accuracy`` per row of ``weights``."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        k = self.num_classes
        confusion = np.asarray(self.matrix.T @ weights.T).T.reshape(len(weights), k, k)
        hits = np.diagonal(confusion, axis1=1, axis2=2)
        truth, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
        union = truth + predicted - hits
        present = union > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(present, hits / np.where(present, union, 1), 0.0)
            miou = np.where(present.any(axis=1), iou.sum(axis=1) / np.maximum(present.sum(axis=1), 1), 0.0)
            total = truth.sum(axis=1)
            accuracy = np.where(total > 0, hits.sum(axis=1) / np.where(total > 0, total, 1), 0.0)
        return {"mIoU": miou, "pixel_accuracy": accuracy}


def intervals(statistic: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, list[float] | None]:
    """``{"<name>_ci95": [low, high]}`` for each statistic (rows of -1, pycocotools' "no score", dropped)."""
    suffix = f"_ci{int(round(level * 100))}"
    out: dict[str, list[float] | None] = {}
    for name, values in statistic.items():
        values = np.asarray(values, dtype=np.float64)
        interval = percentile_interval(np.where(values < 0, np.nan, values), level)
        out[name + suffix] = list(interval) if interval is not None else None
    return out


def paired_difference(first: np.ndarray, second: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """The bootstrap distribution of ``second - first`` over the same resamples.

    Returns:
        ``{"interval": [low, high] | None, "share_second_better": float, "resamples": int}``; resamples
        where either statistic is undefined (-1) are left out.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    keep = (first >= 0) & (second >= 0)
    difference = second[keep] - first[keep]
    interval = percentile_interval(difference, level)
    return {"interval": list(interval) if interval is not None else None,
            "share_second_better": float(np.mean(difference > 0)) if difference.size else float("nan"),
            "resamples": int(difference.size)}
