"""COCO metrics: ground truth exported from our index must score exactly as pycocotools on the raw file."""
from __future__ import annotations

import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvtrain.data.formats.coco import read_coco
from cvtrain.evaluation.coco import STAT_NAMES, coco_evaluate

BBOX = [0.50458, 0.69697, 0.57298, 0.58563, 0.51940, 0.50140, 0.38681, 0.59368, 0.59535, 0.63981, 0.56642, 0.56429]


@pytest.fixture(scope="module")
def parity(shared_datasets):
    root = shared_datasets / "coco_eval_parity"
    gt_file = root / "faster_coco_eval" / "tests" / "dataset" / "cocoapi" / "instances_val2014_100.json"
    results = json.loads((root / "cocoapi" / "results" / "instances_val2014_fakebbox100_results.json").read_text())
    return gt_file, results


def test_bbox_stats_match_the_published_numbers(parity):
    gt_file, results = parity
    index = read_coco(gt_file, root=gt_file.parent)
    stats = coco_evaluate(index.to_coco(), results)["stats"]
    assert [round(stats[name], 5) for name in STAT_NAMES] == BBOX


def test_bbox_stats_equal_pycocotools_on_the_raw_file(parity):
    gt_file, results = parity
    reference = COCOeval(COCO(str(gt_file)), COCO(str(gt_file)).loadRes(results), "bbox")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    ours = coco_evaluate(read_coco(gt_file, root=gt_file.parent).to_coco(), results, backend="pycocotools")
    assert [ours["stats"][name] for name in STAT_NAMES] == list(reference.stats)  # exactly, not approximately


def test_per_class_ap_from_the_precision_table(parity):
    gt_file, results = parity
    ours = coco_evaluate(read_coco(gt_file, root=gt_file.parent).to_coco(), results)["per_class"]
    # Recompute one class independently: restrict pycocotools to that category.
    coco = COCO(str(gt_file))
    reference = COCOeval(coco, coco.loadRes(results), "bbox")
    reference.params.catIds = [1]
    reference.evaluate(), reference.accumulate(), reference.summarize()
    assert ours["person"] == pytest.approx(reference.stats[0], abs=1e-12)


def test_no_detections_scores_zero_not_a_crash(parity):
    gt_file, _ = parity
    stats = coco_evaluate(read_coco(gt_file, root=gt_file.parent).to_coco(), [])["stats"]
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
