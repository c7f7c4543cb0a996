"""The ONNX graph of a trained task: one wrapper per model family, the export, and the metadata in the file.

What the graph takes, for every family: ``images``, float32 ``(N, 3, H, W)``, RGB in [0, 1], the image as
``cvtrain predict`` feeds the model (resized so that its longest side is ``train.image_size``). The
normalisation is inside the graph (torchvision's detectors normalise in their own transform; the semantic
wrapper subtracts the ImageNet mean and divides by the std, as ``SegmentationTask`` does).

What it returns:

- detection (``boxes``, ``scores``, ``labels``, ``image_index``) and instance segmentation (the same and
  ``masks``): the detections of all images of the batch, one row each. Boxes are ``x0, y0, x1, y1`` in
  pixels of the input image, labels ``1..K`` (label ``k`` is ``class_names[k - 1]``), ``image_index`` the
  image's position in the batch, masks ``(D, 1, H, W)`` probabilities (a pixel is in the mask above 0.5):
  torchvision's conventions, which ``cvtrain predict`` turns into COCO results.
- semantic segmentation: ``logits`` ``(N, K, H, W)``; the class of a pixel is their argmax.

What is dynamic: height and width, unless ``image_size`` fixes them. The batch of detection and instance
models is fixed (``batch``, default 1): torchvision's detectors take a list of images, which the TorchScript
tracer unrolls, so the exported graph holds one copy of the post-processing per image. Semantic models are
plain convolutional networks: their batch is dynamic unless ``batch`` fixes it.

The exporter is the TorchScript-based ``torch.onnx.export(..., dynamo=False)``: the torch.export-based one
(the default since PyTorch 2.9) fails on torchvision's detection models (pytorch/vision#9306, #9462), and
torchvision's own ONNX tests of Faster R-CNN, Mask R-CNN, RetinaNet, FCOS and SSDlite ran on the TorchScript
exporter with its registered ``nms``/``roi_align`` symbolics.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from cvtrain.errors import CvtrainError

DEFAULT_OPSET = 17  # RoiAlign with output_half_pixel (opset 16+); 17 is what TensorRT 8.6 and later parse
MIN_OPSET = 11  # torchvision registers nms and roi_align for opset 11 and up
MAX_OPSET = 20  # the TorchScript-based exporter's last opset (torch.onnx._constants)
METADATA_PREFIX = "cvtrain."
INPUT_NAME = "images"
OUTPUT_NAMES = {
    "detection": ("boxes", "scores", "labels", "image_index"),
    "instance_segmentation": ("boxes", "scores", "labels", "image_index", "masks"),
    "semantic_segmentation": ("logits",),
}


class ExportError(CvtrainError):
    """An export that cannot start or cannot be written (flags, files, missing packages)."""


def require_onnx(*, runtime_only: bool = False) -> None:
    """Refuse at once, naming what to install, when the ``export`` extra is missing.

    Raises:
        ExportError: onnx (unless ``runtime_only``) or onnxruntime cannot be imported.
    """
    missing = []
    for name in ("onnxruntime",) if runtime_only else ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"{' and '.join(missing)} not installed",
                          hint='pip install -e ".[export]", or pip install onnx onnxruntime; onnxruntime-gpu for CUDA')


@dataclass(frozen=True)
class InputShape:
    """The graph's input: ``None`` where an axis is dynamic."""

    batch: int | None
    height: int | None
    width: int | None

    def describe(self) -> str:
        return " x ".join(str(v) if v is not None else name for v, name in
                          ((self.batch, "batch"), (3, "3"), (self.height, "height"), (self.width, "width")))


class DetectionGraph(nn.Module):
    """A torchvision detector (Mask R-CNN included) as one batch tensor in, the batch's detections out.

    Args:
        model: the detector, in eval mode; it resizes and normalises in its own transform.
        with_masks: also return Mask R-CNN's ``masks``.
    """

    def __init__(self, model: nn.Module, with_masks: bool):
        super().__init__()
        self.model = model
        self.with_masks = with_masks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(list(images.unbind(0)))
        flat = [torch.cat([output[key] for output in outputs]) for key in ("boxes", "scores", "labels")]
        flat.append(torch.cat([torch.full_like(output["labels"], row) for row, output in enumerate(outputs)]))
        if self.with_masks:
            flat.append(torch.cat([output["masks"] for output in outputs]))
        return tuple(flat)


class SemanticGraph(nn.Module):
    """A torchvision segmentation model with the normalisation ``SegmentationTask`` applies before it.

    Only the main head's ``out`` is returned: an auxiliary head (DeepLabV3, FCN) serves training only, and the
    exporter drops what no output depends on.
    """

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().reshape(1, 3, 1, 1).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)["out"]


