"""Time the bootstrap interval of COCO AP on generated data, beside the per-resample pycocotools loop.

    python scripts/bench_bootstrap.py [--images 5000] [--resamples 1000] [--reference 3]

Generates a COCO ground truth (20 categories, about 7 boxes per image) and detections (near-misses and
background boxes, about 20 per image), runs ``COCOeval.evaluate()`` once, then times
``DetectionBootstrap.statistics`` on ``--resamples`` resamples against the reference: pycocotools'
``accumulate()`` on each resample (its per-image matches reused, so only the accumulation is repeated),
measured on ``--reference`` resamples and scaled to ``--resamples``. It also checks that both give the
same AP on those resamples. CPU time is printed beside wall time: on a shared machine the wall time says
more about the neighbours than about the code.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np
from pycocotools.cocoeval import COCOeval

from cvtrain.evaluation.bootstrap import DetectionBootstrap, resample_counts
from cvtrain.evaluation.coco import coco_from_dict


def generate(num_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(20)]
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 640, "height": 480} for i in range(num_images)]
    annotations, results = [], []
    for image in images:
        for _ in range(rng.poisson(7)):
            w, h = rng.uniform(10, 200), rng.uniform(10, 200)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = int(rng.integers(1, 21))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(1, 3)):
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                results.append({"image_id": image["id"], "category_id": category if rng.random() < 0.85
                                else int(rng.integers(1, 21)),
                                "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 2), max(h + jitter[3], 2)],
                                "score": round(float(rng.random()), 5)})
        for _ in range(rng.poisson(6)):
            results.append({"image_id": image["id"], "category_id": int(rng.integers(1, 21)),
                            "bbox": [rng.uniform(0, 600), rng.uniform(0, 440), 40.0, 40.0],
                            "score": round(float(rng.random()) * 0.5, 5)})
    return {"images": images, "categories": categories, "annotations": annotations}, results


def accumulate_resample(evaluator: COCOeval, counts: np.ndarray) -> float:
    """pycocotools' own accumulate + AP on one resample: evalImgs repeated per count (no new matching)."""
    params = evaluator.params
    num_images, num_areas = len(params.imgIds), len(params.areaRng)
    resampled = copy.copy(evaluator)
    resampled.params = copy.deepcopy(params)
    order = np.repeat(np.arange(num_images), counts)
    resampled.params.imgIds = list(range(len(order)))
    resampled.evalImgs = [evaluator.evalImgs[k * num_areas * num_images + a * num_images + i]
                          for k in range(len(params.catIds)) for a in range(num_areas) for i in order]
    resampled._paramsEval = copy.deepcopy(resampled.params)
    with contextlib.redirect_stdout(io.StringIO()):
        resampled.accumulate()
    precision = resampled.eval["precision"][:, :, :, 0, -1]
    return float(np.mean(precision[precision > -1])) if (precision > -1).any() else -1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=3, help="resamples timed with pycocotools")
    args = parser.parse_args()

    ground_truth, results = generate(args.images)
    print(f"{args.images} images, {len(ground_truth['annotations'])} boxes, {len(results)} detections")
    started = time.perf_counter()
    boot = DetectionBootstrap(ground_truth, results)
    evaluate_seconds = time.perf_counter() - started
    counts = resample_counts(boot.num_images, args.resamples, seed=0)
    started, cpu_started = time.perf_counter(), time.process_time()
    ours = boot.statistics(counts)["AP"]
    ours_seconds, ours_cpu = time.perf_counter() - started, time.process_time() - cpu_started

    gt = coco_from_dict(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
    started = time.perf_counter()
    reference = [accumulate_resample(evaluator, counts[row]) for row in range(args.reference)]
    reference_seconds = (time.perf_counter() - started) / args.reference * args.resamples
    agree = max(abs(a - b) for a, b in zip(reference, ours[:args.reference]))
    low, high = np.percentile(ours, [2.5, 97.5])
    print(f"COCOeval.evaluate() once (both need it): {evaluate_seconds:.1f} s")
    print(f"bootstrap AP, {args.resamples} resamples: cvtrain {ours_seconds:.2f} s wall, {ours_cpu:.2f} s CPU "
          f"(all threads) | pycocotools accumulate per "
          f"resample {reference_seconds:.0f} s (from {args.reference}) | ratio {reference_seconds / ours_seconds:.0f}x"
          f" | largest AP difference {agree:.1e} | AP 95 % interval [{low:.4f}, {high:.4f}]")


if __name__ == "__main__":
    main()
