"""Every checkpoint and weights file cvtrain reads or writes; ``torch.load`` is called in ``_load`` alone.

- Reading never executes code from a file (``weights_only=True``); a refusal
  says in a few words what the file is (``load_failure``).
- Writing is atomic (``AtomicCheckpointIO``): a crash mid-write leaves the
  previous checkpoint intact.
- ``find_resume_checkpoint`` picks the newest checkpoint of a run directory that
  loads safely and holds a whole training state; corrupt and partial ones are
  reported and skipped.
- ``load_task`` rebuilds the task a checkpoint was trained as; ``load_pretrained``
  fills a model with a torchvision weights file or a local ``.pth``/``.ckpt``.
"""
from __future__ import annotations

import io
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pydantic import ValidationError
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from cvtrain.atomic import write_bytes
from cvtrain.engine.rundir import fit_command, read_run_info
from cvtrain.errors import CheckpointError

log = logging.getLogger("cvtrain")

# What a checkpoint must hold for training to continue from it (Lightning's keys plus ours).
RESUME_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step",
               "hyper_parameters")
# Among checkpoints of the same step, the one written last holds the most state (validation ran before last.ckpt).
_PREFERENCE = {"last.ckpt": 2, "best.ckpt": 0}
STEP_CHECKPOINT = "step-{step:08d}"  # periodic checkpoints: step-00001200.ckpt
RUN_ID_KEY = "cvtrain_run_id"  # every checkpoint names the run that wrote it (run.json's run_id)


