"""ONNX export side by side with PyTorch: parity (worst differences) and onnxruntime ÷ PyTorch-eager images/s.

Each model is trained for ``--steps`` steps by ``cvtrain fit`` from random weights (``model.weights=null``:
nothing is downloaded; SGD, generated shapes at ``--image-size``, box-shaped masks for Mask R-CNN, the boxes
painted as class masks for semantic models), with score thresholds at 0.001 so that the detectors return many
boxes (the post-processing at full load, and many detections to compare). Then it goes through what
``cvtrain export`` runs (``export_checkpoint``: the export, ``onnx.checker``, the parity check by onnxruntime
on 8 images), and both runtimes are timed on the same ``--count`` images, one image per call, after a warm-up
call, with the same number of CPU threads (``--threads``; onnxruntime gets ``torch.get_num_threads()``); the
best of ``--repeats`` rounds counts for each runtime.

A model that cannot take ``--image-size`` (``ssd300_vgg16`` needs 268 px) runs at its smallest size, said in its row.
A few steps from scratch leave MobileNetV3 detectors (SSDlite above all: its BatchNorm statistics move slowly)
scoring most anchors alike; a parity check then compares ties. Give such models a trained ``--checkpoint``.

    python scripts/bench_export.py                                     # SSDlite and LR-ASPP at 320 px, 1 thread
    python scripts/bench_export.py --all --image-size 128 --count 8     # every registered model: the parity table
    python scripts/bench_export.py --checkpoint runs/quickstart/checkpoints/best.ckpt --images data/shapes/images
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

import cvtrain
from cvtrain.data.formats.shapes import CLASSES, make_shapes
from cvtrain.engine.checkpoints import load_task
from cvtrain.export.parity import check_parity
from cvtrain.export.runtime import OnnxModel, OnnxNetwork
from cvtrain.export.workflow import ParityError, export_checkpoint, parity_images
from cvtrain.models import MODELS
from cvtrain.tasks import TASKS

DEFAULT_MODELS = ["ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def class_masks(shapes: Path) -> None:
    """``shapes/masks/<image>.png``: each shape's box painted with its class (1..3) over background (0)."""
    coco = json.loads((shapes / "annotations.json").read_text())
    (shapes / "masks").mkdir(exist_ok=True)
    for image in coco["images"]:
        mask = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        for annotation in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = (int(v) for v in annotation["bbox"])
            mask[y:y + h, x:x + w] = annotation["category_id"]
        Image.fromarray(mask).save(shapes / "masks" / Path(image["file_name"]).with_suffix(".png").name)


def model_options(name: str) -> dict:
    if MODELS[name].task == "semantic_segmentation":
        return {}
    return {"box_score_thresh": 0.001} if "rcnn" in name else {"score_thresh": 0.001}


def trained_checkpoint(name: str, shapes: Path, image_size: int, steps: int, folder: Path) -> Path:
    """``cvtrain fit`` of ``name`` for ``steps`` steps on the generated shapes; its last checkpoint."""
    task = MODELS[name].task
    if task == "semantic_segmentation":
        data = {"format": "masks", "root": str(shapes), "classes": ["background", *CLASSES], "val_fraction": 0.1}
    else:
        data = {"format": "shapes", "root": str(shapes), "val_fraction": 0.1,
                "options": {"num_images": len(list((shapes / "images").iterdir())), "image_size": image_size}}
    spec = {"task": task, "data": data, "model": {"name": name, "options": model_options(name)},
            "train": {"max_epochs": 1, "max_steps": steps, "batch_size": 2, "image_size": image_size, "num_workers": 0,
                      "gradient_clip_val": 1.0, "optimizer": {"name": "sgd", "lr": 0.01},
                      "scheduler": {"name": "constant", "warmup_steps": 0}},
            "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
            "eval": {"num_log_images": 0}, "trainer": {"accelerator": "cpu", "log_every_n_steps": 1}}
    fitted = cvtrain.fit(spec, run_dir=folder / name, skip_checks=True)
    return fitted.last_checkpoint


