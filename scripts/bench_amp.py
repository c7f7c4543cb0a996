"""Training throughput and peak memory under FP32, FP16-AMP and bf16-AMP, side by side, with ratios to FP32.

One training step here is what ``cvtrain fit --amp`` runs through Lightning's
``MixedPrecision`` plugin: forward and loss under autocast, the loss summed in
FP32, backward (FP16: through a dynamic ``GradScaler``, which unscales before
the SGD step and skips steps with inf/NaN gradients), FP32 weights and optimizer
state. Data is synthetic (uniform images, three random boxes per image, random
masks), generated on the device, so the loader is not measured.

Each (model, precision) runs in a fresh process, so that peak memory is its own:
``torch.cuda.max_memory_allocated`` on CUDA, the rise of the resident set
(``VmHWM`` after resetting it) on the CPU, both measured from the end of the
warm-up: the first steps under ``cudnn.benchmark`` try cuDNN's algorithms with
workspaces far larger than training uses, and that warm-up peak is printed on a
line of its own.

    python scripts/bench_amp.py          # fasterrcnn_resnet50_fpn_v2 (8 x 800 px), deeplabv3_resnet50 (16 x 512 px)
    python scripts/bench_amp.py --small         # CPU, under a minute: SSDlite (quarter width) and LR-ASPP, 2 x 64 px
    python scripts/bench_amp.py --json out.json # also write the results

On CUDA, FP32 convolutions use TF32 where the GPU has it (PyTorch's default,
``torch.backends.cudnn.allow_tf32``), as they do in ``cvtrain fit``.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import torch
import torch.nn.functional as F

from cvtrain.config import ModelConfig
from cvtrain.models import MODELS, build_model

PRECISIONS = {"fp32": None, "fp16-amp": torch.float16, "bf16-amp": torch.bfloat16}
NUM_CLASSES = 20


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    size: int
    options: tuple[tuple[str, object], ...] = ()


FULL = [Case("fasterrcnn_resnet50_fpn_v2", 8, 800), Case("deeplabv3_resnet50", 16, 512, (("aux_loss", True),))]
SMALL = [
    Case("ssdlite320_mobilenet_v3_large", 2, 64, (("width_mult", 0.25),)),
    Case("lraspp_mobilenet_v3_large", 2, 64),
]


def synthetic_batch(case: Case, device: torch.device, generator: torch.Generator):
    images = torch.rand(case.batch, 3, case.size, case.size, device=device, generator=generator)
    if MODELS[case.model].task == "semantic_segmentation":
        masks = torch.randint(0, NUM_CLASSES, (case.batch, case.size, case.size), device=device, generator=generator)
        return images, masks
    targets = []
    for _ in range(case.batch):
        corner = torch.rand(3, 2, device=device, generator=generator) * case.size * 0.6
        extent = (0.1 + torch.rand(3, 2, device=device, generator=generator) * 0.3) * case.size
        labels = torch.randint(1, NUM_CLASSES + 1, (3,), device=device, generator=generator)
        targets.append({"boxes": torch.cat([corner, corner + extent], 1), "labels": labels})
    return list(images), targets


def loss_of(model: torch.nn.Module, case: Case, batch) -> torch.Tensor:
    inputs, targets = batch
    if MODELS[case.model].task == "semantic_segmentation":
        outputs = model(inputs)
        # As cvtrain's SegmentationTask: cross-entropy in FP32, the auxiliary head weighted 0.5.
        loss = F.cross_entropy(outputs["out"].float(), targets)
        return loss + 0.5 * F.cross_entropy(outputs["aux"].float(), targets) if "aux" in outputs else loss
    return torch.stack([value.float() for value in model(inputs, targets).values()]).sum()


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(case: Case, precision: str, device_name: str, warmup: int, steps: int, threads: int | None) -> dict:
    """Runs in its own process; returns images/s and peak memory of ``steps`` timed training steps."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input sizes
    dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    model = (
        build_model(ModelConfig(name=case.model, options=dict(case.options)), NUM_CLASSES, case.size).to(device).train()
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    batch = synthetic_batch(case, device, torch.Generator(device).manual_seed(0))
    skipped = 0
    baseline, warmup_peak = 0, float("nan")
    for step in range(warmup + steps):
        if step == warmup:
            # The peak is training's: taken after the warm-up, whose first steps run cuDNN's benchmark trials
            # (cudnn.benchmark) with workspaces far larger than training ever uses; that peak is reported apart.
            if cuda:
                torch.cuda.synchronize(device)
                warmup_peak = torch.cuda.max_memory_allocated(device) / 2**20
                torch.cuda.reset_peak_memory_stats(device)
            else:
                baseline = resident_kib("VmRSS")
                try:  # reset the resident high-water mark to the current resident set
                    Path("/proc/self/clear_refs").write_text("5")
                except OSError:
                    baseline = 0  # an older kernel: report the whole process
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of(model, case, batch)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            skipped += scaler.get_scale() < scale
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda
            else (resident_kib("VmHWM") - baseline) / 2**10)
    return {"model": case.model, "batch": case.batch, "size": case.size, "precision": precision,
            "images_per_second": case.batch * steps / seconds, "seconds_per_step": seconds / steps,
            "peak_mib": peak, "warmup_peak_mib": warmup_peak, "final_loss": loss.item(), "skipped_steps": skipped}


