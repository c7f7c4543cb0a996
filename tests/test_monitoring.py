"""Training waits for the device only on the steps that log; the divergence guard keeps its promise without waiting.

The waits are counted with ``torch.profiler``. On the CPU: every ``.item()``, ``float(t)`` or ``if t:`` runs
``aten::_local_scalar_dense``, which on a GPU blocks until the device has caught up, and the one device-to-host
copy of a logging step runs under the ``cvtrain::device_to_host`` range. On CUDA (``-m gpu``): the runtime's
synchronising calls themselves (``cudaStreamSynchronize``, ...). Calls inside the model's own forward
(torchvision's detection transform reads image sizes with ``.item()``; on CUDA its box matching waits too) are
the model's, the same in a plain loop, and are counted apart.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.profiler import ProfilerActivity, profile, record_function

import cvtrain
from cvtrain.data.formats.shapes import make_shapes
from cvtrain.engine.monitoring import HOST_COPY
from cvtrain.errors import DivergenceError

LOG_EVERY = 4
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
)
WAITS = {  # what counts as a wait for the device, per accelerator
    "cpu": {"aten::_local_scalar_dense", HOST_COPY},
    "cuda": {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"},
}


def tiny_spec(tmp: Path, accelerator: str = "cpu", **train) -> dict:
    """SSDlite at a quarter width on 64 px shapes, batch 2 (15 steps an epoch), SGD with momentum, no validation."""
    make_shapes(tmp / "shapes", num_images=40, image_size=64, seed=3)
    return {
        "task": "detection",
        "data": {"format": "shapes", "root": str(tmp / "shapes"), "val_fraction": 0.25,
                 "options": {"num_images": 40, "image_size": 64, "seed": 3}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"width_mult": 0.25}},
        "train": {"max_epochs": 1, "batch_size": 2, "image_size": 64, "num_workers": 0, "limit_val_batches": 0,
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                  "scheduler": {"name": "constant", "warmup_steps": 0}, **train},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 0},
        "trainer": {"accelerator": {"cpu": "cpu", "cuda": "gpu"}[accelerator], "devices": 1,
                    "log_every_n_steps": LOG_EVERY},
    }


class StepMarks(pl.Callback):
    """A zero-length profiler range at the start of every training step, and one around the model's forward."""

    def on_fit_start(self, trainer, module) -> None:
        ranges = []
        module.model.register_forward_pre_hook(lambda *_: ranges.append(record_function("model_forward").__enter__()))
        module.model.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None))

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        with record_function(f"step_{trainer.global_step + 1}"):
            pass


def waits_per_step(prof, waits: set[str]) -> tuple[Counter, Counter]:
    """Per step, the waits of the training loop's thread: outside the model's forward, and inside it."""
    events = sorted(prof.events(), key=lambda event: event.time_range.start)
    marks = [event for event in events if event.name.startswith("step_")]
    thread = marks[0].thread
    starts = [(event.time_range.start, int(event.name.split("_")[1])) for event in marks]
    forwards = [(event.time_range.start, event.time_range.end) for event in events if event.name == "model_forward"]
    outside, model = Counter(), Counter()
    for event in events:
        if event.name not in waits or event.thread != thread:
            continue
        time = event.time_range.start
        step = max((number for start, number in starts if start <= time), default=None)
        if step is not None:
            in_model = any(start <= time <= end for start, end in forwards)
            (model if in_model else outside)[step] += 1
    return outside, model


@pytest.mark.parametrize("accelerator", ["cpu", CUDA])
def test_training_waits_for_the_device_only_on_logging_steps(tmp_path, one_thread, accelerator):
    steps = 3 * LOG_EVERY + 1
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if accelerator == "cuda" else [])
    with profile(activities=activities) as prof:
        result = cvtrain.fit(tiny_spec(tmp_path, accelerator, max_steps=steps), run_dir=tmp_path / "run",
                             skip_checks=True, callbacks=[StepMarks()])
    outside, model = waits_per_step(prof, WAITS[accelerator])
    # The last step is left out: the end of training reads the guard's state and writes checkpoints.
    counted = range(1, steps)
    assert all(model[step] > 0 for step in counted)  # the ranges work: torchvision's own reads are seen
    assert {step: outside[step] for step in counted} == {
        step: int(step % LOG_EVERY == 0) for step in counted}  # one transfer per logging step, else none

    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == [LOG_EVERY - 1, 2 * LOG_EVERY - 1, 3 * LOG_EVERY - 1]
    assert all(math.isfinite(event.value) and event.value > 0 for event in losses)
    assert {"train/bbox_regression", "train/classification"} <= set(events.Tags()["scalars"])
    waits = [event.value for event in events.Scalars("time/data_wait_share")]
    seconds = [event.value for event in events.Scalars("time/step_seconds")]
    assert len(waits) == len(seconds) == 3
    # num_workers 0: decoding happens in the loop, a real but minor share of each step
    assert all(0 < wait < 1 for wait in waits) and all(second > 0 for second in seconds)


