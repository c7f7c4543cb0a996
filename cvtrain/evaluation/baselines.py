"""The no-model detection baseline: where objects usually are, scored by the same COCO evaluation.

"Compare with the simplest baseline first": a detector must beat predicting, for every image and without
looking at it, the training set's typical boxes. Per class, the training boxes (centre, width and height
as fractions of their image) are clustered by k-means into ``priors_per_class`` prior boxes; each prior is
placed on every validation image, scaled to the image, with the score ``P(class) * P(prior | class)`` from
the training frequencies, and the 100 best per image are scored by pycocotools like any model's results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.evaluation.coco import coco_evaluate

PRIORS_PER_CLASS = 10
MAX_DETECTIONS = 100  # per image, as pycocotools scores


@dataclass
class BoxPriors:
    """Prior boxes ``(category_id, cx, cy, w, h, score)``, coordinates as fractions of the image."""

    rows: np.ndarray  # (N, 6)

    def results(self, images: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
        """COCO results on ``(image_id, width, height)``: every prior, best ``MAX_DETECTIONS`` per image."""
        order = np.argsort(-self.rows[:, 5], kind="stable")[:MAX_DETECTIONS]
        chosen = self.rows[order]
        results = []
        for image_id, width, height in images:
            for category_id, cx, cy, w, h, score in chosen:
                results.append({"image_id": int(image_id), "category_id": int(category_id),
                                "bbox": [float((cx - w / 2) * width), float((cy - h / 2) * height),
                                         float(w * width), float(h * height)], "score": float(score)})
        return results


def image_size(index: DatasetIndex, record: ImageRecord) -> tuple[int, int] | None:
    """``(width, height)`` from the index, or from the image file's header when the format has none."""
    if record.width and record.height:
        return int(record.width), int(record.height)
    try:
        with Image.open(index.image_path(record)) as image:
            return image.size
    except (OSError, ValueError):
        return None


def kmeans(points: np.ndarray, clusters: int, *, seed: int = 0, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: ``(centres, members per centre)``."""
    rng = np.random.default_rng(seed)
    clusters = min(clusters, len(points))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, clusters):
        distance = np.min(((points[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        if distance.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=distance / distance.sum())])
    centres = np.array(centres)
    for _ in range(iterations):
        nearest = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        moved = np.array([points[nearest == c].mean(0) if np.any(nearest == c) else centres[c]
                          for c in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    nearest = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    return centres, np.bincount(nearest, minlength=len(centres))


def box_priors(train: DatasetIndex, priors_per_class: int = PRIORS_PER_CLASS, seed: int = 0,
               max_boxes: int = 20000) -> BoxPriors | None:
    """Prior boxes from the training split's annotations (crowd regions left out); None without boxes."""
    sizes = {record.id: image_size(train, record) for record in train.images}
    per_class: dict[int, list[tuple[float, float, float, float]]] = {}
    for annotation in train.annotations:
        size = sizes.get(annotation.image_id)
        x, y, w, h = annotation.bbox
        if annotation.iscrowd or size is None or w <= 0 or h <= 0:
            continue
        width, height = size
        per_class.setdefault(annotation.category_id, []).append(
            ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height))
    total = sum(len(boxes) for boxes in per_class.values())
    if not total:
        return None
    rng = np.random.default_rng(seed)
    rows = []
    for category_id, boxes in per_class.items():
        points = np.array(boxes, dtype=np.float64)
        if len(points) > max_boxes:
            points = points[rng.choice(len(points), max_boxes, replace=False)]
        centres, members = kmeans(points, priors_per_class, seed=seed)
        share = len(boxes) / total
        for centre, count in zip(centres, members):
            if count:
                rows.append([category_id, *centre, share * count / members.sum()])
    return BoxPriors(np.array(rows, dtype=np.float64))


def detection_baseline(train: DatasetIndex, val: DatasetIndex, priors_per_class: int = PRIORS_PER_CLASS,
                       seed: int = 0) -> dict[str, Any] | None:
    """COCO stats of the prior boxes of ``train`` on ``val``'s ground truth.

    Returns:
        ``{"mAP": ..., "AP50": ..., "priors": N, "method": ...}``, or None when either split has no
        images or the training split has no boxes.
    """
    if not train.images or not val.images:
        return None
    priors = box_priors(train, priors_per_class, seed)
    if priors is None:
        return None
    images = [(record.id, *size) for record in val.images if (size := image_size(val, record)) is not None]
    scored = coco_evaluate(val.to_coco(), priors.results(images))["stats"]
    return {"mAP": scored["AP"], "AP50": scored["AP50"], "priors": int(len(priors.rows)),
            "method": f"{priors_per_class} k-means prior boxes per class from the training split, scored by "
                      "class and prior frequency, placed on every image (no model)"}
