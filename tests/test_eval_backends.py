"""eval.backend: faster-coco-eval must give pycocotools' 12 stats (to 1e-12) on real and generated sets.

pycocotools is the reference; the published numbers are those of coco_eval_parity/SOURCE.md (the cocoapi
fake results against their COCO val2014 ground truth, and faster-coco-eval's own small synthetic set).
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from cvtrain.config import load_config
from cvtrain.errors import ConfigError
from cvtrain.evaluation.coco import STAT_NAMES, coco_backend, coco_evaluate
from cvtrain.evaluation.synthetic import make_evaluation_set
from cvtrain.tasks.detection import DetectionTask

pytest.importorskip("faster_coco_eval")  # in the dev extra; the fast-eval extra for users

PUBLISHED = {
    "bbox": [0.50458, 0.69697, 0.57298, 0.58563, 0.51940, 0.50140, 0.38681, 0.59368, 0.59535, 0.63981, 0.56642,
             0.56429],
    "segm": [0.31955, 0.56229, 0.29893, 0.38737, 0.31018, 0.32693, 0.26823, 0.41545, 0.41684, 0.46945, 0.37676,
             0.38147],
}
SYNTHETIC = [0.6947, 0.6947, 0.6947, -1.0, 0.7921, 0.0, 0.6667, 0.75, 0.75, -1.0, 0.7917, 0.0]


def assert_parity(ground_truth, results, iou_type: str) -> dict[str, float]:
    reference = coco_evaluate(ground_truth, results, iou_type, backend="pycocotools")
    fast = coco_evaluate(ground_truth, results, iou_type, backend="faster")
    assert (reference["backend"], fast["backend"]) == ("pycocotools", "faster")
    for name in STAT_NAMES:
        assert abs(fast["stats"][name] - reference["stats"][name]) <= 1e-12, name
    assert fast["per_class"].keys() == reference["per_class"].keys()
    for name, value in reference["per_class"].items():
        assert abs(fast["per_class"][name] - value) <= 1e-12, name
    return reference["stats"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_val2014_fake_results(shared_datasets, iou_type):
    root = shared_datasets / "coco_eval_parity"
    ground_truth = json.loads((root / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json").read_text())
    results = json.loads((root / f"cocoapi/results/instances_val2014_fake{iou_type}100_results.json").read_text())
    stats = assert_parity(ground_truth, results, iou_type)
    assert [round(stats[name], 5) for name in STAT_NAMES] == PUBLISHED[iou_type]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_evals_synthetic_shapes(shared_datasets, iou_type):
    root = shared_datasets / "coco_eval_parity/faster_coco_eval/tests/dataset"
    ground_truth = json.loads((root / "gt_dataset.json").read_text())
    results = json.loads((root / "dt_dataset.json").read_text())
    stats = assert_parity(ground_truth, results, iou_type)
    assert [round(stats[name], 4) for name in STAT_NAMES] == SYNTHETIC


def test_generated_boxes_with_ties_crowds_and_wrong_classes():
    ground_truth, results = make_evaluation_set(images=60, detections_per_image=100, seed=1)
    assert len(results) == 6_000 and len({r["score"] for r in results}) < len(results)  # scores tie
    assert any(a["iscrowd"] for a in ground_truth["annotations"])
    stats = assert_parity(ground_truth, results, "bbox")
    assert 0.05 < stats["AP"] < 0.5 and stats["APs"] > 0 and stats["APl"] > 0  # every size range is exercised


def test_generated_masks():
    ground_truth, results = make_evaluation_set(images=30, detections_per_image=40, seed=2, masks=True)
    assert_parity(ground_truth, results, "segm")


def test_backend_choice(monkeypatch):
    assert coco_backend("auto") == "faster" and coco_backend("pycocotools") == "pycocotools"
    with pytest.raises(ConfigError, match="eval.backend is 'fastest'"):
        coco_backend("fastest")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "faster_coco_eval" else real(name, *rest))
    assert coco_backend("auto") == "pycocotools"
    with pytest.raises(ConfigError, match=r"pip install 'cvtrain\[fast-eval\]'"):
        coco_backend("faster")


def test_validation_in_fit_uses_the_configured_backend(shared_datasets, tmp_path):
    root = shared_datasets / "coco_eval_parity"
    gt_file = root / "faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"
    ground_truth = json.loads(gt_file.read_text())
    results = json.loads((root / "cocoapi/results/instances_val2014_fakebbox100_results.json").read_text())
    spec = {"task": "detection", "data": {"format": "coco", "root": str(gt_file.parent)},
            "model": {"name": "ssdlite320_mobilenet_v3_large"}, "train": {"image_size": 64}}
    with pytest.raises(ConfigError, match="eval.backend"):
        load_config({**spec, "eval": {"backend": "fastest"}})
    task = DetectionTask(load_config(spec).model_dump(mode="json"), [c["name"] for c in ground_truth["categories"]],
                         [c["id"] for c in ground_truth["categories"]])
    task.ground_truth = ground_truth
    scored = {}
    for backend in ("auto", "pycocotools"):  # auto is the default
        task.config.eval.backend = backend
        scored[backend] = task.evaluate_results(results, {image["id"] for image in ground_truth["images"]})
    assert scored["auto"]["backend"] == "faster" and scored["pycocotools"]["backend"] == "pycocotools"
    assert [round(scored["auto"]["scalars"][name], 5) for name in STAT_NAMES] == PUBLISHED["bbox"]
    for name in STAT_NAMES:
        assert abs(scored["auto"]["scalars"][name] - scored["pycocotools"]["scalars"][name]) <= 1e-12