# ------------------------------------------------------------------ divergence
BAD_STEP = 5  # 1-based; not a logging step (LOG_EVERY 4), so the guard must carry it to step 8


class Poison(pl.Callback):
    """At ``BAD_STEP``: NaN into the batch (so the loss is NaN) or inf into one gradient; records the weights and
    optimizer state around that step and the steps that changed the weights."""

    def __init__(self, where: str):
        self.where = where
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.momentum_before: list[torch.Tensor] = []
        self.momentum_after: list[torch.Tensor] = []
        self.changed: dict[int, bool] = {}
        self._start: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        step = trainer.global_step + 1
        self._start = [p.detach().clone() for p in module.parameters()]
        if step == BAD_STEP:
            self.before = {n: p.detach().clone() for n, p in module.named_parameters()}
            self.momentum_before = momentum(trainer)
            if self.where == "loss":
                batch[0][0].fill_(math.nan)

    def on_after_backward(self, trainer, module) -> None:
        if trainer.global_step + 1 == BAD_STEP and self.where == "gradient":
            next(p for p in module.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        step = trainer.global_step
        self.changed[step] = any(not torch.equal(a, p) for a, p in zip(self._start, module.parameters()))
        if step == BAD_STEP:
            self.after = {n: p.detach().clone() for n, p in module.named_parameters()}
            self.momentum_after = momentum(trainer)


def momentum(trainer) -> list[torch.Tensor]:
    return [state["momentum_buffer"].clone() for state in trainer.optimizers[0].state.values()]


@pytest.mark.parametrize(("where", "checkpoint_every", "stops_at", "what"), [
    ("loss", None, 2 * LOG_EVERY, "loss is nan"),  # read on the next logging step
    ("gradient", 2, BAD_STEP + 1, "gradients are not finite"),  # read before the step-6 checkpoint is written
])
def test_guard_skips_the_bad_update_and_stops_naming_its_step(tmp_path, one_thread, where, checkpoint_every,
                                                               stops_at, what):
    spec = tiny_spec(tmp_path, max_steps=3 * LOG_EVERY, checkpoint_every_n_steps=checkpoint_every)
    poison = Poison(where)
    run = tmp_path / "run"
    with pytest.raises(DivergenceError) as stop:
        cvtrain.fit(spec, run_dir=run, skip_checks=True, callbacks=[poison])
    message = stop.value.one_line()
    assert f"training diverged at step {BAD_STEP} (epoch 0): {what}" in message
    assert max(poison.changed) == stops_at  # the run went on until the state was read, then stopped
    # The bad update never reached the weights or the momentum; the good steps around it did change them.
    assert poison.before.keys() == poison.after.keys()
    assert all(torch.equal(poison.before[name], poison.after[name]) for name in poison.before)
    assert all(torch.equal(a, b) for a, b in zip(poison.momentum_before, poison.momentum_after))
    assert poison.changed[BAD_STEP] is False
    assert all(poison.changed[step] for step in poison.changed if step != BAD_STEP)
    checkpoints = sorted(path.name for path in (run / "checkpoints").glob("*.ckpt"))
    if checkpoint_every:
        # the checkpoints of steps 2 and 4 were written before the bad step; nothing after it
        assert checkpoints == ["step-00000002.ckpt", "step-00000004.ckpt"]
        assert f"the last good checkpoint is {run / 'checkpoints' / 'step-00000004.ckpt'}" in message
    else:
        assert checkpoints == [] and "no checkpoint was written before it" in message