def _load(source: str | Path | io.BytesIO, *, mmap: bool = False) -> Any:
    """The one ``torch.load`` of cvtrain: CPU tensors, ``weights_only=True`` (nothing in the file runs)."""
    return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, flushed, fsync'ed and renamed into place.

    A crash mid-write leaves the previous checkpoint intact. Loading never
    executes code from the file (``weights_only=True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Serialise ``checkpoint`` in memory, then write it to ``path`` atomically."""
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getbuffer())

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint for Lightning's resume; nothing in it runs (``map_location`` is always the CPU)."""
        return _load(path)


def validation_follows(trainer: pl.Trainer) -> bool:
    """In ``on_train_batch_end``: whether Lightning runs a validation right after this training batch.

    A checkpoint taken there would miss that validation on resume (Lightning starts the next epoch), so the
    periodic checkpoints and the graceful stop leave that batch to ``last.ckpt``, written after the validation.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))


class StepCheckpoints(ModelCheckpoint):
    """``step-00001200.ckpt`` every ``every_n_steps`` optimizer steps; the newest ``keep`` stay on disk.

    Which files stay is decided by the step numbers of the files in the folder, not by Lightning's
    bookkeeping (which a resume from another folder, or from an older checkpoint, does not carry over), so
    exactly ``keep`` remain. No file is written on a step that a validation follows: a resume from it would skip
    that validation, and ``last.ckpt`` is written right after it.
    """

    def __init__(self, dirpath: Path, every_n_steps: int, keep: int = 2):
        super().__init__(dirpath=dirpath, filename=STEP_CHECKPOINT, save_top_k=-1, every_n_train_steps=every_n_steps,
                         auto_insert_metric_name=False, enable_version_counter=False)
        self.keep = keep

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if validation_follows(trainer):
            return
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if trainer.is_global_zero:
            for old in step_checkpoints(Path(self.dirpath))[:-self.keep]:
                old.unlink(missing_ok=True)


def step_checkpoints(folder: Path) -> list[Path]:
    """The periodic checkpoints in ``folder``, oldest step first."""
    found = []
    for path in folder.glob("step-*.ckpt"):
        digits = path.stem.removeprefix("step-")
        if digits.isdigit():
            found.append((int(digits), path))
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that can be resumed from."""

    path: Path
    epoch: int
    global_step: int
    hyper_parameters: dict[str, Any]
    run_id: str | None = None  # the run that wrote it (``run.json``'s ``run_id``); None from older cvtrain


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Load ``path`` without executing anything in it and check it holds a whole training state.

    Raises:
        CheckpointError: the file is truncated, holds code or another pickle, or lacks training state.
    """
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=str(path),
                              hint="give a .ckpt from <run>/checkpoints/, or --resume auto")
    if path.stat().st_size == 0:
        raise CheckpointError(
            "checkpoint file is empty (0 bytes)", where=str(path), hint="it was never written; use another"
        )
    try:
        # mmap: the tensors are not read, yet a truncated file fails (its zip directory is at the end).
        payload = _load(path, mmap=True)
    except Exception as error:  # truncated, foreign pickles, code: all refused, nothing in them runs
        raise CheckpointError(
            f"cannot load checkpoint safely: {load_failure(error)}",
            where=str(path),
            hint="use a checkpoint written by 'cvtrain fit'; checkpoints never run code here",
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"holds a {type(payload).__name__}, not a checkpoint", where=str(path))
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing or "config" not in payload["hyper_parameters"]:
        raise CheckpointError(
            f"no training state to resume (missing {', '.join(missing) or 'hyper_parameters.config'})",
            where=str(path),
            hint="resume from a checkpoint written by 'cvtrain fit'",
        )
    return CheckpointInfo(path, int(payload["epoch"]), int(payload["global_step"]), dict(payload["hyper_parameters"]),
                          payload.get(RUN_ID_KEY))


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


def find_resume_checkpoint(run_dir: Path, *, quiet: bool = False, clean: bool = True) -> CheckpointInfo:
    """The newest checkpoint of ``run_dir`` that is whole: most training steps first, then last, periodic, best.

    Corrupt or partial checkpoints are reported and skipped, and so are checkpoints another run wrote (their run id
    is not the one in ``run.json``); with ``clean``, temporary files left by a write that was killed are removed.

    Raises:
        CheckpointError: no checkpoint in the run directory can be resumed from; the hint gives the command that
            works (start the run again in place when it never wrote a checkpoint).
    """
    folder = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise CheckpointError("nothing to resume: the run directory does not exist", where=str(run_dir),
                              hint="start a new run without --resume, or give the --run-dir of an earlier run")
    again = _start_again(run_dir)
    candidates = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not candidates:
        raise CheckpointError("nothing to resume: the run stopped before writing its first checkpoint",
                              where=str(run_dir), hint=f"start it again in place: {again}")
    if clean:
        for partial in folder.glob(".*.ckpt.tmp-*"):
            partial.unlink(missing_ok=True)
            if not quiet:
                log.warning(f"removed {partial.name}: a checkpoint write that never finished")
    expected = read_run_info(run_dir).get("run_id")
    found: list[CheckpointInfo] = []
    problems: list[str] = []
    for path in candidates:
        try:
            info = inspect_checkpoint(path)
            if expected and info.run_id and info.run_id != expected:
                raise CheckpointError(f"written by another run (run id {info.run_id}, not {expected} of run.json)",
                                      where=str(path), hint="it is not resumed in this run directory")
            found.append(info)
        except CheckpointError as error:
            problems.append(error.message)
            if not quiet:
                log.warning(f"skipping {error.one_line()}")
    if not found:
        raise CheckpointError(f"nothing to resume: no valid checkpoint ({len(problems)} unusable: {problems[0]})",
                              where=str(folder),
                              hint=f"give a checkpoint path to --resume, or start it again in place: {again}")
    return max(found, key=lambda info: (info.global_step, _PREFERENCE.get(info.path.name, 1), info.path.name))


def _start_again(run_dir: Path) -> str:
    if (run_dir / "config.yaml").is_file():
        return fit_command(run_dir, "--overwrite")
    return f"cvtrain fit -c <spec> --run-dir {shlex.quote(str(run_dir))} --overwrite"


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A cvtrain checkpoint as a dict; never executes code from the file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=str(path), hint="give a .ckpt from <run>/checkpoints/")
    try:
        payload = _load(path)
    except Exception as error:  # truncated files, foreign pickles and non-checkpoints all land here
        raise CheckpointError(
            f"cannot load checkpoint safely: {load_failure(error)}",
            where=str(path),
            hint="the file is truncated, not a checkpoint, or holds code; use a .ckpt written by cvtrain",
        ) from None
    if (
        not isinstance(payload, dict)
        or "state_dict" not in payload
        or "config" not in payload.get("hyper_parameters", {})
    ):
        raise CheckpointError("not a cvtrain checkpoint (no hyper_parameters.config / state_dict)", where=str(path),
                              hint="give a .ckpt from <run>/checkpoints/")
    return payload


def load_task(path: str | Path, payload: dict[str, Any] | None = None) -> pl.LightningModule:
    """Rebuild the task a checkpoint was trained as, with its weights.

    Args:
        path: the checkpoint (named in errors).
        payload: the checkpoint already read by ``read_checkpoint``; read from ``path`` when None.

    Returns:
        The task (a ``LightningModule``) in training mode, on the CPU.

    Raises:
        CheckpointError: the checkpoint is not a cvtrain checkpoint, or its weights do not fit its model.
    """
    from cvtrain.tasks import TASKS

    payload = payload or read_checkpoint(path)
    hyper = payload["hyper_parameters"]
    task_name = hyper["config"].get("task", "detection")
    if task_name not in TASKS:
        raise CheckpointError(f"checkpoint is for unknown task {task_name!r}", where=str(path))
    try:
        task = TASKS[task_name](**hyper)
    except ValidationError as error:
        raise CheckpointError(f"checkpoint config is invalid: {error.errors()[0]['msg']}", where=str(path)) from None
    try:
        task.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"weights do not fit the model: {str(error).splitlines()[1].strip()[:160]}",
            where=str(path),
            hint="the checkpoint was written by another version of the model",
        ) from None
    return task


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A model state dict from a ``.pth`` or a Lightning ``.ckpt``; never executes code from the file.

    Raises:
        CheckpointError: the file is missing, unreadable, holds code, or is not a dict of tensors.
    """
    if not path.is_file():
        raise CheckpointError("weights file not found", where=str(path), hint="check model.weights")
    try:
        payload = _load(path)
    except Exception as error:
        raise CheckpointError(f"cannot load weights safely: {load_failure(error)}", where=str(path),
                              hint="give a state dict saved with torch.save(model.state_dict()) "
                                   "or a cvtrain checkpoint") from None
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()}
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError("not a state dict of tensors", where=str(path),
                              hint="save with torch.save(model.state_dict())")
    return payload


