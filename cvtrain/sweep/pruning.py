"""Pruning on the per-epoch validation metric, as optuna-integration's ``PyTorchLightningPruningCallback`` does it.

After each validation (never the sanity check), rank 0 reports the metric to the trial with the epoch as
the step and asks the pruner; the answer is broadcast so every DDP rank stops together. Where that callback
raises ``TrialPruned`` inside ``Trainer.fit``, this one stops the trainer the way ``EarlyStopping`` does: the
epoch's checkpoint and ``metrics.json`` are written as in any run, and the sweep marks the trial pruned once
``fit`` has returned. (optuna-integration is not a dependency for these few lines.)
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl


class PruningCallback(pl.Callback):
    """Reports ``metric`` to an Optuna trial after every validation and stops the run when the pruner says so.

    Args:
        trial: the ``optuna.Trial`` (None on DDP ranks other than 0, which only follow rank 0's decision).
        metric: a validation scalar of the task (``mAP``, ``AP50``, ``mIoU``...).
    """

    def __init__(self, trial: Any, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_epoch: int | None = None
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            value = (getattr(module, "last_metrics", {}) or {}).get("scalars", {}).get(self.metric)
            if value is not None and math.isfinite(value) and value >= 0:  # pycocotools' -1 is "no such objects"
                epoch = trainer.current_epoch
                self.trial.report(float(value), step=epoch)
                self.reported[epoch] = float(value)
                prune = self.trial.should_prune()
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True
