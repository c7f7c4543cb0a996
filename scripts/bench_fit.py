"""Training speed of what users run, ``cvtrain fit``, beside a plain PyTorch loop on the same model and data.

For each case and precision (FP32, FP16-AMP, bf16-AMP) two runs, each in a fresh process:

- **cvtrain**: ``cvtrain.fit`` through the Python API, as users run it: the spec's data pipeline on a real
  dataset (or generated shapes), Lightning, cvtrain's callbacks, TensorBoard logging every
  ``trainer.log_every_n_steps``, checkpoints; a fixed number of optimizer steps, no validation.
- **plain**: a hand-written loop on the same model (``cvtrain.models.build_model``), images, batch and image
  size: decode (PIL, ``draft`` for JPEG), resize, flip (segmentation: random scale and a fixed crop, as
  cvtrain's scale jitter does), SGD, optional autocast + ``GradScaler``; nothing else.

Reported after the warm-up steps: training images/s, step time median and p90 (from the start of one step to
the start of the next, data loading included), the share of that time spent waiting for the data loader, peak
memory (CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` at the end of the warm-up, so the
cuDNN benchmark's trial workspaces, which come during the warm-up, are reported on a line of their own; CPU: the
rise of the resident set after the warm-up), the ratio to FP32, and cvtrain / plain (time per step: 1.00 is as
fast as the plain loop) with the difference of the median step times, the fixed cost per step.

    python scripts/bench_fit.py            # GPU: Faster R-CNN R50-FPN v2 and MobileNetV3-FPN (raccoon, 8 x 800 px),
                                           # DeepLabV3-R50 (CamVid, 16 x 512 crops), the tiny overhead model
    python scripts/bench_fit.py --small    # CPU, a few minutes: the tiny overhead model (64 px), SSDlite (320 px)
    python scripts/bench_fit.py --small --cases overhead --repeats 3 --json out.json

Datasets are read from ``--datasets`` (default ``../shared/datasets`` beside the checkout, or
``$CVTRAIN_SHARED/datasets``): ``raccoon/`` and ``camvid/CamVid/`` (only its ``val`` frames are trained on). A
case whose dataset is missing trains on generated shapes instead and says so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cvtrain.config import ModelConfig, load_config  # noqa: E402
from cvtrain.data.loading import build_index  # noqa: E402
from cvtrain.models import MODELS, build_model  # noqa: E402
from cvtrain.models.registry import register_model  # noqa: E402

PRECISIONS = {"fp32": "off", "fp16-amp": "fp16", "bf16-amp": "bf16"}
AUTOCAST = {"fp32": None, "fp16-amp": torch.float16, "bf16-amp": torch.bfloat16}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # as cvtrain's SegmentationTask


# ------------------------------------------------------------------ the tiny overhead model
class TinyBackbone(nn.Module):
    """Four strided convolutions: feature maps at strides 8 and 16 for SSD's head."""

    def __init__(self) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))
        self.stem = nn.Sequential(block(3, 16), block(16, 16), block(16, 16))
        self.down = block(16, 32)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        first = self.stem(x)
        return OrderedDict([("0", first), ("1", self.down(first))])


def tiny_ssd(*, weights=None, weights_backbone=None, num_classes: int = 4, **options) -> nn.Module:
    """A few-layer SSD: torchvision's SSD (matching, hard negatives, losses) over ``TinyBackbone``."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    anchors = DefaultBoxGenerator([[2], [2]])
    head = SSDHead([16, 32], anchors.num_anchors_per_location(), num_classes)
    return SSD(TinyBackbone(), anchors, (64, 64), num_classes, head=head, **options)


TINY = "bench_tiny_ssd"
if TINY not in MODELS:
    register_model(TINY, "detection", tiny_ssd, fixed_size=True)


# ------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One model on one dataset at one batch and size; ``workers=None`` is cvtrain's ``num_workers: auto``."""

    name: str
    model: str
    dataset: str  # raccoon | camvid | shapes
    batch: int
    size: int
    warmup: int
    steps: int
    precisions: tuple[str, ...] = tuple(PRECISIONS)
    options: dict = field(default_factory=dict)
    crop: bool = False  # segmentation: scale jitter and a fixed size x size crop
    workers: int | None = None