def build_graph(task) -> nn.Module:
    """The wrapper module of ``task``'s family around its network (shared, not copied)."""
    kind = task.config.task
    if kind == "semantic_segmentation":
        return SemanticGraph(task.model, task.mean, task.std).eval()
    return DetectionGraph(task.model, with_masks=kind == "instance_segmentation").eval()


def normalisation(task) -> dict[str, Any]:
    """Mean and std the graph applies to [0, 1] RGB input, as the network's own transform or the task does."""
    transform = getattr(task.model, "transform", None)
    if transform is not None and hasattr(transform, "image_mean"):
        mean, std = transform.image_mean, transform.image_std
    else:
        mean, std = task.mean.flatten().tolist(), task.std.flatten().tolist()
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "input_range": [0.0, 1.0],
            "channels": "RGB", "inside_graph": True}


def input_shape(task, *, image_size: tuple[int, int] | None, batch: int | None) -> InputShape:
    """Which axes the export fixes: the batch of detectors always (1 unless given), the rest as asked."""
    if batch is None and task.config.task != "semantic_segmentation":
        batch = 1
    height, width = image_size if image_size is not None else (None, None)
    return InputShape(batch, height, width)


def export_graph(task, example: torch.Tensor, shape: InputShape, *, opset: int) -> bytes:
    """The serialised ONNX model of ``task``, traced on ``example`` (``(N, 3, H, W)`` matching ``shape``).

    Tracing records the operations one input takes, so the example should be a real image: torchvision's
    detectors branch on what they found.
    """
    names = OUTPUT_NAMES[task.config.task]
    dynamic: dict[str, dict[int, str]] = {}
    image_axes = {axis: name for axis, name, value in ((0, "batch", shape.batch), (2, "height", shape.height),
                                                      (3, "width", shape.width)) if value is None}
    if image_axes:
        dynamic[INPUT_NAME] = image_axes
    if task.config.task == "semantic_segmentation":
        dynamic["logits"] = image_axes
    else:
        for name in names:
            dynamic[name] = {0: "detections"}
        if "masks" in names:
            dynamic["masks"] = {0: "detections", **{axis: n for axis, n in image_axes.items() if axis != 0}}
    buffer = io.BytesIO()
    graph = build_graph(task)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns at every Python number it records as a constant; torchvision's detectors are written
        # for it (``torchvision._is_tracing()`` branches), and the parity check judges the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(names), dynamic_axes=dynamic or None, do_constant_folding=True)
    return buffer.getvalue()


def metadata(task, shape: InputShape, *, opset: int) -> dict[str, str]:
    """What a runtime needs to know about the graph, as ONNX ``metadata_props`` (text; JSON for structures).

    The resolved config and the task's own tensors outside the network (a semantic task's training pixel
    counts, which give the majority-class baseline) let ``cvtrain evaluate --model`` report what the
    checkpoint would.
    """
    import onnx

    import cvtrain

    buffers = {name: {"dtype": str(value.dtype).removeprefix("torch."), "values": value.detach().cpu().tolist()}
               for name, value in task.named_buffers() if not name.startswith("model.")}
    fields = {
        "task": task.config.task,
        "model": task.config.model.name,
        "class_names": list(task.class_names),
        "category_ids": list(task.category_ids),
        "image_size": task.config.train.image_size,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", **asdict(shape)},
        "outputs": list(OUTPUT_NAMES[task.config.task]),
        "normalisation": normalisation(task),
        "exporter": f"torch.onnx.export(dynamo=False), opset {opset}",
        "versions": {"cvtrain": cvtrain.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "onnx": onnx.__version__},
        "config": task.config.model_dump(mode="json"),
        "buffers": buffers,
    }
    return {METADATA_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in fields.items()}


def read_metadata(properties: dict[str, str]) -> dict[str, Any]:
    """``metadata`` back from a file's properties (onnx's ``metadata_props`` or onnxruntime's custom map)."""
    values: dict[str, Any] = {}
    for key, text in properties.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX):]
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text
    return values


def build_onnx(task, example: torch.Tensor, shape: InputShape, *, opset: int):
    """The checked ``onnx.ModelProto`` of ``task`` with its metadata.

    Raises:
        onnx.checker.ValidationError: the exporter wrote a model that breaks the ONNX specification.
    """
    import onnx

    model = onnx.load_from_string(export_graph(task, example, shape, opset=opset))
    onnx.helper.set_model_props(model, metadata(task, shape, opset=opset))
    model.doc_string = (f"cvtrain {task.config.task} model {task.config.model.name}: input {INPUT_NAME} "
                        f"({shape.describe()}, RGB in [0, 1], normalised inside), outputs "
                        f"{', '.join(OUTPUT_NAMES[task.config.task])}; see the cvtrain.* metadata")
    onnx.checker.check_model(model)
    return model
