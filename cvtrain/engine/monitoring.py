"""What training reports, read from the device once per logging step instead of once per value per step.

A GPU runs ahead of the Python that feeds it; every ``.item()``, ``float(tensor)`` or ``if tensor:`` on a CUDA
tensor makes the CPU wait until the GPU has caught up, and the GPU then idles while the CPU prepares the next
step. Lightning's ``self.log`` reads each logged tensor with its own ``.item()`` whenever the logger writes or
the progress bar redraws (every step). Here nothing is read on ordinary steps:

- the task keeps its step's losses on the device (``tasks.common.keep_step_losses``);
- callbacks keep what they watch on the device too (``engine.callbacks.LossScaleMonitor``: the loss scale and
  skipped steps; ``engine.callbacks.DivergenceGuard``: the first non-finite step), offering it through
  ``device_scalars(trainer, module) -> {name: 0-dim tensor}`` and taking the values back in
  ``on_host_scalars(trainer, module, {name: float})``, where they may warn or stop the run;
- ``TrainingLog``, on the steps that log (every ``trainer.log_every_n_steps`` optimizer steps, as Lightning),
  stacks all of them into one tensor and copies it to the host: one wait for the device per logging step. It
  writes them to the loggers (names starting with ``_`` are private to their callback), into
  ``trainer.callback_metrics``, and keeps them for the progress bar; with them the mean step time and the share
  of it spent waiting for the data loader (``time/step_seconds``, ``time/data_wait_share``), which
  ``LoaderClock``, a Lightning profiler that times only the training loader's ``next``, measures.
"""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import Profiler

HOST_COPY = "cvtrain::device_to_host"  # the profiler's name for the one transfer of a logging step
FETCH = "train_dataloader_next"  # Lightning's profiler action around the training loader's next()


class LoaderClock(Profiler):
    """A Lightning profiler that only adds up the seconds spent waiting for the next training batch.

    Lightning wraps each fetch from the training loader in ``profiler.start/stop(
    "[_TrainingEpochLoop].train_dataloader_next")``; every other action costs one string comparison.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wait_seconds = 0.0
        self._started: float | None = None

    def start(self, action_name: str) -> None:
        if action_name.endswith(FETCH):
            self._started = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if self._started is not None and action_name.endswith(FETCH):
            self.wait_seconds += time.perf_counter() - self._started
            self._started = None


def loader_wait(trainer: pl.Trainer) -> float:
    """Seconds waited for training batches so far (0 without a ``LoaderClock``)."""
    return getattr(trainer.profiler, "wait_seconds", 0.0)


def logs_now(trainer: pl.Trainer) -> bool:
    """Whether the optimizer step just taken is one that logs: as Lightning decides it for ``self.log``."""
    return trainer.global_step % trainer.log_every_n_steps == 0 or trainer.should_stop or bool(trainer.fast_dev_run)


def read_to_host(sources: list[tuple[Any, dict[str, torch.Tensor]]]) -> list[tuple[Any, dict[str, float]]]:
    """The values of every ``(owner, {name: 0-dim tensor})`` source, copied to the host in one transfer."""
    tensors = [value.detach().reshape(()).float() for _, scalars in sources for value in scalars.values()]
    if not tensors:
        return [(owner, {}) for owner, _ in sources]
    device = tensors[0].device
    with torch.profiler.record_function(HOST_COPY):
        flat = iter(torch.stack([t.to(device) for t in tensors]).cpu().tolist())
    return [(owner, {name: next(flat) for name in scalars}) for owner, scalars in sources]


def device_sources(trainer: pl.Trainer, module: pl.LightningModule) -> list[tuple[Any, dict[str, torch.Tensor]]]:
    """The step's losses (owner ``None``) and what each callback with ``device_scalars`` offers."""
    sources: list[tuple[Any, dict[str, torch.Tensor]]] = [(None, dict(getattr(module, "step_losses", None) or {}))]
    for callback in trainer.callbacks:
        offer = getattr(callback, "device_scalars", None)
        if offer is not None:
            sources.append((callback, offer(trainer, module)))
    return sources


def hand_back(trainer: pl.Trainer, module: pl.LightningModule, values: list[tuple[Any, dict[str, float]]]) -> None:
    """Give each callback its values (``on_host_scalars``); a callback may warn or raise there."""
    for owner, scalars in values:
        if owner is not None:
            owner.on_host_scalars(trainer, module, scalars)


class TrainingLog(pl.Callback):
    """Logs the step's losses, the callbacks' device values and the step timing, in one transfer per logging step.

    Attributes:
        values: the last values read (what the progress bar shows ``train/loss`` from).
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self._last_step: int | None = None
        self._window: tuple[float, float, int] = (0.0, 0.0, 0)  # (start time, loader wait then, steps since)

    def _restart_window(self, trainer: pl.Trainer) -> None:
        self._window = (time.perf_counter(), loader_wait(trainer), 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        self._restart_window(trainer)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._restart_window(trainer)  # validation time is not step time

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_index: int) -> None:
        if trainer.global_step == self._last_step:
            return  # accumulating gradients: no optimizer step in this batch
        self._last_step = trainer.global_step
        started, waited, steps = self._window
        self._window = (started, waited, steps + 1)
        if logs_now(trainer):
            self.flush(trainer, module)

    def flush(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Read everything in one transfer, log it, hand the callbacks their values."""
        values = read_to_host(device_sources(trainer, module))
        metrics = {name: value for _, scalars in values for name, value in scalars.items() if not name.startswith("_")}
        started, waited, steps = self._window
        elapsed = time.perf_counter() - started
        if steps and elapsed > 0:
            metrics["time/step_seconds"] = elapsed / steps
            metrics["time/data_wait_share"] = (loader_wait(trainer) - waited) / elapsed
        self._restart_window(trainer)
        self.values = metrics
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        if trainer.loggers and metrics:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step axis of Lightning's own train logs
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        hand_back(trainer, module, values)