FULL = [  # sized so that scripts/gpu_check.sh runs all of it in about 5 minutes on one GPU
    Case("fasterrcnn_r50_fpn_v2", "fasterrcnn_resnet50_fpn_v2", "raccoon", 8, 800, 8, 25),
    Case("deeplabv3_r50", "deeplabv3_resnet50", "camvid", 16, 512, 8, 20, options={"aux_loss": True}, crop=True),
    Case("fasterrcnn_mbv3_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "raccoon", 8, 800, 8, 40),
    Case("overhead", TINY, "shapes", 2, 64, 20, 150, precisions=("fp32",), workers=1),
]
SMALL = [  # one worker: the loop's own cost is what the main process spends; decoding happens beside it
    Case("overhead", TINY, "shapes", 2, 64, 30, 300, precisions=("fp32", "bf16-amp"), workers=1),
    Case("ssdlite320", "ssdlite320_mobilenet_v3_large", "raccoon", 4, 320, 3, 20, precisions=("fp32", "bf16-amp"),
         workers=1),
]


def dataset_section(case: Case, datasets: Path, scratch: Path) -> tuple[dict, str]:
    """The spec's ``data`` section for the case, and the name of what it trains on."""
    if case.dataset == "raccoon" and (datasets / "raccoon" / "annotations").is_dir():
        root = datasets / "raccoon"
        return {"format": "voc", "root": str(root), "annotations": "annotations", "images": "images",
                "classes": ["raccoon"], "splits": {"train": {"list": "data/train_labels.csv"},
                                                   "val": {"list": "data/test_labels.csv"}}}, "raccoon"
    camvid = datasets / "camvid" / "CamVid"
    if case.dataset == "camvid" and (camvid / "val").is_dir():
        classes = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                   "Pedestrian", "Bicyclist"]
        split = {"images": "val", "masks": "valannot", "list": "val.txt"}  # only the training frames are read
        return {"format": "masks", "root": str(camvid), "classes": classes, "ignore_index": 11,
                "splits": {"train": split, "val": split}}, "camvid (val frames)"
    if MODELS[case.model].task != "detection":
        raise SystemExit(f"{case.name}: dataset {case.dataset} not found under {datasets}")
    size = max(case.size, 64)
    return {"format": "shapes", "root": str(scratch / f"shapes-{size}"), "val_fraction": 0.1,
            "options": {"num_images": 200, "image_size": size, "seed": 0}}, f"generated shapes {size} px"


