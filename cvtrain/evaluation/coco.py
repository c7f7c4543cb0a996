"""COCO metrics against ground truth exported from the index: pycocotools, or faster-coco-eval when installed.

pycocotools is the reference. faster-coco-eval (the ``fast-eval`` extra) computes the same 12 stats with a
C++ matcher and accumulator, about ten times faster on large validation sets; ``tests/test_eval_backends.py``
checks that both give the same numbers, and ``scripts/bench_eval.py`` measures both.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvtrain.errors import ConfigError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "pycocotools", "faster")


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_backend(requested: str = "auto") -> str:
    """The backend that runs: ``faster`` or ``pycocotools``.

    Args:
        requested: ``auto`` (faster-coco-eval when it is installed), ``pycocotools`` or ``faster``.

    Raises:
        ConfigError: ``faster`` was asked for but faster-coco-eval is not installed, or an unknown name.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"eval.backend is {requested!r}", hint=f"use one of {', '.join(BACKENDS)}")
    installed = importlib.util.find_spec("faster_coco_eval") is not None
    if requested == "faster" and not installed:
        raise ConfigError("eval.backend is faster but faster-coco-eval is not installed",
                          hint="pip install 'cvtrain[fast-eval]', or set eval.backend=pycocotools")
    if requested == "pycocotools" or not installed:
        return "pycocotools"
    return "faster"


def coco_evaluate(ground_truth: dict[str, Any] | COCO, results: Sequence[dict[str, Any]], iou_type: str = "bbox",
                  backend: str = "auto") -> dict[str, Any]:
    """COCO evaluation with default parameters (``COCOeval``: evaluate, accumulate, summarize).

    Args:
        ground_truth: a COCO dict (``DatasetIndex.to_coco()``) or a pycocotools ``COCO`` object.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` or ``segmentation``, ``score``).
        iou_type: ``"bbox"`` or ``"segm"``.
        backend: ``auto``, ``pycocotools`` or ``faster`` (see ``coco_backend``).

    Returns:
        ``{"stats": {AP, AP50, ...}, "per_class": {category name: AP}, "summary": text, "backend": name}``;
        -1 marks an area range without ground truth, as pycocotools does.

    Raises:
        ConfigError: see ``coco_backend``.
    """
    name = coco_backend(backend)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        evaluator, categories = (_faster if name == "faster" else _pycocotools)(ground_truth, results, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {stat: float(value) for stat, value in zip(STAT_NAMES, evaluator.stats[:len(STAT_NAMES)])}
    # precision[iou, recall, class, area=all, maxDets=100]; -1 where a class has no ground truth.
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    per_class = {}
    for position, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, position]
        values = values[values > -1]
        per_class[categories[category_id]["name"]] = float(np.mean(values)) if values.size else -1.0
    return {"stats": stats, "per_class": per_class, "summary": output.getvalue(), "backend": name}


def _pycocotools(ground_truth: dict[str, Any] | COCO, results: Sequence[dict[str, Any]], iou_type: str):
    gt = ground_truth if isinstance(ground_truth, COCO) else coco_from_dict(ground_truth)
    if results:
        dt = gt.loadRes([dict(r) for r in results])
    else:  # pycocotools cannot load an empty result list; an empty COCO scores 0 where GT exists
        dt = coco_from_dict({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []})
    return COCOeval(gt, dt, iou_type), gt.cats


def _faster(ground_truth: dict[str, Any] | COCO, results: Sequence[dict[str, Any]], iou_type: str):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    dataset = ground_truth.dataset if isinstance(ground_truth, COCO) else ground_truth
    # the evaluation writes flags into the annotation records: give it its own (shallow) copies
    gt = FasterCOCO({**dataset, "annotations": [dict(a) for a in dataset.get("annotations", [])]})
    dt = gt.loadRes([dict(r) for r in results])
    return COCOeval_faster(gt, dt, iou_type, print_function=print), gt.cats
