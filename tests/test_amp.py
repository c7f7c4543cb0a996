"""Mixed precision: what ``--amp fp16`` and ``--amp bf16`` really run, loss scaling, FP16 hazards, closeness to FP32.

PyTorch's FP16 convolution backward on the CPU skips oneDNN and is slow (about 100x FP32 per
convolution here), so the models are SSDlite at a quarter of its width and LR-ASPP, at 64
and 48 px.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchvision.ops import batched_nms, nms, roi_align, sigmoid_focal_loss

import cvtrain
from cvtrain.config import Config, load_config
from cvtrain.data.loading import build_index
from cvtrain.data.module import DataModule
from cvtrain.engine.callbacks import LossScaleMonitor
from cvtrain.engine.trainer import build_trainer, precision_arguments
from cvtrain.tasks import TASKS
from cvtrain.tasks.common import configure_optimization

CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
)
ACCELERATORS = {"cpu": "cpu", "cuda": "gpu"}
STEPS = 20  # compared with FP32
INJECT_AT = STEPS  # the step whose gradients get an inf, after the compared ones
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------ builders
def detection_spec(root: Path, **train) -> dict:
    """Shapes at 64 px and SSDlite at a quarter width; no augmentation, so runs differ only in what they test."""
    return {
        "task": "detection",
        "data": {"format": "shapes", "root": str(root), "val_fraction": 0.2,
                 "options": {"num_images": 10, "image_size": 64, "seed": 3}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"width_mult": 0.25, "score_thresh": 0.01}},
        "train": {"max_epochs": 100, "batch_size": 2, "image_size": 64, "num_workers": 0,
                  "optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": {"name": "constant", "warmup_steps": 0},
                  **train},
        "augment": {"hflip": 0.0, "scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 0},
        "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
    }


def segmentation_spec(root: Path) -> dict:
    """Ten 48 px images of a square (class 1) and a disc (class 2) on background (class 0); LR-ASPP."""
    if not (root / "masks").is_dir():
        rng = np.random.default_rng(5)
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for number in range(10):
            mask = np.zeros((48, 48), np.uint8)
            x, y = rng.integers(0, 24, size=2)
            mask[y:y + 20, x:x + 20] = 1
            yy, xx = np.mgrid[:48, :48]
            cx, cy = rng.integers(10, 38, size=2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 2
            image = rng.integers(0, 60, size=(48, 48, 3)).astype(np.uint8)
            image[mask == 1] = (200, 60, 60)
            image[mask == 2] = (60, 200, 60)
            Image.fromarray(image).save(root / "images" / f"im{number}.png")
            Image.fromarray(mask).save(root / "masks" / f"im{number}.png")
    return {
        "task": "semantic_segmentation",
        "data": {
            "format": "masks",
            "root": str(root),
            "classes": ["background", "square", "disc"],
            "val_fraction": 0.2,
        },
        "model": {"name": "lraspp_mobilenet_v3_large"},
        "train": {
            "max_epochs": 100,
            "batch_size": 2,
            "image_size": 48,
            "num_workers": 0,
            "optimizer": {"name": "sgd", "lr": 0.02},
            "scheduler": {"name": "constant", "warmup_steps": 0},
        },
        "augment": {"hflip": 0.0, "scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 0},
        "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
    }


def tiny_config(root: Path, optimizer: dict | None = None, **train) -> Config:
    """A spec for ``TinyTask`` (SGD with momentum); its data and model sections only satisfy the schema."""
    optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001, **(optimizer or {})}
    return load_config(detection_spec(root, optimizer=optimizer, **train))


class TinyTask(pl.LightningModule):
    """Two convolutions with GroupNorm and a linear classifier over 32 fixed 8x8 images.

    No dropout and no batch statistics: splitting a batch across processes or
    micro-batches changes nothing but summation order. Nothing is shuffled
    (Lightning's own distributed sampler would shuffle), so process ``r`` of
    ``w`` sees samples ``r, r + w, ...``.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.net = tiny_net()

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images).float(), labels)

    def configure_optimizers(self):
        return configure_optimization(self, self.config)

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(*tiny_data())
        sampler = DistributedSampler(dataset, self.trainer.world_size, self.global_rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.config.train.batch_size, sampler=sampler)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 3, 8, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)


