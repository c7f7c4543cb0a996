"""Host syncs per training step of ``cvtrain fit``, counted with ``torch.profiler`` on the CPU.

Every ``.item()``, ``float(tensor)`` or ``if tensor:`` runs ``aten::_local_scalar_dense``, which on a GPU makes
the CPU wait until the device has caught up; a logging step's one device-to-host copy runs under the
``cvtrain::device_to_host`` range. Both are counted per step (from the start of one training step to the start
of the next), apart from those inside the model's own forward (torchvision's detection transform reads image
sizes with ``.item()``: the model's, the same in a plain loop). Tiny SSDlite at 64 px, batch 2, no workers.

    python scripts/count_syncs.py                  # 12 steps, logging every 5 (trainer.log_every_n_steps=5)
    python scripts/count_syncs.py --steps 20 --log-every 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cvtrain  # noqa: E402
import cvtrain.api  # noqa: E402
from cvtrain.data.formats.shapes import make_shapes  # noqa: E402

HOST_COPY = "cvtrain::device_to_host"


class StepMarks(pl.Callback):
    """A zero-length profiler range at the start of every training step, and one around the model's forward."""

    def on_fit_start(self, trainer, module) -> None:
        ranges = []
        module.model.register_forward_pre_hook(lambda *_: ranges.append(record_function("model_forward").__enter__()))
        module.model.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None))

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        with record_function(f"step_{trainer.global_step + 1}"):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    original = cvtrain.api.build_trainer

    def with_marks(*positional, callbacks=None, **keywords):  # works on checkouts whose fit takes no callbacks
        return original(*positional, callbacks=[*(callbacks or []), StepMarks()], **keywords)

    cvtrain.api.build_trainer = with_marks
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_shapes(root / "shapes", num_images=2 * args.steps + 8, image_size=64, seed=3)
        spec = {
            "task": "detection",
            "data": {"format": "shapes", "root": str(root / "shapes"), "val_fraction": 0.1,
                     "options": {"num_images": 2 * args.steps + 8, "image_size": 64, "seed": 3}},
            "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"width_mult": 0.25}},
            "train": {"max_epochs": 1, "max_steps": args.steps, "batch_size": 2, "image_size": 64,
                      "num_workers": 0, "limit_val_batches": 0, "scheduler": {"name": "constant", "warmup_steps": 0}},
            "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
            "eval": {"num_log_images": 0},
            "trainer": {"accelerator": "cpu", "log_every_n_steps": args.log_every},
        }
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            cvtrain.fit(spec, run_dir=root / "run", skip_checks=True)
    events = sorted(prof.events(), key=lambda event: event.time_range.start)
    starts = [(event.time_range.start, int(event.name.split("_")[1])) for event in events
              if event.name.startswith("step_")]
    forwards = [(event.time_range.start, event.time_range.end) for event in events if event.name == "model_forward"]
    outside, inside, copies = Counter(), Counter(), Counter()
    for event in events:
        if event.name not in ("aten::_local_scalar_dense", HOST_COPY):
            continue
        time = event.time_range.start
        step = max((number for start, number in starts if start <= time), default=None)
        if step is None:
            continue
        if event.name == HOST_COPY:
            copies[step] += 1
        elif any(start <= time <= end for start, end in forwards):
            inside[step] += 1
        else:
            outside[step] += 1
    print(f"{'step':>5}{'logs':>6}{'item() outside the model':>26}{'device-to-host copies':>23}"
          f"{'item() inside the model':>25}")
    for step in range(1, args.steps):  # the last step also ends training (checkpoint, final checks): left out
        logs = "yes" if step % args.log_every == 0 else ""
        print(f"{step:>5}{logs:>6}{outside[step]:>26}{copies[step]:>23}{inside[step]:>25}")


if __name__ == "__main__":
    main()
