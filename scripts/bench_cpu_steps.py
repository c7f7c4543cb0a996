"""Seconds per training step on the CPU for every shipped spec: what to expect before training on a small machine.

For each spec under ``configs/detection``, ``configs/instance`` and ``configs/segmentation``: the spec's model
(``cvtrain.models.build_model``: the spec's options, and the layers fine-tuning freezes when the spec names
pretrained weights; the weights themselves stay random, which changes nothing in the time), its batch size and
``train.image_size``, its optimizer (SGD or AdamW, as the spec says), FP32, on synthetic data so no dataset is
needed: square ``image_size`` x ``image_size`` images (an upper bound: a real photo resized to that longest side
has fewer pixels), 4 random boxes per image (instance: their rectangles as masks; semantic: a random index mask).
Each spec runs in this process: ``--warmup`` untimed steps, then ``--steps`` timed
steps (forward, loss, backward, optimizer step); the table gives their median and the fastest (a machine shared
with other work slows some steps down: the fastest is the nearer to an idle machine; each step's time is printed
on stderr). torch uses as many threads as this process may use cores. Data loading and augmentation are not
timed: on a CPU the model dominates at these sizes.

    python scripts/bench_cpu_steps.py                                  # every spec, 2 warm-up + 3 timed steps
    python scripts/bench_cpu_steps.py --only quickstart ssdlite --steps 5

The table is printed as markdown (docs/benchmarks.md, "CPU expectations").
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cvtrain.config import load_config  # noqa: E402
from cvtrain.models import MODELS, build_model  # noqa: E402

FOLDERS = ("detection", "instance", "segmentation")
SHAPES_CLASSES = 3  # the generated shapes (square, disc, triangle), for specs that do not list their classes


def specs(only: list[str] | None) -> list[Path]:
    found = sorted(path for folder in FOLDERS for path in (REPO / "configs" / folder).glob("*.yaml"))
    if only:
        found = [path for path in found if any(word in path.stem for word in only)]
    return found


def synthetic_batch(task: str, batch: int, size: int, classes: int, generator: torch.Generator):
    """Images and targets of the spec's size: what one training step of that task takes."""
    images = torch.rand(batch, 3, size, size, generator=generator)
    if task == "semantic_segmentation":
        return images, torch.randint(0, classes, (batch, size, size), generator=generator)
    targets = []
    for _ in range(batch):
        corners = torch.rand(4, 2, generator=generator) * size * 0.6
        sides = 16 + torch.rand(4, 2, generator=generator) * size * 0.35
        boxes = torch.cat([corners, (corners + sides).clamp(max=size - 1)], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, classes + 1, (4,), generator=generator)}
        if task == "instance_segmentation":
            masks = torch.zeros(4, size, size, dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
                mask[y0:y1, x0:x1] = 1
            target["masks"] = masks
        targets.append(target)
    return list(images), targets


def loss_of(model: torch.nn.Module, task: str, images, targets) -> torch.Tensor:
    if task == "semantic_segmentation":
        out = model(images)
        loss = F.cross_entropy(out["out"], targets)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"], targets)
        return loss
    return sum(model(images, targets).values())


def optimizer_for(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    settings = config.train.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=settings.weight_decay)


def measure(path: Path, warmup: int, steps: int) -> dict:
    config = load_config(path)
    task = MODELS[config.model.name].task
    classes = len(config.data.classes) if config.data.classes else SHAPES_CLASSES
    size, batch = config.train.image_size, config.train.batch_size
    torch.manual_seed(0)
    model = build_model(config.model, classes, size)
    model.train()
    optimizer = optimizer_for(config, model)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(warmup + steps):
        images, targets = synthetic_batch(task, batch, size, classes, generator)
        started = time.perf_counter()
        loss = loss_of(model, task, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    print(f"  {path.name}: steps " + " ".join(f"{t:.2f}" for t in times) + " s", file=sys.stderr, flush=True)
    seconds = statistics.median(times)
    return {"spec": str(path.relative_to(REPO)), "model": config.model.name, "size": size, "batch": batch,
            "seconds": seconds, "images": batch / seconds, "fastest": min(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="specs whose file name contains one of these words")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2: the first steps set up)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = specs(args.only)
    if not chosen:
        parser.error(f"no spec matches {args.only}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, FP32, "
          f"{args.warmup} warm-up + {args.steps} timed step(s) per spec (median), synthetic square images\n",
          flush=True)
    print("| spec | model | image size | batch | s/step | img/s | fastest step (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for path in chosen:  # each row as soon as it is measured: a stopped run keeps what it measured
        row = measure(path, args.warmup, args.steps)
        print(f"| `{row['spec']}` | {row['model']} | {row['size']} | {row['batch']} | {row['seconds']:.2f} | "
              f"{row['images']:.2f} | {row['fastest']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
