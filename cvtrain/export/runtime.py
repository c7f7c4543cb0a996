"""An exported file run by onnxruntime, in the place of a task's network.

``load_onnx_task`` rebuilds the task an export came from out of the file's metadata alone (no checkpoint,
no weights) and puts an ``OnnxNetwork`` where its torchvision network was. ``cvtrain predict`` and
``cvtrain evaluate`` then run their usual code on it: the same resizing, the same COCO results, drawings,
masks and metrics, with only the network's arithmetic done by onnxruntime.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvtrain.errors import CheckpointError, CvtrainError
from cvtrain.export.onnx import INPUT_NAME, InputShape, read_metadata, require_onnx


def providers(device: str | None) -> list[str]:
    """CUDA when onnxruntime-gpu offers it and ``device`` does not say cpu; the CPU always as the fallback."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device not in ("cpu",) and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device in ("gpu", "cuda"):
        raise CvtrainError("onnxruntime has no CUDA provider here",
                           hint="pip install onnxruntime-gpu, or run on the cpu")
    return ["CPUExecutionProvider"]


def pad_to(image: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, *, where: str) -> torch.Tensor:
    """``image`` ``(3, h, w)`` padded at the bottom and right to ``size`` with the mean colour: zero once the graph
    has normalised it, as torchvision's detectors and ``SegmentationTask`` pad their batches.

    Raises:
        CvtrainError: the image is larger than ``size``.
    """
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    if height > size[0] or width > size[1]:
        raise CvtrainError(f"an image of {height}x{width} px does not fit the fixed input of {size[0]}x{size[1]} px",
                           where=where,
                           hint="export with a larger --image-size, or without it (dynamic height and width)")
    canvas = mean.to(image.device, image.dtype).reshape(3, 1, 1).expand(3, *size).clone()
    canvas[:, :height, :width] = image
    return canvas


