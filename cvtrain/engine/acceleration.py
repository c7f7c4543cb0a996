"""Speed settings decided from the spec and the device when a run starts: channels-last memory order,
``torch.compile``, ``cudnn.benchmark``; and the line that says which are on.

- ``train.channels_last`` (``auto``): the model's convolution weights, and a segmentation batch, in NHWC order,
  which tensor cores read without transposing. ``auto`` turns it on on CUDA under ``--amp`` for the semantic
  segmentation models, plain convolution stacks at a fixed size; detectors stay in NCHW until a GPU measures
  them faster (their RoI and box operations are not all channels-last kernels).
- ``train.compile``: ``torch.compile`` on the model, in place (``nn.Module.compile``, so checkpoints keep their
  keys); the spec refuses it for detection models, whose data-dependent shapes defeat it.
- ``cudnn.benchmark``: cuDNN tries its algorithms once per input shape and keeps the fastest. That pays when the
  shape never changes (semantic segmentation on ``train.image_size`` crops, which scale jitter produces) and
  costs a trial per new shape otherwise (detection resizes each image to its own size). It is on for training
  in the first case only, and off during validation, whose images keep their aspect ratios.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from cvtrain.config import Config


def fixed_input_size(config: Config) -> bool:
    """Whether training batches all have one shape: semantic segmentation with scale jitter, which crops or pads
    every image to ``train.image_size`` squared."""
    return config.task == "semantic_segmentation" and tuple(config.augment.scale) != (1.0, 1.0)


def use_channels_last(setting: bool | str, device_type: str, mixed_precision: bool, task: str) -> bool:
    """``train.channels_last`` resolved: ``auto`` is on for CUDA under AMP for semantic segmentation models."""
    if setting != "auto":
        return bool(setting)
    return device_type == "cuda" and mixed_precision and task == "semantic_segmentation"


class Acceleration(pl.Callback):
    """Applies ``train.channels_last``, ``train.compile`` and ``cudnn.benchmark`` to a run, and prints them with
    the data loader's workers when training starts."""

    def __init__(self, config: Config):
        self.config = config
        self.channels_last = False
        self.compiled = False
        self.benchmark = False
        self._benchmark_before: bool | None = None

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        model = getattr(module, "model", None)
        if model is None:
            return
        device = trainer.strategy.root_device
        mixed = str(trainer.precision) in ("16-mixed", "bf16-mixed")
        self.channels_last = use_channels_last(self.config.train.channels_last, device.type, mixed, self.config.task)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            module.channels_last = True  # the task lays its input batch out to match
        if self.config.train.compile and stage == "fit" and not self.compiled:
            model.compile()
            self.compiled = True
        self.benchmark = device.type == "cuda" and fixed_input_size(self.config) and not self.config.train.deterministic

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._benchmark_before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.benchmark
        if trainer.is_global_zero:
            describe = getattr(trainer.datamodule, "describe_workers", None)
            if describe is not None:
                print(describe())
            size = self.config.train.image_size
            benchmark = f"on (fixed {size} x {size} crops)" if self.benchmark else "off"
            print(f"speed: channels_last {'on' if self.channels_last else 'off'}, "
                  f"torch.compile {'on' if self.compiled else 'off'}, cudnn.benchmark {benchmark}")

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.benchmark:
            torch.backends.cudnn.benchmark = False

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.benchmark and trainer.training:
            torch.backends.cudnn.benchmark = True

    def teardown(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        if self._benchmark_before is not None:
            torch.backends.cudnn.benchmark = self._benchmark_before
            self._benchmark_before = None