def _child(queue, *arguments) -> None:
    try:
        queue.put(measure(*arguments))
    except Exception as error:  # an out-of-memory in one case must not end the others
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})


def run_case(context, case: Case, precision: str, device: str, warmup: int, steps: int, threads: int | None) -> dict:
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, case, precision, device, warmup, steps, threads))
    process.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Empty:
            if not process.is_alive():  # killed (out of host memory) or crashed before reporting
                result = {"error": f"process died with exit code {process.exitcode}"}
    process.join()
    queue.close()
    return {"model": case.model, "batch": case.batch, "size": case.size, "precision": precision, **result}


def supports(precision: str, device: str) -> bool:
    return not (precision == "bf16-amp" and device == "cuda" and not torch.cuda.is_bf16_supported())


def print_table(results: list[dict]) -> None:
    print(f"{'model':<32}{'batch':>6}{'size':>6}  {'precision':<10}{'images/s':>10}{'x FP32':>8}"
          f"{'peak MiB':>11}{'x FP32':>8}{'skipped':>9}")
    reference: dict[str, dict] = {}
    for row in results:
        if row["precision"] == "fp32" and "error" not in row:
            reference[row["model"]] = row
        base = reference.get(row["model"])
        head = f"{row['model']:<32}{row['batch']:>6}{row['size']:>6}  {row['precision']:<10}"
        if "error" in row:
            print(head + f"  {row['error']}")
            continue
        speed = row["images_per_second"] / base["images_per_second"] if base else float("nan")
        memory = row["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] > 0 else float("nan")
        print(head + f"{row['images_per_second']:>10.2f}{speed:>8.2f}{row['peak_mib']:>11.0f}{memory:>8.2f}"
              f"{row['skipped_steps']:>9}")
    warmups = [row for row in results if "error" not in row and not math.isnan(row["warmup_peak_mib"])]
    if warmups:
        print("peak during the warm-up, cuDNN benchmark trial workspaces included (not training's peak):")
        for row in warmups:
            print(f"  {row['model']:<32}{row['precision']:<10}{row['warmup_peak_mib']:>11.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny models and images, for the CPU (under a minute)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 3, --small 2)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10)")
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: torch's; --small: 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    warmup = args.warmup if args.warmup is not None else (2 if args.small else 3)
    steps = args.steps or 10
    # One thread: on a shared or small CPU, several threads per process oversubscribe it and the figures wander.
    threads = args.threads or (1 if args.small and device == "cpu" else None)
    # CUDA must not be initialised before a fork; on the CPU a fork skips re-importing torch.
    context = multiprocessing.get_context("spawn" if device == "cuda" else "fork")
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}; {warmup} warm-up + {steps} timed steps per run"
          + (f"; {threads} CPU thread(s)" if threads else ""))
    started = time.perf_counter()
    results = []
    for case in SMALL if args.small else FULL:
        for precision in PRECISIONS:
            if supports(precision, device):
                results.append(run_case(context, case, precision, device, warmup, steps, threads))
    print_table(results)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "device_name": name, "torch": torch.__version__,
                                         "warmup": warmup, "steps": steps, "threads": threads, "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
