"""The callbacks ``fit`` adds to Lightning's loop.

- ``MetricsFile``: ``metrics.json`` kept current after every validation.
- ``RandomState``: the Python, NumPy and torch RNG states carried through checkpoints.
- ``DivergenceGuard``: stops at the first non-finite loss or gradient, before the
  optimizer applies it, and refuses to save non-finite weights.
- ``SkippedReport``: how many unreadable items ``data.on_unreadable: skip`` replaced.
- ``RunIdentity``: the run's id in every checkpoint; the run ``--overwrite`` replaced deleted once this one has a
  checkpoint.
- ``LossScaleMonitor``: FP16 loss scaling, watched. Under ``--amp fp16`` Lightning's
  ``MixedPrecision`` plugin runs forward and loss under FP16 autocast and keeps a
  dynamic ``GradScaler``: the loss is multiplied by the scale before backward, so
  that small gradients do not flush to zero in FP16; the gradients are unscaled
  into the FP32 master weights; when any of them is inf or NaN the optimizer step
  is skipped and the scale halved (and doubled again after 2000 clean steps). A
  few skipped steps at the start are normal, since the scale starts at 2**16 and
  settles. A scale that keeps falling means the model's own activations or
  gradients overflow FP16, which no scale can fix; bf16 has FP32's range and
  needs no scaler.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from cvtrain.atomic import write_json
from cvtrain.engine.checkpoints import RUN_ID_KEY, find_resume_checkpoint
from cvtrain.engine.rundir import SKIPPED_FILE, broadcast_run_dir, delete_replaced, has_checkpoint, replaced_runs
from cvtrain.errors import CheckpointError, DivergenceError

log = logging.getLogger("cvtrain")


class LastCheckpoint(Checkpoint):
    """Writes ``checkpoints/last.ckpt`` after every validation, at the end of every epoch and of training.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when its monitored checkpoint
    was saved at the same step, so after an epoch whose score did not improve ``last.ckpt`` stayed an epoch
    behind, and a resume repeated that epoch. This callback saves whenever training has moved on since its last
    save, whatever the score.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == self.saved_step:
            return
        if trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:  # noqa: D102
        self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:  # noqa: D102
        self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:  # noqa: D102
        self._save(trainer)



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
                log.warning(
                    f"FP16 loss scale is collapsing ({self.consecutive} consecutive skipped steps, scale {scale:g}, "
                    f"{self.skipped} of {self.steps} steps skipped): the model overflows FP16; train with "
                    "--amp bf16 (FP32's range, no scaler), or lower the learning rate"
                )

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


class MetricsFile(pl.Callback):
    """Keeps ``metrics.json`` current after every validation, so a killed run still has its numbers."""

    def __init__(self, path: Path):
        self.path = path
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.started = time.time()

    @property
    def run_dir(self) -> Path:
        """The run directory (rank 0's, once ``setup`` has run)."""
        return self.path.parent

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        # Every rank picked a run directory before the processes could talk; rank 0's is the run's.
        self.path = broadcast_run_dir(trainer, self.path.parent) / self.path.name

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints, so that a resumed run's metrics.json keeps the epochs before the interruption
        # (and the best of all of them), as they were when the checkpoint was written.
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = state_dict.get("best")

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = getattr(module, "last_metrics", {}) or {}
        if not metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics.get("scalars", {})}
        self.history.append(entry)
        key = module.monitor.split("/", 1)[1]
        if self.best is None or entry.get(key, float("-inf")) >= self.best.get(key, float("-inf")):
            self.best = {**entry, "per_class": metrics.get("per_class", {})}
        write_json(self.path, {
            "monitor": module.monitor,
            "best": self.best,
            "last": {**entry, "per_class": metrics.get("per_class", {})},
            "history": self.history,
            "elapsed_seconds": round(time.time() - self.started, 1),
        })


