"""Surviving what goes wrong in a long run: kills, divergence and files that vanish.

- **Resume**: ``find_resume_checkpoint`` picks the newest checkpoint of a run
  directory that loads safely (``weights_only=True``) and holds a whole training
  state; corrupt and partial ones are reported and skipped.
- **Same batches after a resume**: the training order and every image's
  augmentation are functions of ``(train.seed, epoch)`` (``EpochSampler``,
  ``SeededItems``), the data module saves how far into the epoch training got,
  and ``RandomState`` carries the global RNGs across, so a resumed run ends with
  the weights an uninterrupted one would have.
- **Divergence**: ``DivergenceGuard`` stops at the first non-finite loss or
  gradient in full precision, before the optimizer applies it, and refuses to
  write a checkpoint whose weights are not finite.
- **Unreadable data**: with ``data.on_unreadable: skip`` an image or mask that
  vanished or broke during training is replaced by the next one and recorded
  in ``<run>/skipped.jsonl``; with ``stop`` (the default) the run ends naming it.
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, DistributedSampler

from cvtrain.amp import LossScaleMonitor, active_scaler
from cvtrain.errors import CheckpointError, CvtrainError, DataError

log = logging.getLogger("cvtrain")

# What a checkpoint must hold for training to continue from it (Lightning's keys plus ours).
RESUME_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step",
               "hyper_parameters")
# Among checkpoints of the same step, the one written last holds the most state (validation ran before last.ckpt).
_PREFERENCE = {"last.ckpt": 2, "best.ckpt": 0}
STEP_CHECKPOINT = "step-{step:08d}"  # periodic checkpoints: step-00001200.ckpt
SKIPPED_FILE = "skipped.jsonl"


class DivergenceError(CvtrainError):
    """Training produced a non-finite loss, gradient or weight."""

    exit_code = 3


# --------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that can be resumed from."""

    path: Path
    epoch: int
    global_step: int
    hyper_parameters: dict[str, Any]


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Load ``path`` without executing anything in it and check it holds a whole training state.

    Raises:
        CheckpointError: the file is truncated, holds code or another pickle, or lacks training state.
    """
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=str(path),
                              hint="give a .ckpt from <run>/checkpoints/, or --resume auto")
    if path.stat().st_size == 0:
        raise CheckpointError("checkpoint file is empty (0 bytes)", where=str(path), hint="it was never written; use another")
    try:
        # mmap: the tensors are not read, yet a truncated file fails (its zip directory is at the end).
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, foreign pickles, code: all refused, nothing in them runs
        raise CheckpointError(f"cannot load checkpoint safely: {load_failure(error)}", where=str(path),
                              hint="use a checkpoint written by 'cvtrain fit'; checkpoints never run code here") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"holds a {type(payload).__name__}, not a checkpoint", where=str(path))
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing or "config" not in payload["hyper_parameters"]:
        raise CheckpointError(f"no training state to resume (missing {', '.join(missing) or 'hyper_parameters.config'})",
                              where=str(path), hint="resume from a checkpoint written by 'cvtrain fit'")
    return CheckpointInfo(path, int(payload["epoch"]), int(payload["global_step"]), dict(payload["hyper_parameters"]))


def load_failure(error: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words instead of torch's paragraphs."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].split(". ")[0]
        if "Unsupported global" in detail:  # a pickle naming a function or class: code would run on load
            return f"it holds objects that would run code when unpickled ({detail})"
        return f"not a torch checkpoint (unreadable pickle: {detail})"
    if "failed finding central directory" in text:
        return "the file is truncated or corrupt (its zip directory is missing)"
    if "_use_new_zipfile_serialization" in text or "Invalid magic number" in text:
        return "not a torch checkpoint (no zip archive)"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return re.sub(r"\x1b\[[0-9;]*m", "", first)[:160]


def find_resume_checkpoint(run_dir: Path, *, quiet: bool = False) -> CheckpointInfo:
    """The newest checkpoint of ``run_dir`` that is whole: most training steps first, then last, periodic, best.

    Corrupt or partial checkpoints are reported and skipped; temporary files left
    by a write that was killed are removed.

    Raises:
        CheckpointError: no checkpoint in the run directory can be resumed from.
    """
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise CheckpointError("nothing to resume: no checkpoints folder", where=str(run_dir),
                              hint="give --run-dir of an earlier run, or a checkpoint path to --resume")
    for partial in folder.glob(".*.ckpt.tmp-*"):
        partial.unlink(missing_ok=True)
        if not quiet:
            log.warning(f"removed {partial.name}: a checkpoint write that never finished")
    found: list[CheckpointInfo] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.ckpt")):
        try:
            found.append(inspect_checkpoint(path))
        except CheckpointError as error:
            problems.append(error.message)
            if not quiet:
                log.warning(f"skipping {error.one_line()}")
    if not found:
        detail = f" ({len(problems)} unusable: {problems[0]})" if problems else ""
        raise CheckpointError(f"nothing to resume: no valid checkpoint{detail}", where=str(folder),
                              hint="start a new run, or give a checkpoint path to --resume")
    return max(found, key=lambda info: (info.global_step, _PREFERENCE.get(info.path.name, 1), info.path.name))


def check_checkpoint_fits(hyper_parameters: dict[str, Any], task: str, index_task: str, class_names: list[str],
                          path: Path) -> None:
    """Refuse a checkpoint trained for another task or other classes than the dataset at hand."""
    trained_task = hyper_parameters.get("config", {}).get("task", "detection")
    if trained_task != task:
        raise CheckpointError(f"checkpoint is a {trained_task} model but the spec's task is {task}", where=str(path),
                              hint="use a checkpoint trained for this task")
    if (trained_task == "semantic_segmentation") != (index_task == "semantic_segmentation"):
        raise CheckpointError(f"checkpoint is a {trained_task} model but the dataset is {index_task} data",
                              where=str(path), hint="use a dataset of the kind the checkpoint was trained on")
    trained = list(hyper_parameters.get("class_names", []))
    if trained != list(class_names):
        raise CheckpointError(f"checkpoint was trained on classes {trained} but the dataset has {list(class_names)}",
                              where=str(path), hint="use the dataset it was trained on, or train a new model")


# ---------------------------------------------------------------- data order
def mix_seed(*numbers: int) -> int:
    """A well-spread 63-bit seed from integers, so (seed, epoch, ...) tuples give unrelated streams."""
    return int(np.random.SeedSequence([n % 2**64 for n in numbers]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler(DistributedSampler):
    """Shuffled positions paired with per-item augmentation seeds, both a function of ``(seed, epoch)``.

    Yields ``(position, item_seed)`` for ``SeededItems``. It is a
    ``DistributedSampler`` so Lightning keeps it under DDP (each rank takes its
    share of the same permutation). After a resume mid-epoch, the first epoch
    starts where the checkpoint left off instead of at its first batch.
    """

    def __init__(self, dataset: Dataset, *, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 resume: dict[str, int] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.resume = dict(resume) if resume else None
        if self.resume:
            self.epoch = self.resume["epoch"]
        # DataLoader workers are seeded from this generator: per epoch, not per process history.
        self.generator = torch.Generator().manual_seed(mix_seed(seed, self.epoch, 1))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(mix_seed(self.seed, epoch, 1))

    def __iter__(self):
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()
        pairs = list(zip(order, seeds))
        pairs += pairs[: self.total_size - count]  # pad as DistributedSampler does, so ranks get equal shares
        mine = pairs[self.rank: self.total_size: self.num_replicas]
        start = 0
        if self.resume is not None:
            if self.resume["epoch"] == self.epoch:
                start = self.resume["skip"]
            self.resume = None
        return iter(mine[start:])

    def progress(self, trainer: pl.Trainer) -> dict[str, int]:
        """Which epoch's order is in use and how many of its items training has consumed (the ``resume`` argument)."""
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return {"epoch": self.epoch + 1, "skip": 0}
        return {"epoch": self.epoch, "skip": done * self.batch_size}


