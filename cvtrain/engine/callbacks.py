"""The callbacks ``fit`` adds to Lightning's loop.

- ``MetricsFile``: ``metrics.json`` kept current after every validation.
- ``RandomState``: the Python, NumPy and torch RNG states carried through checkpoints.
- ``DivergenceGuard``: a non-finite loss or gradient never reaches the weights (the
  fused optimizer step skips it on the device); the run stops naming the first such
  step when the device state is next read, and non-finite weights are never saved.
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
from cvtrain.engine.monitoring import read_to_host
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


def scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The scaler's current scale as the device tensor it keeps (``get_scale()`` would wait for the GPU)."""
    return scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else scaler._scale


class LossScaleMonitor(pl.Callback):
    """Logs ``amp/loss_scale`` and ``amp/skipped_steps``; warns once when the scale collapses.

    A step counts as skipped when the scale went down across it: ``GradScaler``
    lowers the scale exactly when it found inf/NaN gradients and skipped the step.
    The counts are kept on the device, step by step, and read with the other logged
    values on the steps that log (``engine.monitoring.TrainingLog``); the warning and
    the step named in it come from them, so they are exact even when read later.

    Args:
        max_bad_steps: warn after this many consecutive skipped steps.
        min_loss_scale: warn when the scale falls below this.

    Attributes:
        skipped, consecutive, scale: as of the last read (the end of training at the latest).
        collapsed_at: the first step after which ``max_bad_steps`` steps in a row had been skipped (0: none).
    """

    def __init__(self, max_bad_steps: int = 10, min_loss_scale: float = 1.0):
        self.max_bad_steps = max_bad_steps
        self.min_loss_scale = min_loss_scale
        self.steps = 0
        self.skipped = 0
        self.consecutive = 0
        self.scale = float("nan")
        self.collapsed_at = 0
        self.warned = False
        self._before: torch.Tensor | None = None
        # on the device: skipped steps, consecutive skipped, step of the collapse, step the scale fell too low, scale
        self._counts: torch.Tensor | None = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        scaler = active_scaler(trainer)
        # Called before scaler.step/update, so the scale is still this step's.
        self._before = scale_tensor(scaler).detach().clone() if scaler is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_index: int) -> None:
        scaler = active_scaler(trainer)
        if scaler is None or self._before is None:
            return  # no optimizer step in this batch (gradient accumulation), or no scaler
        scale = scale_tensor(scaler).detach().float().reshape(())
        before, self._before = self._before.float().reshape(()), None
        if self._counts is None:
            self._counts = torch.zeros(5, device=scale.device)
            self._counts[0] = self.skipped  # carried over by a resumed run (state_dict), once
            self._counts[1] = self.consecutive
        self.steps += 1
        step = trainer.global_step
        skipped, consecutive, collapsed_at, low_at, _ = self._counts.unbind()
        now_skipped = (scale < before).float()
        consecutive = (consecutive + 1) * now_skipped
        collapsed_at = torch.where((collapsed_at == 0) & (consecutive >= self.max_bad_steps), step, collapsed_at)
        low_at = torch.where((low_at == 0) & (scale < self.min_loss_scale), step, low_at)
        self._counts = torch.stack([skipped + now_skipped, consecutive, collapsed_at, low_at, scale])

    def device_scalars(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, torch.Tensor]:
        if self._counts is None:
            return {}
        skipped, consecutive, collapsed_at, low_at, scale = self._counts.unbind()
        return {"amp/loss_scale": scale, "amp/skipped_steps": skipped, "_consecutive": consecutive,
                "_collapsed_at": collapsed_at, "_low_at": low_at}

    def on_host_scalars(self, trainer: pl.Trainer, module: pl.LightningModule, values: dict[str, float]) -> None:
        if not values:
            return
        self.skipped, self.consecutive = int(values["amp/skipped_steps"]), int(values["_consecutive"])
        self.scale, self.collapsed_at = values["amp/loss_scale"], int(values["_collapsed_at"])
        first = min((int(values[key]) for key in ("_collapsed_at", "_low_at") if values[key]), default=0)
        if first and not self.warned:
            self.warned = True
            if trainer.is_global_zero:
                log.warning(
                    f"FP16 loss scale is collapsing (from step {first}; now {self.consecutive} consecutive skipped "
                    f"steps, scale {self.scale:g}, {self.skipped} of {self.steps} steps skipped): the model "
                    "overflows FP16; train with --amp bf16 (FP32's range, no scaler), or lower the learning rate"
                )

    def read(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Bring the device counts to the host now (one transfer)."""
        for _, values in read_to_host([(self, self.device_scalars(trainer, module))]):
            self.on_host_scalars(trainer, module, values)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if active_scaler(trainer) is None or not self.steps:
            return
        self.read(trainer, module)
        if trainer.is_global_zero:
            log.info(f"FP16: {self.skipped} of {self.steps} optimizer steps skipped for inf/NaN gradients; "
                     f"final loss scale {self.scale:g}")

    def state_dict(self) -> dict[str, Any]:
        if self._counts is not None:
            self.skipped, self.consecutive = (int(v) for v in self._counts[:2].tolist())  # checkpoints are rare
        return {"steps": self.steps, "skipped": self.skipped, "consecutive": self.consecutive, "warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict["steps"]
        self.skipped = state_dict["skipped"]
        self.consecutive = state_dict["consecutive"]
        self.warned = state_dict["warned"]
        self._counts = None


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
    """Never lets a non-finite loss or gradient reach the weights, and stops the run naming the step it came at.

    With a fused optimizer (cvtrain's, wherever the device has fused kernels) nothing here waits for the GPU on
    ordinary steps. Before each optimizer step the loss and the gradients' largest magnitude are checked on the
    device, and the result goes to the optimizer as ``found_inf``, as ``GradScaler`` hands it over, so a bad
    step is skipped on the device: weights and optimizer state stay as they were. The first bad step (its
    number, what was not finite, the loss) is kept on the device and read with the logged values on the next
    step that logs (``trainer.log_every_n_steps``), before validation, before any checkpoint is written and at
    the end of training; the run stops there with ``DivergenceError`` naming that step. No checkpoint is written
    after a bad step, so the newest one on disk is from before it. Without a fused optimizer the loss and the
    gradients are read on every step and the run stops at once.

    Under FP16 the loss scaler skips steps with inf/NaN gradients and lowers its scale; the run stops when
    ``LossScaleMonitor`` has counted ``trainer.max_bad_steps`` such steps in a row. The guard also refuses to
    save weights that are not finite.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._loss_bad: torch.Tensor | None = None  # any non-finite loss since the last optimizer step
        self._loss: torch.Tensor | None = None
        self._first: torch.Tensor | None = None  # on the device: [first bad step (0: none), 1 loss / 2 gradients, loss]
        self._handed: torch.optim.Optimizer | None = None  # the optimizer holding our found_inf

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        if active_scaler(trainer) is not None:
            return
        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        self._loss = loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer) -> None:
        if active_scaler(trainer) is not None:
            return  # gradients may be inf here by design: the scaler skips this step
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper, if any
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss_bad, loss, self._loss_bad, self._loss = self._loss_bad, self._loss, None, None
        if not optimizer.defaults.get("fused"):
            if loss_bad is not None and bool(loss_bad):
                self._stop(trainer, trainer.global_step + 1, f"loss is {float(loss)}")
            if grads and not math.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf).item()):
                self._stop(trainer, trainer.global_step + 1, "gradients are not finite")
            return
        device = grads[0].device if grads else module.device
        largest = torch.nn.utils.get_total_norm(grads, norm_type=math.inf) if grads else torch.zeros((), device=device)
        grads_bad = ~torch.isfinite(largest.float())
        loss_bad = loss_bad if loss_bad is not None else torch.zeros((), dtype=torch.bool, device=device)
        loss = loss if loss is not None else torch.zeros((), device=device)
        bad = loss_bad | grads_bad
        optimizer.found_inf = bad.float()  # the fused step skips its update when this is 1
        self._handed = optimizer
        if self._first is None:
            self._first = torch.zeros(3, device=device)
        first_step, what, first_loss = self._first.unbind()
        new = bad & (first_step == 0)
        self._first = torch.stack([torch.where(new, trainer.global_step + 1, first_step),
                                   torch.where(new, torch.where(loss_bad, 1.0, 2.0), what),
                                   torch.where(new, loss, first_loss)])

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._handed is not None:  # as GradScaler does after its step
            del self._handed.found_inf
            self._handed = None

    # ------------------------------------------------ reading the device state
    def device_scalars(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, torch.Tensor]:
        if self._first is None:
            return {}
        first_step, what, loss = self._first.unbind()
        return {"_diverged_at": first_step, "_diverged_what": what, "_diverged_loss": loss}

    def on_host_scalars(self, trainer: pl.Trainer, module: pl.LightningModule, values: dict[str, float]) -> None:
        if values.get("_diverged_at"):
            loss_bad = values["_diverged_what"] == 1
            what = f"loss is {values['_diverged_loss']}" if loss_bad else "gradients are not finite"
            self._stop(trainer, int(values["_diverged_at"]), what)
        monitor = next((c for c in trainer.callbacks if isinstance(c, LossScaleMonitor)), None)
        if monitor is not None and monitor.collapsed_at:
            self._stop(trainer, monitor.collapsed_at,
                       f"the FP16 loss scaler skipped {monitor.max_bad_steps} steps in a row for inf/NaN gradients "
                       f"(trainer.max_bad_steps={monitor.max_bad_steps}); --amp bf16 may help")

    def check(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Read the device state now and stop if a step went bad (a wait for the GPU: at epoch ends and
        checkpoints only)."""
        monitor = next((c for c in trainer.callbacks if isinstance(c, LossScaleMonitor)), None)
        if monitor is not None:
            monitor.read(trainer, module)
        for _, values in read_to_host([(self, self.device_scalars(trainer, module))]):
            self.on_host_scalars(trainer, module, values)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.check(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.check(trainer, module)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.check(trainer, module)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer, module)
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
