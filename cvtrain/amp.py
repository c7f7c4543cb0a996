"""FP16 loss scaling, watched: the scale and the skipped steps are logged, a collapsing scale is a warning.

Under ``--amp fp16`` Lightning's ``MixedPrecision`` plugin runs forward and loss
under FP16 autocast and keeps a dynamic ``GradScaler``: the loss is multiplied by
the scale before backward, so that small gradients do not flush to zero in FP16;
the gradients are unscaled into the FP32 master weights; when any of them is inf
or NaN the optimizer step is skipped and the scale halved (and doubled again
after 2000 clean steps). A few skipped steps at the start are normal, since the
scale starts at 2**16 and settles. A scale that keeps falling means the model's
own activations or gradients overflow FP16, which no scale can fix; bf16 has
FP32's range and needs no scaler.

``LossScaleMonitor`` is added by ``engine.build_trainer`` whenever the trainer's
precision plugin holds a scaler.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("cvtrain")


def active_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The trainer's enabled ``GradScaler``, or ``None`` (FP32, bf16)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


class LossScaleMonitor(pl.Callback):
    """Logs ``amp/loss_scale`` and ``amp/skipped_steps`` each optimizer step; warns once when the scale collapses.

    A step counts as skipped when the scale went down across it: ``GradScaler``
    lowers the scale exactly when it found inf/NaN gradients and skipped the step.

    Args:
        max_bad_steps: warn after this many consecutive skipped steps.
        min_loss_scale: warn when the scale falls below this.
    """

    def __init__(self, max_bad_steps: int = 10, min_loss_scale: float = 1.0):
        self.max_bad_steps = max_bad_steps
        self.min_loss_scale = min_loss_scale
        self.steps = 0
        self.skipped = 0
        self.consecutive = 0
        self.warned = False
        self._scale_before: float | None = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        scaler = active_scaler(trainer)
        # Called after unscaling and before scaler.step/update, so the scale is still this step's.
        self._scale_before = scaler.get_scale() if scaler is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_index: int) -> None:
        scaler = active_scaler(trainer)
        if scaler is None or self._scale_before is None:
            return  # no optimizer step in this batch (gradient accumulation), or no scaler
        scale = scaler.get_scale()
        skipped = scale < self._scale_before
        self._scale_before = None
        self.steps += 1
        self.skipped += skipped
        self.consecutive = self.consecutive + 1 if skipped else 0
        module.log("amp/loss_scale", scale, on_step=True, on_epoch=False)
        module.log("amp/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
        collapsing = self.consecutive >= self.max_bad_steps or scale < self.min_loss_scale
        if collapsing and not self.warned:
            self.warned = True
            if trainer.is_global_zero:
                log.warning(f"FP16 loss scale is collapsing ({self.consecutive} consecutive skipped steps, scale {scale:g}, "
                            f"{self.skipped} of {self.steps} steps skipped): the model overflows FP16; train with "
                            "--amp bf16 (FP32's range, no scaler), or lower the learning rate")

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        scaler = active_scaler(trainer)
        if scaler is not None and trainer.is_global_zero and self.steps:
            log.info(f"FP16: {self.skipped} of {self.steps} optimizer steps skipped for inf/NaN gradients; "
                     f"final loss scale {scaler.get_scale():g}")

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "skipped": self.skipped, "consecutive": self.consecutive, "warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict["steps"]
        self.skipped = state_dict["skipped"]
        self.consecutive = state_dict["consecutive"]
        self.warned = state_dict["warned"]