class SeededItems(Dataset):
    """Items fetched by ``(position, seed)``: the augmentation is reseeded per item, so it is the same in any worker.

    With ``on_unreadable="skip"`` an item whose file cannot be read (``DataError``)
    is replaced by the next readable one and recorded in ``record`` (JSON lines).
    """

    def __init__(self, dataset: Dataset, *, on_unreadable: str = "stop", record: Path | None = None):
        self.dataset = dataset
        self.on_unreadable = on_unreadable
        self.record = record

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        position, seed = key
        transform = getattr(self.dataset, "transform", None)
        for attempt in range(len(self.dataset)):
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)
            try:
                return self.dataset[(position + attempt) % len(self.dataset)]
            except DataError as error:
                if self.on_unreadable != "skip":
                    raise
                self._skipped(error)
        raise DataError("every training item is unreadable", where=str(self.record) if self.record else None,
                        hint="the dataset's files are gone or broken")

    def _skipped(self, error: DataError) -> None:
        log.warning(f"skipped unreadable item: {error.one_line()}")
        if self.record is not None:
            entry = {"file": error.where, "error": error.message, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with open(self.record, "a", encoding="utf-8") as handle:  # append: workers may write at once
                handle.write(json.dumps(entry) + "\n")


def replicas(trainer: pl.Trainer | None) -> dict[str, int]:
    """``num_replicas`` and ``rank`` for ``EpochSampler`` (one process outside a trainer)."""
    if trainer is None:
        return {"num_replicas": 1, "rank": 0}
    return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}


# ----------------------------------------------------------------- callbacks
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


def resilience_callbacks(config, run_dir: Path) -> list[pl.Callback]:
    """The callbacks ``fit`` adds: RNG state in checkpoints, the divergence guard, the skipped-items note."""
    callbacks: list[pl.Callback] = [RandomState(), DivergenceGuard(run_dir)]
    if config.data.on_unreadable == "skip":
        callbacks.append(SkippedReport(run_dir / SKIPPED_FILE))
    return callbacks


def quiet_resume_warning() -> None:
    """Lightning warns that a mid-epoch resume repeats data unless the loader is stateful; ours resumes in place."""
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")