class OnnxModel:
    """An exported cvtrain model opened with onnxruntime, and what its metadata says.

    onnxruntime gets as many threads as PyTorch has (``torch.get_num_threads()``), so that the two compare on
    equal terms and a ``torch.set_num_threads`` limit holds for both.

    Args:
        path: the ``.onnx`` file written by ``cvtrain export``.
        device: ``cpu``, ``gpu``/``cuda``, or None/``auto`` (CUDA when onnxruntime-gpu is installed).

    Raises:
        CheckpointError: the file is missing, not ONNX, or not written by ``cvtrain export``.
    """

    def __init__(self, path: str | os.PathLike, *, device: str | None = None):
        require_onnx(runtime_only=True)
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("ONNX file not found", where=str(self.path),
                                  hint="give a file written by cvtrain export")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its notes on unused initializers are not the user's business
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers(device))
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"onnxruntime cannot load the file: {str(error).splitlines()[0][:200]}",
                                  where=str(self.path), hint="give a .onnx file written by cvtrain export") from None
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map)
        missing = {"task", "class_names", "category_ids", "config", "input"} - set(self.metadata)
        if missing:
            raise CheckpointError(f"not a cvtrain export (no {', '.join(sorted(missing))} in its metadata)",
                                  where=str(self.path), hint="export the checkpoint with cvtrain export")
        given = self.metadata["input"]
        self.shape = InputShape(given.get("batch"), given.get("height"), given.get("width"))
        self.task = self.metadata["task"]
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.mean = torch.tensor(self.metadata["normalisation"]["mean"], dtype=torch.float32)  # the padding colour

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """The graph's outputs for ``(N, 3, H, W)`` images in [0, 1], by name."""
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return dict(zip(self.output_names, self.session.run(None, {INPUT_NAME: array})))

    def fit_size(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` padded to the exported input size, where that is fixed."""
        if self.shape.height is None:
            return image
        return pad_to(image, (self.shape.height, self.shape.width), self.mean, where=str(self.path))

    def batches(self, images: list[torch.Tensor]):
        """``(positions, batch)`` pairs covering ``images``: same-sized images together, in chunks of a fixed batch,
        the last chunk filled up with copies of its last image (whose outputs are dropped)."""
        fitted = [self.fit_size(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(fitted):
            groups.setdefault(tuple(image.shape), []).append(position)
        size = self.shape.batch
        for positions in groups.values():
            step = size or len(positions)
            for start in range(0, len(positions), step):
                chunk = positions[start:start + step]
                members = [fitted[p] for p in chunk]
                members += [members[-1]] * (step - len(members))
                yield chunk, torch.stack(members)


class OnnxNetwork(nn.Module):
    """Takes what the task's torchvision network took and returns what it returned, computed by onnxruntime.

    Detection and instance tasks give a list of images and get a list of dicts (``boxes``, ``scores``,
    ``labels``, ``masks``); a semantic task gives its normalised, padded batch and gets ``{"out": logits}``.
    """

    def __init__(self, model: OnnxModel, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.onnx = model
        self.task = model.task
        if self.task == "semantic_segmentation":
            self.register_buffer("mean", mean.reshape(1, 3, 1, 1).clone(), persistent=False)
            self.register_buffer("std", std.reshape(1, 3, 1, 1).clone(), persistent=False)

    def forward(self, images):
        if self.task == "semantic_segmentation":
            return {"out": self._semantic(images)}
        return self._detections(list(images))

    def _semantic(self, batch: torch.Tensor) -> torch.Tensor:
        # The task normalised the batch for its own network; the graph normalises inside, so undo it (a round
        # trip of one multiply-add, exact to float rounding, that keeps the task's padding: zero once normalised).
        raw = batch * self.std + self.mean
        height, width = raw.shape[-2:]
        logits: list[torch.Tensor | None] = [None] * len(raw)
        for chunk, inputs in self.onnx.batches(list(raw)):
            out = torch.from_numpy(self.onnx.run(inputs)["logits"])
            for row, position in enumerate(chunk):
                logits[position] = out[row, :, :height, :width]
        return torch.stack(logits).to(batch.device)

    def _detections(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results: list[dict[str, torch.Tensor] | None] = [None] * len(images)
        for chunk, inputs in self.onnx.batches(images):
            out = {name: torch.from_numpy(value) for name, value in self.onnx.run(inputs).items()}
            for row, position in enumerate(chunk):
                keep = out["image_index"] == row
                height, width = images[position].shape[-2:]
                found = {"boxes": out["boxes"][keep], "scores": out["scores"][keep], "labels": out["labels"][keep]}
                if (self.onnx.shape.height, self.onnx.shape.width) != (None, None):  # padded: back to the image
                    found["boxes"][:, 0::2] = found["boxes"][:, 0::2].clamp(0, width)
                    found["boxes"][:, 1::2] = found["boxes"][:, 1::2].clamp(0, height)
                if "masks" in out:
                    found["masks"] = out["masks"][keep][..., :height, :width]
                results[position] = {k: v.to(images[position].device) for k, v in found.items()}
        return results


def checkpoint_payload(model: OnnxModel) -> dict[str, Any]:
    """The parts of a checkpoint that ``evaluate`` and ``predict`` read, from the file's metadata."""
    return {"hyper_parameters": {"config": model.metadata["config"], "class_names": model.metadata["class_names"],
                                 "category_ids": model.metadata["category_ids"]}}


def load_onnx_task(path: str | os.PathLike, *, device: str | None = None):
    """The task an export came from, with onnxruntime in place of its network.

    The task is built on PyTorch's meta device (its network is never initialised, only replaced); its own
    tensors outside the network come from the file's metadata.

    Args:
        path: a ``.onnx`` file written by ``cvtrain export``.
        device: as for ``OnnxModel``.

    Returns:
        ``(payload, task)``: a checkpoint-like dict (``hyper_parameters`` with ``config``, ``class_names``,
        ``category_ids``) and the task, in eval mode.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a cvtrain export.
    """
    from cvtrain.tasks import TASKS

    model = OnnxModel(path, device=device)
    payload = checkpoint_payload(model)
    hyper = copy.deepcopy(payload["hyper_parameters"])
    # Nothing is loaded into a network that is thrown away: no pretrained weights, no download.
    hyper["config"]["model"].update(weights=None, backbone_weights=None)
    if model.task not in TASKS:
        raise CheckpointError(f"export is for unknown task {model.task!r}", where=str(path))
    with torch.device("meta"):
        task = TASKS[model.task](**hyper)
    task.model = nn.Identity()  # holds the network's place while the task's own tensors get memory
    task.to_empty(device="cpu")
    for name, stored in model.metadata.get("buffers", {}).items():
        task.get_buffer(name).copy_(torch.tensor(stored["values"], dtype=getattr(torch, stored["dtype"])))
    mean = std = None
    if model.task == "semantic_segmentation":
        mean, std = task.mean, task.std
    task.model = OnnxNetwork(model, mean, std)
    return payload, task.eval()