def random_checkpoint(name: str, image_size: int, folder: Path) -> Path:
    """A checkpoint as ``cvtrain fit`` writes one, of a model with random weights (seeded): ``--steps 0``."""
    task_name = MODELS[name].task
    config = {"task": task_name, "model": {"name": name, "options": model_options(name)},
              "data": {"format": "masks" if task_name == "semantic_segmentation" else "shapes", "root": str(folder)},
              "train": {"image_size": image_size}}
    torch.manual_seed(0)
    task = TASKS[task_name](config, list(CLASSES), [1, 2, 3])
    path = folder / f"{name}.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def measure(checkpoint: Path, images: Path, out: Path, count: int, repeats: int) -> dict:
    started = time.perf_counter()
    try:
        result = export_checkpoint(checkpoint, out, images=images, progress=False)
    except ParityError as error:  # the figures of a failed check are the point of the table
        result = error.result
    total = time.perf_counter() - started
    task = load_task(checkpoint).eval()
    mean = std = None
    if task.config.task == "semantic_segmentation":
        mean, std = task.mean, task.std
    network = OnnxNetwork(OnnxModel(result.path, device="cpu"), mean, std)
    timed = parity_images(task.config, images, limit=count)
    # The best of a few rounds for each runtime: on a shared machine a round can lose its core to another process.
    rounds = [check_parity(task, network, timed) for _ in range(repeats)]
    return {"model": task.config.model.name, "task": task.config.task, "export_s": result.seconds,
            "total_s": total, "mb": result.size_bytes / 2**20, "worst": result.parity.worst(),
            "ok": result.parity.ok, "torch": max(r.torch_images_per_second for r in rounds),
            "onnx": max(r.onnx_images_per_second for r in rounds), "images": len(timed)}


def cell(value, pattern: str, width: int) -> str:
    return f"{pattern.format(value):>{width}}" if value is not None else f"{'-':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registered model names")
    parser.add_argument("--all", action="store_true", help="every registered model")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    parser.add_argument("--images", type=Path, help="image folder (default: generated shapes at --image-size)")
    parser.add_argument("--image-size", type=int, default=320, help="longest side fed to the models (default 320)")
    parser.add_argument("--count", type=int, default=32, help="images timed per model (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both runtimes (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per model; the best counts (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="training steps before the export (0: random weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {machine}, "
          f"{args.threads} thread(s), image size {args.image_size}, {args.count} images timed per model, "
          f"best of {args.repeats} rounds")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        shapes = folder / "shapes"
        make_shapes(shapes, num_images=max(args.count, 24), image_size=args.image_size, seed=0)
        class_masks(shapes)
        images = args.images or shapes / "images"
        names = [None] if args.checkpoint else sorted(MODELS) if args.all else args.models
        print(f"{'model':<36}{'export s':>9}{'check s':>8}{'MB':>7}{'box px':>9}{'score':>9}{'mask IoU':>9}"
              f"{'logits':>9}{'tied':>6}{'unst':>6}  {'parity':<7}{'torch img/s':>12}{'onnx img/s':>11}{'ratio':>7}")
        for name in names:
            size = max(args.image_size, MODELS[name].min_image_size) if name else args.image_size
            if name is None:
                checkpoint = args.checkpoint
            elif args.steps:
                checkpoint = trained_checkpoint(name, shapes, size, args.steps, folder)
            else:
                checkpoint = random_checkpoint(name, size, folder)
            row = measure(checkpoint, images, folder / f"{name or checkpoint.stem}.onnx", args.count, args.repeats)
            worst = row["worst"]
            label = row["model"] + (f" ({size} px)" if size != args.image_size else "")
            print(f"{label:<36}{row['export_s']:>9.1f}{row['total_s']:>8.1f}{row['mb']:>7.1f}"
                  + cell(worst.get("box"), "{:.1e}", 9) + cell(worst.get("score"), "{:.1e}", 9)
                  + cell(worst.get("mask_iou"), "{:.4f}", 9) + cell(worst.get("logits"), "{:.1e}", 9)
                  + f"{worst.get('tied', 0):>6}{worst.get('unstable', 0):>6}  {'holds' if row['ok'] else 'FAILS':<7}"
                  + f"{row['torch']:>12.1f}{row['onnx']:>11.1f}{row['onnx'] / row['torch']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
