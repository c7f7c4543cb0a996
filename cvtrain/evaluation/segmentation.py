"""Semantic segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy.

Pixels whose true label is not a class (``ignore_index``, padding) are left out
of everything. A class that is neither in the ground truth nor predicted has no
IoU: it is reported as ``None`` ("absent") and left out of the mean, rather than
counted as 0 or 1. A class that is predicted but absent from the ground truth
has IoU 0 (every such pixel is a false positive) and counts in the mean.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch


def confusion_matrix(truth: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 pixel counts, rows true class, columns predicted; truths outside ``0..K-1`` are skipped."""
    valid = (truth >= 0) & (truth < num_classes)
    cells = truth[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def to_sparse(confusion: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero cells of a confusion matrix (flat positions, counts): an image touches few classes."""
    flat = confusion.reshape(-1).cpu().numpy()
    cells = np.flatnonzero(flat)
    return cells.astype(np.int64), flat[cells].astype(np.int64)


def sum_sparse(parts: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """Add up confusion matrices kept as sparse ``(indices, counts)`` pairs into one dense matrix."""
    total = np.zeros(num_classes * num_classes, dtype=np.int64)
    for cells, counts in parts:
        np.add.at(total, cells, counts)
    return total.reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of a confusion matrix (rows true, columns predicted).

    Returns:
        ``{"scalars": {mIoU, pixel_accuracy, mean_accuracy}, "per_class": {"IoU": {name: float | None},
        "accuracy": {name: float | None}}, "confusion_matrix": [[...]], "num_pixels": int}``. Per-class
        accuracy (recall) is ``None`` for a class absent from the ground truth. With no scored pixel at
        all every mean is 0.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    hits = np.diag(confusion).astype(np.float64)
    truth = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = truth + predicted - hits
    iou = {name: (float(hits[c] / union[c]) if union[c] > 0 else None) for c, name in enumerate(class_names)}
    recall = {name: (float(hits[c] / truth[c]) if truth[c] > 0 else None) for c, name in enumerate(class_names)}
    total = int(truth.sum())
    return {
        "scalars": {
            "mIoU": _mean(iou.values()),
            "pixel_accuracy": float(hits.sum() / total) if total else 0.0,
            "mean_accuracy": _mean(recall.values()),
        },
        "per_class": {"IoU": iou, "accuracy": recall},
        "confusion_matrix": confusion.tolist(),
        "num_pixels": total,
    }


def majority_confusion(confusion: np.ndarray, majority_class: int) -> np.ndarray:
    """The confusion matrix of predicting ``majority_class`` for every pixel of the same ground truth."""
    confusion = np.asarray(confusion)
    baseline = np.zeros_like(confusion)
    baseline[:, majority_class] = confusion.sum(axis=1)
    return baseline


def _mean(values: Iterable[float | None]) -> float:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else 0.0