class RandomState(pl.Callback):
    """Saves the Python, NumPy and torch RNG states in checkpoints and restores them on resume.

    The states are put back just before the first training batch after loading,
    so nothing Lightning does while restoring draws from them in between.
    """

    key = "cvtrain_rng"

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        version, internal, gauss = random.getstate()
        name, keys, position, has_gauss, cached = np.random.get_state()
        checkpoint[self.key] = {
            "python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.pending = checkpoint.get(self.key)
        if self.pending is None:
            log.warning("checkpoint has no RNG states (written by an older cvtrain); the resumed run will differ")

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class DivergenceGuard(pl.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimizer step applies it.

    Under FP16 the loss scaler skips steps with inf/NaN gradients and lowers its
    scale; the run stops only when ``amp.LossScaleMonitor`` has counted
    ``trainer.max_bad_steps`` such steps in a row. The guard also refuses to save
    weights that are not finite, so the last checkpoint on disk is always a good one.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        if active_scaler(trainer) is None and not torch.isfinite(loss.detach()).all():
            self._stop(trainer, trainer.global_step + 1, f"loss is {loss.detach().float().item()}")

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        monitor = next((c for c in trainer.callbacks if isinstance(c, LossScaleMonitor)), None)
        if monitor is not None and monitor.consecutive >= monitor.max_bad_steps:
            self._stop(trainer, trainer.global_step,
                       f"the FP16 loss scaler skipped {monitor.consecutive} steps in a row for inf/NaN gradients "
                       f"(trainer.max_bad_steps={monitor.max_bad_steps}); --amp bf16 may help")

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        if active_scaler(trainer) is not None:
            return  # gradients may be inf here by design: the scaler skips this step
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads and not math.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf).item()):
            self._stop(trainer, trainer.global_step + 1, "gradients are not finite")

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, value in checkpoint["state_dict"].items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            others = " and others" if len(bad) > 1 else ""
            self._stop(trainer, trainer.global_step, f"weights are not finite ({bad[0]}{others}); not saving them")

    def _stop(self, trainer: pl.Trainer, step: int, what: str) -> None:
        """Raise ``DivergenceError`` for optimizer step ``step`` (1-based)."""
        try:
            last = f"the last good checkpoint is {find_resume_checkpoint(self.run_dir, quiet=True).path}"
        except CheckpointError:
            last = "no checkpoint was written before it"
        raise DivergenceError(
            f"training diverged at step {step} (epoch {trainer.current_epoch}): {what}",
            where=str(self.run_dir),
            hint=f"likely a learning rate too high (train.optimizer.lr, scheduler warmup) or bad labels "
                 f"(run 'cvtrain check'); {last}; fix the cause, then resume with --resume or start again")


class SkippedReport(pl.Callback):
    """Says at the end of training how many unreadable items ``data.on_unreadable: skip`` replaced."""

    def __init__(self, record: Path):
        self.record = record

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.record.is_file():
            count = sum(1 for _ in self.record.open(encoding="utf-8"))
            log.warning(f"{count} unreadable item(s) were skipped during training; see {self.record}")


class RunIdentity(pl.Callback):
    """Stamps every checkpoint with the run's id (``run.json``'s ``run_id``), so that ``--resume`` never takes one
    another run wrote, and deletes the run ``--overwrite`` moved aside once this run has a checkpoint."""

    def __init__(self, run_dir: Path, run_id: str | None):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.replaced = bool(replaced_runs(self.run_dir))

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_ID_KEY] = self.run_id

    def _tidy(self, trainer: pl.Trainer) -> None:
        if self.replaced and trainer.is_global_zero and has_checkpoint(self.run_dir):
            self.replaced = False
            for aside in delete_replaced(self.run_dir):
                log.info(f"deleted {aside}: the run --overwrite replaced (this run has its first checkpoint)")

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._tidy(trainer)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._tidy(trainer)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self._tidy(trainer)


def fit_callbacks(config: Any, run_dir: Path, run_id: str | None = None) -> list[pl.Callback]:
    """The callbacks ``fit`` adds besides ``MetricsFile``: the run's id in checkpoints, RNG state in checkpoints, the
    divergence guard, the skipped-items note."""
    callbacks: list[pl.Callback] = [RunIdentity(run_dir, run_id), RandomState(), DivergenceGuard(run_dir)]
    if config.data.on_unreadable == "skip":
        callbacks.append(SkippedReport(run_dir / SKIPPED_FILE))
    return callbacks