# ------------------------------------------------------------------ recording
class Recorder(pl.Callback):
    """What each training step ran: losses, dtypes of convolution outputs and their gradients, the loss scale,
    and whether the optimizer step changed the weights.

    Args:
        inject_at: steps whose gradients get an inf.
        skip_at: steps whose optimizer step is skipped as GradScaler skips it: every gradient dropped, so the
            optimizer leaves weights and state alone (an FP32 reference that skips where an FP16 run did).
    """

    def __init__(self, inject_at: tuple[int, ...] = (), skip_at: tuple[int, ...] = ()):
        self.inject_at = set(inject_at)
        self.skip_at = set(skip_at)
        self.losses: list[float] = []
        self.loss_dtypes: set[torch.dtype] = set()
        self.conv_outputs: set[torch.dtype] = set()
        self.conv_gradients: set[torch.dtype] = set()
        self.scales: list[tuple[float, float]] = []  # (before, after) each optimizer step
        self.changed: list[bool] = []  # did the step change any weight
        self.state_dtypes: set[torch.dtype] = set()
        self.parameter_dtypes: set[torch.dtype] = set()
        self._hooks = []
        self._before: list[torch.Tensor] = []

    def on_train_start(self, trainer, module) -> None:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                self._hooks.append(layer.register_forward_hook(self._forward))
                self._hooks.append(layer.register_full_backward_hook(self._backward))

    def _forward(self, layer, inputs, output) -> None:
        if layer.training:
            self.conv_outputs.add(output.dtype)

    def _backward(self, layer, grad_input, grad_output) -> None:
        self.conv_gradients.update(g.dtype for g in grad_output if g is not None)

    def on_after_backward(self, trainer, module) -> None:
        if trainer.global_step in self.inject_at:
            parameter = next(p for p in module.parameters() if p.grad is not None)
            parameter.grad.view(-1)[0] = math.inf

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self._before = [p.detach().clone() for p in module.parameters()]
        if trainer.global_step in self.skip_at:
            for parameter in module.parameters():
                parameter.grad = None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales.append((scaler.get_scale() if scaler else 1.0, math.nan))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.losses.append(outputs["loss"].item())
        self.loss_dtypes.add(outputs["loss"].dtype)
        self.changed.append(any(not torch.equal(b, p) for b, p in zip(self._before, module.parameters())))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales[-1] = (self.scales[-1][0], scaler.get_scale() if scaler else 1.0)
        self.parameter_dtypes.update(p.dtype for p in module.parameters())
        for state in trainer.optimizers[0].state.values():
            self.state_dtypes.update(v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point())

    def on_train_end(self, trainer, module) -> None:
        for hook in self._hooks:
            hook.remove()


