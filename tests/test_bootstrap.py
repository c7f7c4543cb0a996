"""Bootstrap intervals: the vectorised AP and mIoU of a resample equal pycocotools / the confusion-matrix rules
run on that resample built out image by image."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvtrain.evaluation.bootstrap import (
    DetectionBootstrap,
    SegmentationBootstrap,
    intervals,
    paired_difference,
    percentile_interval,
    resample_counts,
)
from cvtrain.evaluation.segmentation import confusion_matrix, segmentation_metrics, to_sparse


def synthetic_detections(num_images: int, seed: int, *, crowd: bool = True, quality: float = 6.0):
    """Ground truth (3 categories, 0-4 boxes per image, some crowd) and noisy detections with unique scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 200, "height": 160} for i in range(num_images)]
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    annotations, results = [], []
    for image in images:
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 140), rng.uniform(0, 110)
            w, h = rng.uniform(8, 60), rng.uniform(8, 50)
            category = int(rng.choice([1, 2, 5], p=[0.5, 0.35, 0.15]))
            is_crowd = int(crowd and rng.random() < 0.08)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": is_crowd})
            for _ in range(rng.integers(0, 3)):  # detections near the object: some match, some not
                jitter = rng.normal(0, w / quality, 4)
                label = category if rng.random() < 0.8 else int(rng.choice([1, 2, 5]))
                results.append({"image_id": image["id"], "category_id": label,
                                "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 2), max(h + jitter[3], 2)],
                                "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):  # background detections
            results.append({"image_id": image["id"], "category_id": int(rng.choice([1, 2, 5])),
                            "bbox": [rng.uniform(0, 150), rng.uniform(0, 120), 20.0, 20.0],
                            "score": float(rng.random())})
    return {"images": images, "categories": categories, "annotations": annotations}, results


def pycocotools_stats(ground_truth: dict, results: list) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return evaluator.stats


def build_resample(ground_truth: dict, results: list, counts: np.ndarray, image_ids: list[int]):
    """The resample written out: image i drawn n times becomes n images with new ids, copies side by side."""
    images, annotations, detections = [], [], []
    by_image_gt = {i: [a for a in ground_truth["annotations"] if a["image_id"] == i] for i in image_ids}
    by_image_dt = {i: [r for r in results if r["image_id"] == i] for i in image_ids}
    for image_id, count in zip(image_ids, counts):
        for _ in range(int(count)):
            new_id = len(images) + 1
            images.append({"id": new_id, "file_name": f"{new_id}.png", "width": 200, "height": 160})
            for annotation in by_image_gt[image_id]:
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": new_id})
            detections.extend({**record, "image_id": new_id} for record in by_image_dt[image_id])
    return {"images": images, "categories": ground_truth["categories"], "annotations": annotations}, detections


def test_all_ones_is_pycocotools_itself():
    ground_truth, results = synthetic_detections(30, seed=1)
    boot = DetectionBootstrap(ground_truth, results)
    ours = boot.statistics(np.ones((1, boot.num_images)))
    reference = pycocotools_stats(ground_truth, results)
    assert ours["AP"][0] == pytest.approx(reference[0], abs=1e-12)
    assert ours["AP50"][0] == pytest.approx(reference[1], abs=1e-12)
    assert ours["AP75"][0] == pytest.approx(reference[2], abs=1e-12)
    assert 0.05 < reference[0] < 0.95  # a score in the middle, where mistakes would show


def test_each_resample_equals_pycocotools_on_the_resample_written_out():
    ground_truth, results = synthetic_detections(14, seed=2)
    boot = DetectionBootstrap(ground_truth, results)
    counts = resample_counts(boot.num_images, resamples=12, seed=3)
    ours = boot.statistics(counts)
    for row, count in enumerate(counts):
        reference = pycocotools_stats(*build_resample(ground_truth, results, count, boot.image_ids))
        assert ours["AP"][row] == pytest.approx(reference[0], abs=1e-12), row
        assert ours["AP50"][row] == pytest.approx(reference[1], abs=1e-12), row
        assert ours["AP75"][row] == pytest.approx(reference[2], abs=1e-12), row
    assert len(set(np.round(ours["AP"], 9))) > 6  # the resamples differ


def test_a_slice_row_equals_pycocotools_on_the_subset():
    ground_truth, results = synthetic_detections(20, seed=4)
    boot = DetectionBootstrap(ground_truth, results)
    subset = boot.image_ids[::3]
    ours = boot.statistics(boot.weights_for(subset))["AP"][0]
    sub_gt = {**ground_truth, "images": [i for i in ground_truth["images"] if i["id"] in subset],
              "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in subset]}
    reference = pycocotools_stats(sub_gt, [r for r in results if r["image_id"] in subset])
    assert ours == pytest.approx(reference[0], abs=1e-12)
    assert boot.statistics(np.zeros((1, boot.num_images)))["AP"][0] == -1  # no ground truth at all: no score


def test_segmentation_resamples_equal_summed_confusions():
    rng = np.random.default_rng(0)
    import torch

    truths = [torch.from_numpy(rng.integers(0, 5, (6, 7))) for _ in range(9)]  # 4: outside the 4 classes
    predictions = [torch.from_numpy(np.where(rng.random((6, 7)) < 0.6, t.numpy() % 4, rng.integers(0, 4, (6, 7))))
                   for t in truths]
    matrices = [confusion_matrix(t, p, 4) for t, p in zip(truths, predictions)]
    boot = SegmentationBootstrap([to_sparse(m) for m in matrices], 4)
    counts = resample_counts(9, resamples=15, seed=1)
    ours = boot.statistics(counts)
    names = ["a", "b", "c", "d"]
    for row, count in enumerate(counts):
        total = sum(int(n) * m.numpy() for n, m in zip(count, matrices))
        assert ours["mIoU"][row] == pytest.approx(segmentation_metrics(total, names)["scalars"]["mIoU"], abs=1e-12)
    assert boot.statistics(np.ones((1, 9)))["mIoU"][0] == pytest.approx(
        segmentation_metrics(sum(m.numpy() for m in matrices), names)["scalars"]["mIoU"], abs=1e-12)


def test_intervals_are_seeded_and_cover_the_point():
    ground_truth, results = synthetic_detections(60, seed=5, crowd=False)
    boot = DetectionBootstrap(ground_truth, results)
    first = intervals(boot.statistics(resample_counts(boot.num_images, 300, seed=0)))
    again = intervals(boot.statistics(resample_counts(boot.num_images, 300, seed=0)))
    other = intervals(boot.statistics(resample_counts(boot.num_images, 300, seed=1)))
    assert first == again and first != other
    point = boot.statistics(np.ones((1, boot.num_images)))["AP"][0]
    low, high = first["AP_ci95"]
    assert low < point < high and high - low < 0.3
    assert percentile_interval(np.array([np.nan])) is None


def test_paired_difference_sees_a_better_model():
    ground_truth, results = synthetic_detections(60, seed=6, crowd=False, quality=4.0)
    _, sharper = synthetic_detections(60, seed=6, crowd=False, quality=20.0)  # same boxes, tighter detections
    counts = resample_counts(60, 400, seed=0)
    worse = DetectionBootstrap(ground_truth, results).statistics(counts)["AP"]
    better = DetectionBootstrap(ground_truth, sharper).statistics(counts)["AP"]
    paired = paired_difference(worse, better)
    assert paired["interval"][0] > 0 and paired["share_second_better"] > 0.97
    assert paired_difference(better, better)["interval"] == [0.0, 0.0]
