"""LightningModules by task, and loading them back from checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pydantic import ValidationError

from cvtrain.errors import CheckpointError
from cvtrain.tasks.detection import DetectionTask
from cvtrain.tasks.instance import InstanceSegmentationTask
from cvtrain.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[pl.LightningModule]] = {
    "detection": DetectionTask,
    "instance_segmentation": InstanceSegmentationTask,
    "semantic_segmentation": SegmentationTask,
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A cvtrain checkpoint as a dict; never executes code from the file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=str(path), hint="give a .ckpt from <run>/checkpoints/")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, foreign pickles and non-checkpoints all land here
        from cvtrain.resilience import load_failure

        raise CheckpointError(f"cannot load checkpoint safely: {load_failure(error)}", where=str(path),
                              hint="the file is truncated, not a checkpoint, or holds code; use a .ckpt written by cvtrain") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload.get("hyper_parameters", {}):
        raise CheckpointError("not a cvtrain checkpoint (no hyper_parameters.config / state_dict)", where=str(path),
                              hint="give a .ckpt from <run>/checkpoints/")
    return payload


def load_task(path: str | Path, payload: dict[str, Any] | None = None) -> pl.LightningModule:
    """Rebuild the task a checkpoint was trained as, with its weights."""
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
        raise CheckpointError(f"weights do not fit the model: {str(error).splitlines()[1].strip()[:160]}", where=str(path),
                              hint="the checkpoint was written by another version of the model") from None
    return task
