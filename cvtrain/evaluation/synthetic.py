"""A seeded COCO-like ground truth with detector-like results, for evaluation parity tests and benchmarks.

``make_evaluation_set(images=5000, detections_per_image=100)`` is COCO val2017 in shape: about 7 objects per
image in 80 categories with COCO's sparse ids, sizes spread over the small/medium/large ranges, 1 % crowd
regions, and 100 detections per image (``results_per_image``) as a detector gives them: most near a ground
truth box (jittered, sometimes with the wrong class), the rest anywhere, scores rounded to 5 decimals (as
``cvtrain`` writes them, so ties occur), boxes to 2 decimals. With ``masks`` every object also has a polygon
(an octagon inside its box) and every detection an RLE mask, for ``segm`` evaluation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

COCO_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))  # 80 ids


def _octagon(x: float, y: float, w: float, h: float) -> list[float]:
    a, b, x1, y1 = w / 4, h / 4, x + w, y + h
    return [x + a, y, x1 - a, y, x1, y + b, x1, y1 - b, x1 - a, y1, x + a, y1, x, y1 - b, x, y + b]


def make_evaluation_set(images: int = 5000, detections_per_image: int = 100, *, seed: int = 0,
                        masks: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(ground_truth, results)``: a COCO dict and its results list (see the module docstring).

    Args:
        images: number of images.
        detections_per_image: detections per image (100, COCO's ``maxDets``).
        seed: the generator's seed; the same arguments always give the same set.
        masks: give objects polygons and detections RLE masks (for ``iou_type="segm"``).
    """
    rng = np.random.default_rng(seed)
    width = rng.choice([640, 500, 480, 427, 612], images)
    height = rng.choice([480, 375, 640, 427, 612], images)
    per_image = rng.poisson(7.0, images)
    owner = np.repeat(np.arange(images), per_image)
    n = len(owner)
    side = np.exp(rng.normal(3.6, 1.0, n)).clip(4, None)  # median about 37 px: small, medium and large objects
    aspect = np.exp(rng.normal(0.0, 0.4, n))
    w = np.minimum(side * aspect, width[owner] - 1)
    h = np.minimum(side / aspect, height[owner] - 1)
    x = rng.random(n) * (width[owner] - w)
    y = rng.random(n) * (height[owner] - h)
    category = rng.choice(COCO_IDS, n)
    crowd = rng.random(n) < 0.01
    annotations = []
    for i in range(n):
        box = [round(float(x[i]), 2), round(float(y[i]), 2), round(float(w[i]), 2), round(float(h[i]), 2)]
        record = {"id": i + 1, "image_id": int(owner[i]) + 1, "category_id": int(category[i]), "bbox": box,
                  "area": round(box[2] * box[3] * (0.875 if masks else 1.0), 4), "iscrowd": int(crowd[i])}
        if masks:
            record["segmentation"] = [_octagon(*box)]
        annotations.append(record)
    ground_truth = {
        "images": [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(width[i]), "height": int(height[i])}
                   for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_IDS],
    }

    # detections: per image, up to 70 % near its objects (cycled), the rest anywhere in the image
    total = images * detections_per_image
    image = np.repeat(np.arange(images), detections_per_image)
    slot = np.tile(np.arange(detections_per_image), images)
    first = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    has_objects = per_image[image] > 0
    near = has_objects & (slot < 0.7 * detections_per_image)
    source = np.where(has_objects, first[image] + slot % np.maximum(per_image[image], 1), 0)
    jitter = rng.normal(0.0, 0.08 + 0.25 * rng.random(total)[:, None], (total, 4))
    dw = np.where(near, w[source] * np.exp(jitter[:, 2]), np.exp(rng.normal(3.6, 1.0, total)))
    dh = np.where(near, h[source] * np.exp(jitter[:, 3]), np.exp(rng.normal(3.6, 1.0, total)))
    dw, dh = np.minimum(dw, width[image] - 1), np.minimum(dh, height[image] - 1)
    dx = np.where(near, x[source] + jitter[:, 0] * w[source], rng.random(total) * (width[image] - dw))
    dy = np.where(near, y[source] + jitter[:, 1] * h[source], rng.random(total) * (height[image] - dh))
    dx, dy = np.clip(dx, 0, width[image] - dw), np.clip(dy, 0, height[image] - dh)
    wrong = rng.random(total) < 0.1
    label = np.where(near & ~wrong, category[source], rng.choice(COCO_IDS, total))
    score = np.clip(np.where(near, 0.55, 0.25) + rng.normal(0.0, 0.2, total), 0.001, 1.0)
    results = []
    encode = None
    if masks:
        from pycocotools import mask as mask_utils

        encode = mask_utils
    for k in range(total):
        box = [round(float(dx[k]), 2), round(float(dy[k]), 2), round(float(dw[k]), 2), round(float(dh[k]), 2)]
        record = {"image_id": int(image[k]) + 1, "category_id": int(label[k]), "bbox": box,
                  "score": round(float(score[k]), 5)}
        if encode is not None:
            size = (int(height[image[k]]), int(width[image[k]]))
            rle = encode.merge(encode.frPyObjects([_octagon(*box)], *size))
            record["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        results.append(record)
    return ground_truth, results