def train(spec: dict, run_dir: Path, steps: int, *, amp: str = "off", accelerator: str = "cpu",
          inject_at: tuple[int, ...] = (), skip_at: tuple[int, ...] = ()) -> tuple[pl.Trainer, Recorder]:
    """``steps`` optimizer steps of the spec's real task through ``engine.build_trainer``, without validation."""
    config = load_config(copy.deepcopy(spec), {"trainer.amp": amp, "trainer.accelerator": ACCELERATORS[accelerator],
                                               "trainer.devices": 1})  # on a many-GPU machine too: no DDP in pytest
    pl.seed_everything(0, verbose=False)  # the same initial weights and batch order in every run
    index = build_index(config.data)
    task = TASKS[config.task](config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    recorder = Recorder(inject_at, skip_at)
    trainer = build_trainer(config, run_dir, callbacks=[recorder], logger=False, checkpoints=False, max_steps=steps,
                            limit_val_batches=0)
    trainer.fit(task, datamodule=DataModule(config, index))
    return trainer, recorder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process oversubscribe the cores, and
    FP16 CPU kernels then slow down 20-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skipped_steps(recorder: Recorder, steps: int) -> tuple[int, ...]:
    return tuple(step for step, changed in enumerate(recorder.changed[:steps]) if not changed)


def fp16_and_fp32(spec: dict, tmp: Path, accelerator: str, extra_steps: int = 0, inject_at: tuple[int, ...] = ()):
    """``STEPS`` (+ ``extra_steps``) under ``--amp fp16``, then ``STEPS`` in FP32 skipping the steps FP16 skipped.

    From random weights the scale starts too high (2**16) and GradScaler skips the first few steps while it
    settles (SSDlite here: six); an FP32 reference that took those steps would be a different trajectory.
    """
    fp16 = train(spec, tmp / "fp16", STEPS + extra_steps, amp="fp16", accelerator=accelerator, inject_at=inject_at)
    fp32 = train(spec, tmp / "fp32", STEPS, accelerator=accelerator, skip_at=skipped_steps(fp16[1], STEPS))
    return fp32, fp16


def assert_close_losses(reference: list[float], mixed: list[float]) -> None:
    """FP16 losses against FP32 ones, step by step.

    Step 0 runs on identical weights: only FP16's rounding of activations (11-bit mantissa) separates the
    losses (measured 1e-4 relative). From there rounding enters every gradient (measured at initialisation:
    10-16 % relative error in LR-ASPP's FP16 gradient on the CPU; SSD's anchor matching and hard-negative
    mining are discrete choices that flip on such differences), and the trajectories drift apart. Measured
    over 20 steps: SSDlite at most 8 %, 2 % on average; LR-ASPP at most 16 %, 6 % on average. The bounds,
    25 % per step and 10 % on average, leave room for other CPUs and thread counts; an unscaled gradient
    (2**9 to 2**16 too large), an FP16 loss sum or a missing skip blows far past them, into inf or NaN.
    """
    reference, mixed = np.array(reference), np.array(mixed)
    assert np.isfinite(mixed).all()
    difference = np.abs(mixed - reference) / reference
    assert difference[0] < 0.01
    assert difference.max() < 0.25 and difference.mean() < 0.10, difference.round(3)
    for losses in (reference, mixed):  # both learn: not two flat lines
        assert losses[-5:].mean() < 0.9 * losses[:5].mean()


@pytest.fixture(scope="module", params=["cpu", CUDA])
def detection_runs(request, tmp_path_factory):
    """SSDlite: 22 steps under FP16 (an inf injected into step 21's gradients), 20 in FP32."""
    tmp = tmp_path_factory.mktemp(f"det-{request.param}")
    return fp16_and_fp32(detection_spec(tmp / "shapes"), tmp, request.param, extra_steps=2, inject_at=(INJECT_AT,))


# ---------------------------------------------------------------- semantics
def test_fp16_step_runs_fp16_convolutions_and_keeps_fp32_loss_weights_and_optimizer_state(detection_runs):
    _, (trainer, recorder) = detection_runs
    assert recorder.conv_outputs == {torch.float16}
    assert recorder.conv_gradients == {torch.float16}  # backward through the convolutions is FP16 too
    assert recorder.loss_dtypes == {torch.float32}
    assert recorder.parameter_dtypes == {torch.float32}
    assert recorder.state_dtypes == {torch.float32}  # AdamW's moments
    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert sum(isinstance(c, LossScaleMonitor) for c in trainer.callbacks) == 1


def test_inf_gradient_skips_the_step_halves_the_scale_and_training_continues(detection_runs):
    _, (trainer, recorder) = detection_runs
    before, after = recorder.scales[INJECT_AT]
    assert after == before / 2
    assert not recorder.changed[INJECT_AT]  # the optimizer step was skipped: every weight is bit-identical
    assert recorder.changed[INJECT_AT + 1] and math.isfinite(recorder.losses[INJECT_AT + 1])
    assert trainer.global_step == STEPS + 2
    monitor = next(c for c in trainer.callbacks if isinstance(c, LossScaleMonitor))
    unchanged = [position for position, changed in enumerate(recorder.changed) if not changed]
    assert monitor.skipped == len(unchanged) and INJECT_AT in unchanged  # the monitor counts exactly the skips
    assert trainer.callback_metrics["amp/skipped_steps"] == monitor.skipped
    assert trainer.callback_metrics["amp/loss_scale"] == recorder.scales[-1][1]


def test_fp16_detection_losses_are_finite_and_close_to_fp32(detection_runs):
    (_, fp32), (_, fp16) = detection_runs
    assert_close_losses(fp32.losses, fp16.losses[:STEPS])


@pytest.mark.parametrize("accelerator", ["cpu", CUDA])
def test_fp16_segmentation_losses_are_finite_and_close_to_fp32(accelerator, tmp_path):
    (_, fp32), (trainer, fp16) = fp16_and_fp32(segmentation_spec(tmp_path / "masks"), tmp_path, accelerator)
    assert fp16.conv_outputs == {torch.float16} and fp16.loss_dtypes == {torch.float32}
    assert trainer.precision_plugin.scaler.is_enabled()
    assert_close_losses(fp32.losses, fp16.losses)


@pytest.mark.parametrize("accelerator", ["cpu", CUDA])
def test_bf16_runs_bf16_convolutions_without_a_scaler(accelerator, tmp_path):
    trainer, recorder = train(segmentation_spec(tmp_path / "masks"), tmp_path / "bf16", 2, amp="bf16",
                              accelerator=accelerator)
    assert recorder.conv_outputs == {torch.bfloat16}
    assert recorder.loss_dtypes == {torch.float32} and recorder.parameter_dtypes == {torch.float32}
    assert getattr(trainer.precision_plugin, "scaler", None) is None
    assert not any(isinstance(c, LossScaleMonitor) for c in trainer.callbacks)
    assert all(recorder.changed)


def test_amp_flag_chooses_fp16_on_cuda_and_bf16_on_cpu_with_a_notice(tmp_path, caplog):
    def config(**overrides):
        return load_config(detection_spec(tmp_path), overrides)

    assert precision_arguments(config(**{"trainer.amp": "auto", "trainer.accelerator": "gpu"})) == {
        "precision": "16-mixed"
    }
    with caplog.at_level(logging.WARNING, logger="cvtrain"):
        assert precision_arguments(config(**{"trainer.amp": "auto"})) == {"precision": "bf16-mixed"}
    notices = [r.getMessage() for r in caplog.records if r.name == "cvtrain"]
    assert len(notices) == 1 and "bf16" in notices[0] and "\n" not in notices[0]
    plugin = precision_arguments(config(**{"trainer.amp": "fp16"}))["plugins"][0]
    assert plugin.precision == "16-mixed" and plugin.device == "cpu" and plugin.scaler.is_enabled()
    assert precision_arguments(config(**{"trainer.amp": "bf16"})) == {"precision": "bf16-mixed"}
    assert precision_arguments(config(**{"trainer.amp": "off"})) == {"precision": "32-true"}


@pytest.mark.parametrize(("accelerator", "amp"), [("cpu", "fp16"), pytest.param("cuda", "auto", marks=CUDA.marks)])
def test_fit_with_fp16_logs_the_loss_scale_and_skipped_steps_to_tensorboard(accelerator, amp, tmp_path):
    """Through the public API: ``--amp fp16`` on the CPU, plain ``--amp`` (which is fp16 there) on CUDA."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = detection_spec(tmp_path / "shapes")
    result = cvtrain.fit(spec, run_dir=tmp_path / "run", amp=amp, accelerator=ACCELERATORS[accelerator], devices=1,
                         max_epochs=1)
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scales = [event.value for event in events.Scalars("amp/loss_scale")]
    skipped = [event.value for event in events.Scalars("amp/skipped_steps")]
    assert len(scales) == len(skipped) == 4  # one per optimizer step (8 images, batch 2)
    assert scales[0] <= 65536 and all(b <= a or b == 2 * a for a, b in zip(scales, scales[1:]))
    # Every fall of the scale is a skipped step, and nothing else is.
    assert skipped[-1] == (scales[0] < 65536) + sum(b < a for a, b in zip(scales, scales[1:]))
    assert "mAP" in result.metrics


@pytest.mark.parametrize(("max_bad_steps", "min_loss_scale", "warned_at"), [(3, 1e-3, 3), (100, 20000.0, 2)])
def test_collapsing_scale_warns_once_suggesting_bf16(tmp_path, caplog, max_bad_steps, min_loss_scale, warned_at):
    config = tiny_config(tmp_path, batch_size=4, max_steps=6)
    config.trainer.amp = "fp16"
    config.trainer.max_bad_steps = max_bad_steps
    config.trainer.min_loss_scale = min_loss_scale
    recorder = Recorder(inject_at=tuple(range(6)))
    warnings_by_step: list[int] = []

    class Watch(pl.Callback):
        # The monitor warns when the training log reads the step's values, after every other callback's
        # on_train_batch_end: count what the steps before warned at the start of the next one, and at the end.
        def on_train_batch_start(self, trainer, *_):
            if trainer.global_step:
                warnings_by_step.append(sum("collapsing" in r.getMessage() for r in caplog.records))

        def on_train_end(self, trainer, *_):
            warnings_by_step.append(sum("collapsing" in r.getMessage() for r in caplog.records))

    trainer = build_trainer(config, tmp_path / "run", callbacks=[recorder, Watch()], logger=False, checkpoints=False)
    with caplog.at_level(logging.WARNING, logger="cvtrain"):
        trainer.fit(TinyTask(config))
    assert [after for _, after in recorder.scales] == [65536.0 / 2 ** (n + 1) for n in range(6)]
    assert not any(recorder.changed)
    assert warnings_by_step == [0] * (warned_at - 1) + [1] * (6 - warned_at + 1)  # once, at the step it collapsed
    message = next(r.getMessage() for r in caplog.records if "collapsing" in r.getMessage())
    assert "--amp bf16" in message and "\n" not in message
    assert f"from step {warned_at};" in message


# ---------------------------------------------------------------- FP16 hazards
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_nms_and_roi_align_under_fp16_autocast_compute_in_fp32(device):
    """torchvision registers nms and roi_align with autocast to run in FP32; outputs equal FP32 on the same inputs."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(500, 2, generator=generator) * 700
    boxes = torch.cat([corners, corners + 20 + torch.rand(500, 2, generator=generator) * 100], 1).half().to(device)
    scores = torch.rand(500, generator=generator).half().to(device)
    classes = torch.randint(0, 5, (500,), generator=generator).to(device)
    features = torch.randn(2, 16, 100, 100, generator=generator).half().to(device)
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=generator).float(), torch.rand(50, 4, generator=generator)
                      .mul(400).sort(-1).values[:, [0, 2, 1, 3]]], 1).to(device)
    with torch.autocast(device, dtype=torch.float16):
        kept = nms(boxes, scores, 0.5)
        kept_per_class = batched_nms(boxes, scores, classes, 0.5)
        pooled = roi_align(features, rois, (7, 7), spatial_scale=0.125, sampling_ratio=2, aligned=True)
    assert torch.equal(kept, nms(boxes.float(), scores.float(), 0.5))
    assert torch.equal(kept_per_class, batched_nms(boxes.float(), scores.float(), classes, 0.5))
    reference = roi_align(features.float(), rois, (7, 7), spatial_scale=0.125, sampling_ratio=2, aligned=True)
    assert pooled.dtype == torch.float16  # handed back in the input's dtype, computed in FP32
    assert torch.equal(pooled, reference.half())


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_detection_and_segmentation_losses_stay_fp32_under_fp16_autocast(device):
    """Box regression (smooth L1, L1), classification and mask losses (cross-entropy, BCE) and the focal loss
    all come out FP32 under FP16 autocast, so a sum over 200k anchors does not overflow FP16's 65504."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(200_000, 4, generator=generator) * 8).half().to(device)
    targets = (torch.rand(200_000, 4, generator=generator) > 0.9).float().to(device)
    labels = torch.randint(0, 4, (200_000,), generator=generator).to(device)
    losses = {
        "focal": lambda x: sigmoid_focal_loss(x, targets, reduction="sum"),
        "smooth_l1": lambda x: F.smooth_l1_loss(x, targets * 5, beta=1 / 9, reduction="sum"),
        "l1": lambda x: F.l1_loss(x, targets * 5, reduction="sum"),
        "cross_entropy": lambda x: F.cross_entropy(x, labels, reduction="sum"),
        "mask_bce": lambda x: F.binary_cross_entropy_with_logits(x, targets, reduction="sum"),
    }
    for name, loss in losses.items():
        with torch.autocast(device, dtype=torch.float16):
            mixed = loss(logits)
        reference = loss(logits.float())
        assert mixed.dtype == torch.float32, name
        assert torch.isfinite(mixed) and reference > 65504, name  # beyond FP16's range, still finite
        assert mixed.item() == pytest.approx(reference.item(), rel=1e-3), name
