"""Time a corruption-robustness run (15 corruptions x 5 severities) beside the clean evaluation it extends.

    python scripts/bench_robustness.py --checkpoint runs/raccoon/checkpoints/best.ckpt \\
        --data configs/datasets/raccoon.yaml [--corruptions all] [--severities 1-5] [--workers 2]

Prints the clean pass's time, the corrupted passes' time and their ratio to 75 clean passes (what the run
costs beyond the model itself: reading, corrupting), the robustness table with mPC and rPC, and the cost of
one vectorised glass blur beside the reference's pixel-by-pixel loop on one of the images.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import cvtrain
from cvtrain.data.files import read_image
from cvtrain.evaluation.corruptions import PARAMETERS, _glass_shuffle


def glass_loop(x: np.ndarray, max_delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The reference's sequential loop (imagecorruptions without numba)."""
    x = x.copy()
    height, width = x.shape[:2]
    for _ in range(iterations):
        for h in range(height - max_delta, max_delta, -1):
            for w in range(width - max_delta, max_delta, -1):
                dx, dy = rng.integers(-max_delta, max_delta, size=2)
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", help="dataset YAML (default: the checkpoint's)")
    parser.add_argument("--corruptions", nargs="*", default=["all"])
    parser.add_argument("--severities", default="1-5")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (they corrupt the images)")
    parser.add_argument("--out", default="runs/bench-robustness")
    args = parser.parse_args()
    low, _, high = args.severities.partition("-")
    severities = list(range(int(low), int(high or low) + 1))
    overrides = [f"train.num_workers={args.workers}"]

    started = time.perf_counter()
    clean = cvtrain.evaluate(checkpoint=args.checkpoint, data=args.data, overrides=overrides, out=args.out,
                             resamples=0, accelerator="cpu")
    clean_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = cvtrain.evaluate(checkpoint=args.checkpoint, data=args.data, overrides=overrides, out=args.out,
                              corruptions=args.corruptions, severities=severities, resamples=0, accelerator="cpu")
    robustness = result.robustness
    settings = len(robustness.table) * len(robustness.severities)
    print(robustness.summary_table())
    print(f"clean evaluation ({clean.num_images} images): {clean_seconds:.1f} s | corrupted passes ({settings} "
          f"settings, {settings * clean.num_images} images): {robustness.seconds:.1f} s | ratio to {settings} clean "
          f"passes {robustness.seconds / (settings * clean_seconds):.2f} | whole command "
          f"{time.perf_counter() - started:.1f} s")

    config = result.config
    from cvtrain.data.loading import build_index

    index = build_index(config.data).split(config.data.val_split)
    image = read_image(index.root / index.images[0].file_name)
    sigma, max_delta, iterations = PARAMETERS["glass_blur"][4]
    started = time.perf_counter()
    _glass_shuffle(image, max_delta, iterations, np.random.default_rng(0))
    ours = time.perf_counter() - started
    started = time.perf_counter()
    glass_loop(image, max_delta, iterations, np.random.default_rng(0))
    loop = time.perf_counter() - started
    print(f"glass blur shuffle, severity 5, {image.shape[1]}x{image.shape[0]}: vectorised {ours * 1000:.0f} ms | "
          f"reference loop {loop * 1000:.0f} ms | ratio {loop / ours:.0f}x")
    print(f"report: {Path(args.out) / 'robustness.html'}")


if __name__ == "__main__":
    main()