def spec_for(case: Case, precision: str, device: str, data: dict) -> dict:
    """The spec cvtrain trains: SGD at a constant rate, no colour jitter (the plain loop has none)."""
    workers = "auto" if case.workers is None else case.workers
    return {
        "task": MODELS[case.model].task,
        "data": data,
        "model": {"name": case.model, "options": case.options},
        "train": {"max_epochs": 10_000, "max_steps": case.warmup + case.steps, "batch_size": case.batch,
                  "image_size": case.size, "num_workers": workers, "limit_val_batches": 0,
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
                  "scheduler": {"name": "constant", "warmup_steps": 0}},
        "augment": {"hflip": 0.5, "color_jitter": 0.0, "hue": 0.0, "scale": [0.75, 1.25] if case.crop else [1, 1]},
        "eval": {"num_log_images": 0},
        "trainer": {"accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1, "amp": PRECISIONS[precision]},
    }


# ------------------------------------------------------------------ measuring
def resident_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


class Meter:
    """Step start times, loader waits and peak memory; the warm-up ends at step ``warmup``."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup = warmup
        self.device = device
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []  # this process's CPU time: steady where other jobs share the cores
        self.waits: list[float] = []
        self.end = self.cpu_end = 0.0
        self.baseline_kib = 0
        self.warmup_peak_mib = float("nan")

    def step_started(self, wait: float) -> None:
        if len(self.starts) == self.warmup:
            self._reset_peak()
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        self.waits.append(wait)

    def finished(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.warmup_peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.baseline_kib = resident_kib("VmRSS")
            try:  # reset the resident high-water mark to the current resident set
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.baseline_kib = 0

    def result(self, batch: int) -> dict:
        starts = self.starts[self.warmup:] + [self.end]
        durations = np.diff(starts)
        cpu = np.diff(self.cpu_starts[self.warmup:] + [self.cpu_end])
        total = starts[-1] - starts[0]
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda"
                else (resident_kib("VmHWM") - self.baseline_kib) / 2**10)
        waits = self.waits[self.warmup + 1:]  # a step's wait is for the batch it trains on
        return {"images_per_second": batch * len(durations) / total,
                "step_ms_median": 1000 * float(np.median(durations)),
                "step_ms_p90": 1000 * float(np.percentile(durations, 90)),
                "cpu_ms_median": 1000 * float(np.median(cpu)), "cpu_ms_mean": 1000 * float(np.mean(cpu)),
                "wait_share": float(sum(waits) / total), "peak_mib": peak, "warmup_peak_mib": self.warmup_peak_mib,
                "steps": len(durations)}


class LoaderWaits:
    """The seconds spent waiting for the data loader so far: cvtrain's own loader clock when the trainer has one,
    else the gap between one step's end and the next one's start (an upper bound)."""

    def __init__(self) -> None:
        self.gaps = 0.0
        self.last_end: float | None = None

    def total(self, trainer: pl.Trainer) -> float:
        clock = getattr(trainer.profiler, "wait_seconds", None)
        return clock if clock is not None else self.gaps


class FitMeter(pl.Callback):
    """The ``Meter`` inside ``cvtrain.fit``."""

    def __init__(self, meter: Meter):
        self.meter = meter
        self.loader = LoaderWaits()
        self.seen = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        now = time.perf_counter()
        if self.loader.last_end is not None:
            self.loader.gaps += now - self.loader.last_end
        total = self.loader.total(trainer)
        self.meter.step_started(total - self.seen)
        self.seen = total

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.loader.last_end = time.perf_counter()
        if len(self.meter.starts) == trainer.max_steps:
            self.meter.finished()


def run_cvtrain(case: Case, precision: str, device: torch.device, data: dict, scratch: Path) -> dict:
    import cvtrain

    meter = Meter(case.warmup, device)
    spec = spec_for(case, precision, device.type, data)
    cvtrain.fit(spec, run_dir=scratch / "run", skip_checks=True, callbacks=[FitMeter(meter)])
    return meter.result(case.batch)


# ------------------------------------------------------------------ the plain loop
def decode(path: Path, longest: int) -> tuple[np.ndarray, float, float]:
    """RGB at the longest side ``longest`` (JPEG decoded at a reduced size where that still covers it), with the
    x and y factors from the file's pixels to the returned ones."""
    with Image.open(path) as image:
        width, height = image.size
        scale = longest / max(width, height)
        if image.format == "JPEG":
            image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
        array = np.asarray(image.convert("RGB"))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    array = cv2.resize(array, size, interpolation=cv2.INTER_LINEAR)
    return array, size[0] / width, size[1] / height


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255)


class PlainDetection(Dataset):
    def __init__(self, index, size: int):
        self.items = []
        for record in index.images:
            boxes, labels = [], []
            for annotation in index.annotations_by_image.get(record.id, []):
                x, y, w, h = annotation.bbox
                if not annotation.iscrowd and w >= 1 and h >= 1:
                    boxes.append((x, y, x + w, y + h))
                    labels.append(index.label_of(annotation.category_id))
            self.items.append((index.root / record.file_name, np.array(boxes, np.float32).reshape(-1, 4), labels))
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        path, boxes, labels = self.items[position]
        image, sx, sy = decode(path, self.size)
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        if random.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([image.shape[1] - boxes[:, 2], boxes[:, 1], image.shape[1] - boxes[:, 0], boxes[:, 3]], 1)
        return to_tensor(image), {"boxes": torch.from_numpy(boxes), "labels": torch.tensor(labels, dtype=torch.int64)}


