"""COCO metrics through pycocotools, against ground truth exported from the index."""
from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` object built from a dict, without its prints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(
    ground_truth: dict[str, Any] | COCO, results: Sequence[dict[str, Any]], iou_type: str = "bbox"
) -> dict[str, Any]:
    """Run pycocotools' ``COCOeval`` with default parameters.

    Args:
        ground_truth: a COCO dict (``DatasetIndex.to_coco()``) or a ``COCO`` object.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` or ``segmentation``, ``score``).
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"stats": {AP, AP50, ...}, "per_class": {category name: AP}, "summary": text}``;
        -1 marks an area range without ground truth, as pycocotools does.
    """
    gt = ground_truth if isinstance(ground_truth, COCO) else coco_from_dict(ground_truth)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        if results:
            dt = gt.loadRes([dict(r) for r in results])
        else:  # pycocotools cannot load an empty result list; an empty COCO scores 0 where GT exists
            dt = coco_from_dict(
                {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            )
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    # precision[iou, recall, class, area=all, maxDets=100]; -1 where a class has no ground truth.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for position, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, position]
        values = values[values > -1]
        per_class[gt.cats[category_id]["name"]] = float(np.mean(values)) if values.size else -1.0
    return {"stats": stats, "per_class": per_class, "summary": output.getvalue()}
