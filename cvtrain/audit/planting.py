"""Planting known label errors into a clean COCO dataset, to measure what an audit finds (seeded, documented).

The protocol (``scripts/bench_audit.py`` and the tests use it; ``docs/audit.md`` states it):

1. ``n = round(rate * A)`` errors for ``A`` annotations, split evenly over the four kinds (the remainder goes to
   the kinds in the order swapped, missing, badly_located, spurious); each annotation gets at most one error.
2. *swapped*: the category becomes another category, drawn uniformly.
3. *missing*: the annotation is deleted (its box is kept in the truth, to match suggestions against).
4. *badly_located*: the box is translated in a random direction until its IoU with the original box is a value
   drawn uniformly from ``shift_iou`` (default 0.4-0.7), staying inside the image (up to 20 directions are tried;
   an annotation that cannot move so is replaced by another).
5. *spurious*: a new box of a random category, with the size of a randomly drawn existing annotation, is put where
   it overlaps no original box of that image (up to 50 positions per image).

Everything is drawn from one ``random.Random(seed)``: the same seed, rate and dataset give the same errors.
"""
from __future__ import annotations

import copy
import math
import random
from typing import Any

PLANT_ORDER = ("swapped", "missing", "badly_located", "spurious")


def _iou(a: list[float], b: list[float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def shifted_box(box: list[float], target_iou: float, angle: float) -> list[float]:
    """``box`` translated along ``angle`` until its IoU with ``box`` is ``target_iou`` (bisection)."""
    low, high = 0.0, 2.0 * math.hypot(box[2], box[3])
    for _ in range(60):
        middle = (low + high) / 2
        moved = [box[0] + middle * math.cos(angle), box[1] + middle * math.sin(angle), box[2], box[3]]
        if _iou(box, moved) > target_iou:
            low = middle
        else:
            high = middle
    return [box[0] + low * math.cos(angle), box[1] + low * math.sin(angle), box[2], box[3]]


def error_counts(num_annotations: int, rate: float) -> dict[str, int]:
    """How many errors of each kind ``rate`` plants into ``num_annotations`` annotations."""
    total = round(rate * num_annotations)
    return {kind: total // 4 + (position < total % 4) for position, kind in enumerate(PLANT_ORDER)}


def plant_errors(coco: dict[str, Any], counts: dict[str, int], seed: int = 0,
                 shift_iou: tuple[float, float] = (0.4, 0.7)) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of ``coco`` with errors planted, and the truth about them.

    Args:
        coco: a clean COCO dict (``images`` with ``width``/``height``, ``annotations``, ``categories``).
        counts: errors per kind, e.g. ``error_counts(len(coco["annotations"]), 0.1)``.
        seed: seeds every draw.
        shift_iou: range of the IoU between a moved box and its original.

    Returns:
        ``(noisy_coco, truth)``: ``truth`` maps ``swapped``, ``badly_located`` and ``spurious`` to the planted
        annotation ids, ``missing`` to the deleted annotations, and ``original`` to the swapped and moved
        annotations as they were.

    Raises:
        ValueError: the dataset has too few annotations, categories or free space for the counts asked.
    """
    rng = random.Random(seed)
    noisy = copy.deepcopy(coco)
    annotations = [a for a in noisy["annotations"] if not a.get("iscrowd")]
    images = {image["id"]: image for image in noisy["images"]}
    categories = [c["id"] for c in noisy["categories"]]
    truth: dict[str, Any] = {"swapped": [], "badly_located": [], "spurious": [], "missing": [], "original": {}}
    needed = counts.get("swapped", 0) + counts.get("missing", 0) + counts.get("badly_located", 0)
    if needed > len(annotations):
        raise ValueError(f"{needed} errors asked of {len(annotations)} annotations")
    if counts.get("swapped") and len(categories) < 2:
        raise ValueError("class swaps need at least two categories")
    pool = annotations[:]
    rng.shuffle(pool)
    for annotation in pool[:counts.get("swapped", 0)]:
        truth["original"][annotation["id"]] = copy.deepcopy(annotation)
        annotation["category_id"] = rng.choice([c for c in categories if c != annotation["category_id"]])
        truth["swapped"].append(annotation["id"])
    pool = pool[counts.get("swapped", 0):]
    deleted = pool[:counts.get("missing", 0)]
    pool = pool[counts.get("missing", 0):]
    for annotation in deleted:
        truth["missing"].append(copy.deepcopy(annotation))
    gone = {a["id"] for a in deleted}
    noisy["annotations"] = [a for a in noisy["annotations"] if a["id"] not in gone]
    moved = 0
    for annotation in pool:
        if moved == counts.get("badly_located", 0):
            break
        image = images[annotation["image_id"]]
        target = rng.uniform(*shift_iou)
        for _ in range(20):
            box = shifted_box(annotation["bbox"], target, rng.uniform(0, 2 * math.pi))
            if box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= image["width"] and box[1] + box[3] <= image["height"]:
                truth["original"][annotation["id"]] = copy.deepcopy(annotation)
                annotation["bbox"] = [round(v, 2) for v in box]
                annotation.pop("segmentation", None)  # a moved box no longer matches its polygon
                truth["badly_located"].append(annotation["id"])
                moved += 1
                break
    if moved < counts.get("badly_located", 0):
        raise ValueError(f"only {moved} of {counts['badly_located']} boxes could be moved inside their images")
    originals: dict[int, list[list[float]]] = {}
    for annotation in coco["annotations"]:
        originals.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    sizes = [a["bbox"][2:] for a in coco["annotations"]]
    next_id = max((a["id"] for a in coco["annotations"]), default=0) + 1
    image_ids = sorted(images)
    added = attempts = 0
    while added < counts.get("spurious", 0):
        attempts += 1
        if attempts > 50 * max(counts["spurious"], 1) * 10:
            raise ValueError(f"found room for only {added} of {counts['spurious']} spurious boxes")
        image = images[rng.choice(image_ids)]
        w, h = rng.choice(sizes) if sizes else (image["width"] / 4, image["height"] / 4)
        if w >= image["width"] or h >= image["height"]:
            continue
        for _ in range(50):
            box = [round(rng.uniform(0, image["width"] - w), 2), round(rng.uniform(0, image["height"] - h), 2), w, h]
            if all(_iou(box, other) == 0.0 for other in originals.get(image["id"], [])):
                noisy["annotations"].append({"id": next_id, "image_id": image["id"],
                                             "category_id": rng.choice(categories), "bbox": box,
                                             "area": float(w * h), "iscrowd": 0})
                originals.setdefault(image["id"], []).append(box)  # two added boxes do not overlap either
                truth["spurious"].append(next_id)
                next_id += 1
                added += 1
                break
    return noisy, truth