def load_pretrained(model: nn.Module, model_config: Any) -> None:
    """Fill ``model`` with ``model_config.weights``, skipping tensors of another shape (e.g. COCO's 91-class head).

    Args:
        model: the model ``models.build_model`` built for ``model_config`` (frozen layers included).
        model_config: the spec's ``model`` section; nothing happens when ``weights`` is empty.

    Raises:
        CheckpointError: the file is unreadable or no tensor of it fits the model.
        ConfigError: an unknown torchvision weights name, or a download that failed (offline: where to put the file).
    """
    from cvtrain.models import MODELS
    from cvtrain.models.weights import pretrained_file

    weights = model_config.weights
    if not weights:
        return
    state = read_state_dict(pretrained_file(model_config.name, MODELS[model_config.name].builder, weights))
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(compatible))
    if not compatible:
        raise CheckpointError(f"no tensor of {weights} fits {model_config.name}", where=str(weights),
                              hint="the file belongs to another architecture")
    model.load_state_dict(compatible, strict=False)
    missing = sorted(set(own) - set(compatible))
    log.info("loaded %d tensors from %s; %d re-initialised (e.g. %s)", len(compatible), weights, len(missing),
             ", ".join(missing[:3]) or "none")
    if skipped:
        log.info("skipped %d tensors of another shape (class heads): %s", len(skipped), ", ".join(skipped[:4]))
