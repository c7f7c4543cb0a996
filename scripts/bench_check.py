"""Time the annotation-level checks of ``cvtrain check`` at COCO-train scale.

Generates a COCO-like annotation file (118,000 images, 860,000 boxes with an
8-point polygon each, 1 % crowd RLE, 80 classes, a few planted defects), reads
it with the COCO reader, and times ``run_checks`` with file checks off (no
pixels are decoded). Prints wall time of each stage and the peak resident
memory of the process.

    python scripts/bench_check.py [--images 118000] [--boxes 860000]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from cvtrain.curation import ChecksConfig, run_checks
from cvtrain.data.formats.coco import read_coco


def peak_gib() -> float:
    """Peak resident memory of this process so far (generation runs in a child, so it is not counted)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def current_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**30


def make_coco(images: int, boxes: int, classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    width = rng.choice([640, 500, 480, 427, 612], images)
    height = rng.choice([480, 375, 640, 427, 612], images)
    owner = np.sort(rng.integers(0, images, boxes))
    w = np.maximum(1.0, np.round(rng.lognormal(3.5, 1.0, boxes), 2))
    h = np.maximum(1.0, np.round(w * rng.lognormal(0.0, 0.4, boxes), 2))
    w, h = np.minimum(w, width[owner] - 1), np.minimum(h, height[owner] - 1)
    x = np.round(rng.random(boxes) * (width[owner] - w), 2)
    y = np.round(rng.random(boxes) * (height[owner] - h), 2)
    category = rng.integers(1, classes + 1, boxes)
    crowd = rng.random(boxes) < 0.01
    # planted defects, so that findings are listed too: boxes past the edge, duplicates
    x[:: 5000] = width[owner[:: 5000]] - w[:: 5000] / 2
    annotations = []
    for i in range(boxes):
        x0, y0, x1, y1, a, b = x[i], y[i], x[i] + w[i], y[i] + h[i], w[i] / 4, h[i] / 4
        record = {"id": i + 1, "image_id": int(owner[i]) + 1, "category_id": int(category[i]),
                  "bbox": [float(x[i]), float(y[i]), float(w[i]), float(h[i])], "iscrowd": int(crowd[i])}
        if crowd[i]:  # compressed RLE of the box, as pycocotools writes it
            rle = mask_utils.frPyObjects(
                [[x0, y0, x1, y0, x1, y1, x0, y1]], int(height[owner[i]]), int(width[owner[i]])
            )[0]
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            record["area"] = float(mask_utils.area(rle))
            record["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        else:  # an octagon inscribed in the box: area 7/8 of the box
            record["segmentation"] = [
                [x0 + a, y0, x1 - a, y0, x1, y0 + b, x1, y1 - b, x1 - a, y1, x0 + a, y1, x0, y1 - b, x0, y0 + b]
            ]
            record["area"] = float(w[i] * h[i] * 0.875)
        annotations.append(record)
    annotations.extend(dict(a, id=boxes + n + 1) for n, a in enumerate(annotations[:: 20000]))
    return {
        "images": [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": int(width[i]), "height": int(height[i])}
                   for i in range(images)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, classes + 1)],
    }


def write_coco(path: Path, images: int, boxes: int, classes: int) -> None:
    path.write_text(json.dumps(make_coco(images, boxes, classes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--boxes", type=int, default=860_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=640)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instances_train.json"
        start = time.perf_counter()
        child = multiprocessing.get_context("fork").Process(target=write_coco, args=(path, args.images, args.boxes,
                                                                                   args.classes))
        child.start()
        child.join()
        generated = time.perf_counter()
        index = read_coco(path, root=Path(folder), images="train")
        read = time.perf_counter()
        size_mib = path.stat().st_size / 2**20
    for image in index.images:
        image.split = "train" if image.id % 20 else "val"
    after_read, peak_read = current_gib(), peak_gib()
    config = ChecksConfig(check_files=False)
    begin = time.perf_counter()
    report = run_checks(index, config, image_size=args.image_size, progress=False)
    checked = time.perf_counter()
    peak_checks = peak_gib()
    tracemalloc.start()  # a second run, traced, for the memory the checks themselves allocate
    run_checks(index, config, image_size=args.image_size, progress=False)
    traced = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()
    print(f"dataset: {len(index.images):,} images, {len(index.annotations):,} annotations, {index.num_classes} classes "
          f"({size_mib:.0f} MiB of JSON)")
    print(f"generate + write JSON (child process): {generated - start:.1f} s; read_coco: {read - generated:.1f} s")
    print(f"annotation-level checks (run_checks, check_files=False): {checked - begin:.2f} s")
    print(f"memory: index in memory {after_read:.2f} GiB RSS (peak {peak_read:.2f} GiB while reading JSON); "
          f"peak RSS after the checks {peak_checks:.2f} GiB; allocated by the checks at peak {traced:.2f} GiB")
    print(
        f"findings: {report.count('error')} errors, {report.count('warning')} warnings, {report.count('info')} infos; "
        + ", ".join(f"{code} {report.counts[code]}" for code in report.codes())
    )


if __name__ == "__main__":
    main()
