"""Time COCO evaluation with pycocotools and with faster-coco-eval on the same set, side by side.

Generates ``cvtrain.evaluation.synthetic.make_evaluation_set`` (default 5,000 images, about 35,000 ground
truth boxes, 500,000 detections), then runs ``cvtrain.evaluation.coco.coco_evaluate`` with each backend, as
``cvtrain fit`` validation and ``cvtrain evaluate`` do (copy of the ground truth, loadRes, evaluate,
accumulate, summarize). Prints wall and CPU time of each, the ratio faster / pycocotools (goal <= 0.15) and
the largest difference of the 12 stats (goal 0 to 1e-12).

    python scripts/bench_eval.py [--images 5000] [--detections 100] [--iou-type bbox] [--repeat 1]
"""
from __future__ import annotations

import argparse
import time

from cvtrain.evaluation.coco import STAT_NAMES, coco_evaluate
from cvtrain.evaluation.synthetic import make_evaluation_set


def timed(ground_truth, results, iou_type: str, backend: str) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    scored = coco_evaluate(ground_truth, results, iou_type, backend=backend)
    return scored, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--iou-type", choices=["bbox", "segm"], default="bbox")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest of each backend is reported")
    args = parser.parse_args()

    begin = time.perf_counter()
    ground_truth, results = make_evaluation_set(args.images, args.detections, masks=args.iou_type == "segm")
    print(f"set: {len(ground_truth['images']):,} images, {len(ground_truth['annotations']):,} ground-truth objects, "
          f"{len(results):,} detections, {len(ground_truth['categories'])} classes, iou_type {args.iou_type} "
          f"(generated in {time.perf_counter() - begin:.0f} s)")
    best: dict[str, tuple[float, float]] = {}
    stats: dict[str, dict[str, float]] = {}
    for _ in range(args.repeat):
        for backend in ("pycocotools", "faster"):
            scored, wall, cpu = timed(ground_truth, results, args.iou_type, backend)
            stats[backend] = scored["stats"]
            if backend not in best or wall < best[backend][0]:
                best[backend] = (wall, cpu)
    for backend, (wall, cpu) in best.items():
        print(f"{backend:<12} {wall:7.2f} s wall, {cpu:7.2f} s CPU   AP {stats[backend]['AP']:.5f}")
    print(f"ratio faster / pycocotools: {best['faster'][0] / best['pycocotools'][0]:.3f} wall, "
          f"{best['faster'][1] / best['pycocotools'][1]:.3f} CPU (goal <= 0.15)")
    difference = max(abs(stats["faster"][name] - stats["pycocotools"][name]) for name in STAT_NAMES)
    print(f"largest difference of the 12 stats: {difference:.3g} (goal <= 1e-12)")
    print("stats (pycocotools): " + ", ".join(f"{name} {stats['pycocotools'][name]:.5f}" for name in STAT_NAMES))


if __name__ == "__main__":
    main()
