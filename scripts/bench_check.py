"""Time reading + the annotation-level checks of ``cvtrain check`` at COCO-train scale, against ``json.load``.

Generates a COCO-like annotation file (118,000 images, 860,000 boxes with an
8-point polygon each, 1 % crowd RLE, 80 classes, a few planted defects), then
in the same run, three rounds each (the fastest is reported, so that a busy machine
slows all alike): ``json.load`` of the file (the floor any Python reader starts
from; also with the garbage collector paused, as cvtrain's reader runs) and
``orjson.loads`` of its bytes, each in a fresh interpreter; then the COCO
reader and ``run_checks`` with file checks off (no pixels are decoded) in this
process. Prints wall and CPU time of each stage, the ratio
(read + checks) / json.load, and the peak resident memory of this process.

    python scripts/bench_check.py [--images 118000] [--boxes 860000] [--file /tmp/coco118k.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
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


PARSE = """
import gc, json, sys, time
path, parser = sys.argv[1], sys.argv[2]
if parser == "json-nogc":
    gc.disable()
    parser = "json"
wall, cpu = time.perf_counter(), time.process_time()
if parser == "json":
    with open(path, encoding="utf-8") as handle:
        json.load(handle)
else:
    import orjson
    with open(path, "rb") as handle:
        orjson.loads(handle.read())
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def time_parse(path: Path, parser: str) -> tuple[float, float] | None:
    """(wall, CPU) seconds to parse ``path`` with ``json.load`` or ``orjson.loads`` in a fresh interpreter.

    A fresh ``python`` with nothing imported is the floor a user's own script starts from (a child forked
    from this process would drag its objects through every garbage collection the parse triggers).
    """
    if parser == "orjson":
        try:
            import orjson  # noqa: F401
        except ImportError:
            return None
    output = subprocess.run([sys.executable, "-c", PARSE, str(path), parser], check=True, capture_output=True,
                            text=True).stdout.split()
    return float(output[0]), float(output[1])


def read_and_check(path: Path, image_size: int):
    """(index, report, read (wall, CPU), checks (wall, CPU)): what ``cvtrain check`` does with a COCO file."""
    wall, cpu = time.perf_counter(), time.process_time()
    index = read_coco(path, root=path.parent, images="train")
    read = (time.perf_counter() - wall, time.process_time() - cpu)
    for image in index.images:
        image.split = "train" if image.id % 20 else "val"
    wall, cpu = time.perf_counter(), time.process_time()
    report = run_checks(index, ChecksConfig(check_files=False), image_size=image_size, progress=False)
    checks = (time.perf_counter() - wall, time.process_time() - cpu)
    return index, report, read, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--boxes", type=int, default=860_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (json.load, orjson.loads, read + checks); the fastest of each is reported")
    parser.add_argument("--file", type=Path, help="keep the generated file here and reuse it when it exists "
                        "(default: a temporary file, generated anew)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = args.file or Path(folder) / "instances_train.json"
        start = time.perf_counter()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            child = multiprocessing.get_context("fork").Process(target=write_coco, args=(partial, args.images,
                                                                                       args.boxes, args.classes))
            child.start()
            child.join()
            partial.replace(path)
        generated = time.perf_counter() - start
        size_mib = path.stat().st_size / 2**20
        rounds = []
        for _ in range(args.repeat):  # interleaved, so that a busy machine slows all three alike
            baseline = time_parse(path, "json")
            fast = time_parse(path, "orjson")
            floor = time_parse(path, "json-nogc")
            index = report = None
            index, report, read, checks = read_and_check(path, args.image_size)
            rounds.append((baseline, fast, read, checks, floor))
            after_read = current_gib()
    best = {name: min((r[k] for r in rounds if r[k] is not None), key=lambda t: t[0], default=None)
            for k, name in enumerate(("json", "orjson", "read", "checks", "floor"))}
    peak = peak_gib()
    tracemalloc.start()  # a last run of the checks, traced, for the memory the checks themselves allocate
    run_checks(index, ChecksConfig(check_files=False), image_size=args.image_size, progress=False)
    traced = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()

    def both(pair):
        return f"{pair[0]:.2f} s wall, {pair[1]:.2f} s CPU"

    ours = (best["read"][0] + best["checks"][0], best["read"][1] + best["checks"][1])
    print(f"dataset: {len(index.images):,} images, {len(index.annotations):,} annotations, {index.num_classes} classes "
          f"({size_mib:.0f} MiB of JSON); generated in {generated:.0f} s; fastest of {args.repeat} rounds below")
    print(f"json.load of the file:        {both(best['json'])}")
    print(f"json.load, garbage collector paused: {both(best['floor'])}")
    print("orjson.loads of the file:     " + (both(best["orjson"]) if best["orjson"] else "orjson not installed"))
    print(f"read_coco:                    {both(best['read'])}")
    print(f"checks (run_checks, no files): {both(best['checks'])}")
    print(f"read_coco + checks:           {both(ours)}")
    print(f"ratio (read_coco + checks) / json.load: {ours[0] / best['json'][0]:.2f} wall, "
          f"{ours[1] / best['json'][1]:.2f} CPU (goal <= 2.00); / json.load with the collector paused: "
          f"{ours[0] / best['floor'][0]:.2f} wall, {ours[1] / best['floor'][1]:.2f} CPU")
    print(f"memory: index in memory {after_read:.2f} GiB RSS; peak RSS of this process {peak:.2f} GiB (goal <= 2.79 "
          f"GiB = 3 GB); allocated by the checks at peak {traced:.2f} GiB")
    print(
        f"findings: {report.count('error')} errors, {report.count('warning')} warnings, {report.count('info')} infos; "
        + ", ".join(f"{code} {report.counts[code]}" for code in report.codes())
    )


if __name__ == "__main__":
    main()