class PlainSegmentation(Dataset):
    """Resize the longest side to ``size`` times a random scale in [0.75, 1.25], pad and crop to size x size."""

    def __init__(self, index, size: int, ignore: int):
        self.items = [(index.root / r.file_name, index.root / r.mask_file) for r in index.images]
        self.size, self.ignore = size, ignore

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        path, mask_path = self.items[position]
        longest = round(self.size * random.uniform(0.75, 1.25))
        image, _, _ = decode(path, longest)
        mask = cv2.resize(np.asarray(Image.open(mask_path)), image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        pad_h, pad_w = max(0, self.size - image.shape[0]), max(0, self.size - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.ignore)
        top = random.randint(0, image.shape[0] - self.size)
        left = random.randint(0, image.shape[1] - self.size)
        image = image[top: top + self.size, left: left + self.size]
        mask = mask[top: top + self.size, left: left + self.size]
        if random.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return to_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


def collate(batch):
    return tuple(zip(*batch))


def run_plain(case: Case, precision: str, device: torch.device, data: dict, scratch: Path) -> dict:
    config = load_config(spec_for(case, precision, device.type, data))
    index = build_index(config.data).split("train")
    task = MODELS[case.model].task
    if task == "detection":
        dataset: Dataset = PlainDetection(index, case.size)
        model_classes = index.num_classes
    else:
        dataset = PlainSegmentation(index, case.size, index.ignore_index)
        model_classes = index.num_classes
    workers = config.train.num_workers if isinstance(config.train.num_workers, int) else auto_workers()
    cuda = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=case.batch, shuffle=True, num_workers=workers, collate_fn=collate,
                        pin_memory=cuda, drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = cuda and task == "semantic_segmentation" and case.crop
    model = build_model(ModelConfig(name=case.model, options=case.options), model_classes, case.size)
    model = model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                weight_decay=1e-4)
    dtype = AUTOCAST[precision]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    meter = Meter(case.warmup, device)
    total = case.warmup + case.steps
    done = 0
    while done < total:
        batches = iter(loader)
        while done < total:
            waited = time.perf_counter()
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            meter.step_started(time.perf_counter() - waited)
            images = [image.to(device, non_blocking=True) for image in images]
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                if task == "detection":
                    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                    loss = torch.stack([v.float() for v in model(images, targets).values()]).sum()
                else:
                    masks = torch.stack(targets).to(device, non_blocking=True)
                    outputs = model((torch.stack(images) - mean) / std)
                    loss = F.cross_entropy(outputs["out"].float(), masks, ignore_index=index.ignore_index)
                    if "aux" in outputs:
                        loss = loss + 0.5 * F.cross_entropy(outputs["aux"].float(), masks,
                                                            ignore_index=index.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            done += 1
    meter.finished()
    return meter.result(case.batch)


def auto_workers() -> int:
    from cvtrain.data.workers import auto_num_workers

    return auto_num_workers(1)


# ------------------------------------------------------------------ processes and the table
def child(arguments: dict) -> dict:
    case = Case(**{**arguments["case"], "precisions": tuple(arguments["case"]["precisions"])})
    if arguments["threads"]:
        torch.set_num_threads(arguments["threads"])
    device = torch.device(arguments["device"])
    with tempfile.TemporaryDirectory(prefix="bench_fit-") as folder:
        scratch = Path(folder)
        data, _ = dataset_section(case, Path(arguments["datasets"]), Path(arguments["cache"]))
        runner = run_cvtrain if arguments["runner"] == "cvtrain" else run_plain
        return runner(case, arguments["precision"], device, data, scratch)


def run_child(arguments: dict) -> dict:
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", "NO_ALBUMENTATIONS_UPDATE": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if arguments["threads"]:
        environment["OMP_NUM_THREADS"] = str(arguments["threads"])
    process = subprocess.run([sys.executable, __file__, "--child", json.dumps(arguments)], capture_output=True,
                             text=True, env=environment)
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode or not lines:
        tail = (process.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"exit {process.returncode}: {tail}"}
    return json.loads(lines[-1])


def median_of(runs: list[dict]) -> dict:
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[0]
    middle = sorted(good, key=lambda run: run["cpu_ms_mean"])[len(good) // 2]
    return {**middle, "repeats_cpu_ms_mean": [round(run["cpu_ms_mean"], 2) for run in good]}


class Table:
    """Prints one line per run as it finishes; cvtrain's lines end with cvtrain / plain and the cost per step.

    On the CPU, where other jobs may share the cores, the ratio and the cost per step come from this process's
    CPU time (mean per timed step, logging steps included); on CUDA from wall-clock time.
    """

    def __init__(self, device: str):
        self.cpu = device == "cpu"
        self.rows: list[dict] = []
        print(f"{'case':<22}{'precision':<10}{'runner':<8}{'images/s':>9}{'x FP32':>7}{'median ms':>10}{'p90 ms':>8}"
              f"{'wait':>6}{'CPU ms':>8}{'peak MiB':>9}{'x FP32':>7}{'cvtrain/plain':>14}{'+ms/step':>9}", flush=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        label = f"{row['case']:<22}{row['precision']:<10}{row['runner']:<8}"
        if "error" in row:
            print(label + row["error"], flush=True)
            return
        base = self.find(row["case"], "fp32", row["runner"])
        speed = row["images_per_second"] / base["images_per_second"] if base else float("nan")
        memory = row["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] > 0 else float("nan")
        line = (label + f"{row['images_per_second']:>9.1f}{speed:>7.2f}{row['step_ms_median']:>10.2f}"
                f"{row['step_ms_p90']:>8.2f}{100 * row['wait_share']:>5.0f}%{row['cpu_ms_mean']:>8.2f}"
                f"{row['peak_mib']:>9.0f}{memory:>7.2f}")
        reference = self.find(row["case"], row["precision"], "plain")
        if row["runner"] == "cvtrain" and reference:
            if self.cpu:
                ours, theirs = row["cpu_ms_mean"], reference["cpu_ms_mean"]
            else:
                ours = 1000 * row["batch"] / row["images_per_second"]
                theirs = 1000 * reference["batch"] / reference["images_per_second"]
            row["cvtrain_over_plain"], row["overhead_ms"] = ours / theirs, ours - theirs
            line += f"{ours / theirs:>14.3f}{ours - theirs:>+9.2f}"
        print(line, flush=True)

    def find(self, case: str, precision: str, runner: str) -> dict | None:
        return next((r for r in self.rows if (r["case"], r["precision"], r["runner"]) == (case, precision, runner)
                     and "error" not in r), None)

    def warmup_peaks(self) -> None:
        if self.cpu:
            return
        print("peak memory during the warm-up (cuDNN benchmark trial workspaces included; not training's peak):")
        for row in self.rows:
            if "error" not in row:
                print(f"  {row['case']:<22}{row['precision']:<10}{row['runner']:<8}{row['warmup_peak_mib']:>9.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the CPU cases (a few minutes on 2 cores)")
    parser.add_argument("--cases", nargs="+", help="only these cases (by name)")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), help="only these precisions")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: per case)")
    parser.add_argument("--warmup", type=int, help="untimed steps per run (default: per case)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (the median is shown)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (default: --small 1, else torch's)")
    parser.add_argument("--datasets", type=Path, help="folder holding raccoon/ and camvid/")
    parser.add_argument("--json", type=Path, help="also write the results here (after every run)")
    parser.add_argument("--budget", type=float, help="start no run after this many seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shared = os.environ.get("CVTRAIN_SHARED")
    datasets = args.datasets or (Path(shared) / "datasets" if shared else REPO.parent / "shared" / "datasets")
    threads = args.threads or (1 if args.small and device == "cpu" else None)
    cases = [c for c in (SMALL if args.small else FULL) if not args.cases or c.name in args.cases]
    if args.datasets is None and (REPO / ".bench-data").is_dir():
        datasets = REPO / ".bench-data"  # carried to a GPU machine beside the checkout (scripts/gpu_check.sh)
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}, lightning {pl.__version__}; "
          f"{os.cpu_count()} CPU cores" + (f"; {threads} torch thread(s) per run" if threads else ""))
    cache = Path(tempfile.gettempdir()) / "cvtrain-bench-data"
    table = Table(device)
    started = time.perf_counter()
    skipped = []

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"device": device, "device_name": name, "torch": torch.__version__,
                                             "threads": threads, "results": table.rows, "skipped": skipped},
                                            indent=2) + "\n")

    for case in cases:
        case = replace(case, steps=args.steps or case.steps, warmup=args.warmup if args.warmup is not None
                       else case.warmup)
        _, source = dataset_section(case, datasets, cache)
        print(f"# {case.name}: {case.model}, {source}, batch {case.batch}, {case.size} px, {case.warmup} warm-up + "
              f"{case.steps} timed steps, workers {'auto' if case.workers is None else case.workers}", flush=True)
        for precision in case.precisions:
            if args.precisions and precision not in args.precisions:
                continue
            if precision == "bf16-amp" and device == "cuda" and not torch.cuda.is_bf16_supported():
                continue
            for runner in ("plain", "cvtrain"):
                if args.budget and time.perf_counter() - started > args.budget:
                    skipped.append(f"{case.name} {precision} {runner}")
                    continue
                runs = [run_child({"case": asdict(case), "precision": precision, "runner": runner, "device": device,
                                   "threads": threads, "datasets": str(datasets), "cache": str(cache)})
                        for _ in range(args.repeats)]
                table.add({"case": case.name, "model": case.model, "batch": case.batch, "precision": precision,
                           "runner": runner, **median_of(runs)})
                save()
    table.warmup_peaks()
    if skipped:
        print(f"not run, past --budget {args.budget} s: {', '.join(skipped)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    save()


if __name__ == "__main__":
    main()
