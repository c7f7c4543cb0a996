"""``cvtrain export``: cheap checks, the export, the parity check, and the file kept or marked ``.unverified``.

The file is written to a temporary name in its folder, checked there, and only then renamed: to the name
asked for when onnxruntime and PyTorch agree, to that name plus ``.unverified`` when they do not (so that
nothing deploys it by mistake, while it stays at hand for a bug report). ``<name>.parity.json`` beside it
holds the comparison, image by image.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cvtrain.atomic import write_json
from cvtrain.errors import CheckpointError, CvtrainError
from cvtrain.export.onnx import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportError,
    InputShape,
    build_onnx,
    input_shape,
    normalisation,
    require_onnx,
)
from cvtrain.export.parity import ParityReport, check_parity
from cvtrain.export.runtime import OnnxModel, OnnxNetwork, pad_to

log = logging.getLogger("cvtrain")
PARITY_IMAGES = 8  # images compared by default: enough to meet every branch of the post-processing, quick on a CPU
UNVERIFIED = ".unverified"


class ParityError(CvtrainError):
    """onnxruntime and PyTorch disagree on the exported model; ``result`` holds the file and the comparison."""

    exit_code = 1

    def __init__(self, message: str, *, result: ExportResult, where: str | None = None, hint: str | None = None):
        self.result = result
        super().__init__(message, where=where, hint=hint)


@dataclass
class ExportResult:
    """An exported file and its comparison with the checkpoint."""

    path: Path  # where the file is: the name asked for, or it plus ".unverified"
    verified: bool
    parity: ParityReport
    input: InputShape
    opset: int | None  # None when an existing file was verified
    seconds: float = 0.0  # the export itself (tracing, conversion, checker), without the parity check
    size_bytes: int = 0

    @property
    def parity_file(self) -> Path:
        return parity_file(self.path)

    def _repr_html_(self) -> str:
        import html

        rows = {"file": self.path, "verified": self.verified, "input": self.input.describe(), "opset": self.opset,
                "export seconds": round(self.seconds, 1), "MB": round(self.size_bytes / 2**20, 1)}
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows.items())
        return f"<b>cvtrain export</b><table>{body}</table>{self.parity._repr_html_()}"


def parity_file(path: Path) -> Path:
    """``model.onnx`` -> ``model.parity.json`` (the same for its ``.unverified`` name)."""
    name = path.name.removesuffix(UNVERIFIED)
    return path.with_name(Path(name).stem + ".parity.json")


def _progress(enabled: bool):
    return (lambda items: tqdm(items, desc="parity", unit="image", leave=False)) if enabled else None


def _check_arguments(opset: int, image_size, dynamic_size: bool, batch: int | None, export_format: str) -> None:
    if export_format != "onnx":
        raise ExportError(f"unknown format {export_format!r}", hint="formats: onnx")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}",
                          hint=f"the TorchScript-based exporter writes opsets {MIN_OPSET} to {MAX_OPSET}; "
                               f"default {DEFAULT_OPSET}")
    if image_size is not None:
        if dynamic_size:
            raise ExportError("--image-size fixes the input size and --dynamic-size frees it", hint="give one of them")
        if len(image_size) != 2 or any(int(v) < 32 for v in image_size):
            raise ExportError(f"image size {list(image_size)} is not a height and a width of 32 px or more",
                              hint="e.g. --image-size 512 512")
    if batch is not None and batch < 1:
        raise ExportError(f"batch {batch} is not a positive number", hint="e.g. --batch 1")


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    for path in paths:
        if path.is_dir():
            raise ExportError("is a folder", where=str(path), hint="give --out a file name, e.g. model.onnx")
        if path.exists() and not overwrite:
            raise ExportError("file exists", where=str(path), hint="give another --out, or --overwrite to replace it")


def parity_images(config, images: str | os.PathLike | None,
                  limit: int = PARITY_IMAGES) -> list[tuple[str, torch.Tensor]]:
    """Up to ``limit`` images as ``cvtrain predict`` feeds them to the model: ``images`` (a file or folder), or
    else the checkpoint's validation split.

    Raises:
        DataError / ExportError: no images, or the checkpoint's dataset is not where it was.
    """
    from cvtrain.data.dataset import to_tensor
    from cvtrain.data.files import inside_root, read_image
    from cvtrain.data.loading import build_index
    from cvtrain.data.transforms import build_eval_transform
    from cvtrain.prediction import list_images

    if images is not None:
        files = list_images(Path(images))
    else:
        try:
            index = build_index(config.data, images_needed=True)
        except CvtrainError as error:
            raise ExportError(f"cannot read the checkpoint's validation images for the parity check: {error.message}",
                              where=error.where, hint="give images to compare on with --images") from None
        split = index.split(config.data.val_split)
        if not split.images:
            raise ExportError(f"the checkpoint's dataset has no '{config.data.val_split}' images for the parity check",
                              where=str(index.root), hint="give images to compare on with --images")
        files = [inside_root(index.root, record.file_name) for record in split.images]
    transform = build_eval_transform(config.augment, config.train.image_size, with_boxes=False)
    return [(path.name, to_tensor(transform(image=read_image(path))["image"])) for path in files[:limit]]


def _example(task, image: torch.Tensor, shape: InputShape) -> torch.Tensor:
    """The tracing input: a real image (the detectors' post-processing branches on what it finds), at the fixed
    size if there is one, as many times as the batch (twice for a dynamic batch, so that it is not taken as 1)."""
    if shape.height is not None:
        mean = torch.tensor(normalisation(task)["mean"]).view(3, 1, 1)
        image = pad_to(image, (shape.height, shape.width), mean, where="--image-size")
    return image.unsqueeze(0).repeat(shape.batch or 2, 1, 1, 1)


def _compare(task, file: Path, images, *, shown: Path, progress: bool) -> ParityReport:
    """onnxruntime on ``file`` against ``task`` on the CPU, with the report naming ``shown``."""
    onnx_model = OnnxModel(file, device="cpu")
    mean = std = None
    if task.config.task == "semantic_segmentation":
        mean, std = task.mean, task.std
    return check_parity(task, OnnxNetwork(onnx_model, mean, std), images, file=str(shown), progress=_progress(progress))


def _failure(result: ExportResult) -> ParityError:
    worst = result.parity.summary().split("; worst: ", 1)[1].split("); ", 1)[0]
    problems = next(image for image in result.parity.images if not image.ok)
    hint = f"kept with the {UNVERIFIED} suffix; image by image in {result.parity_file}"
    found = sum(max(image.detections) for image in result.parity.images if image.detections)
    tied = result.parity.worst()["tied"]
    if found and tied >= 0.25 * found:
        # A model that scores most boxes alike (untrained, or collapsed) has no one right answer to compare.
        hint += (f"; {tied} of {found} detections tie on their score, as in an untrained or collapsed model, where "
                 "which boxes survive a cut is arbitrary: check a trained checkpoint")
    return ParityError(f"onnxruntime and PyTorch disagree: {problems.image}: {problems.problems[0]} (worst: {worst})",
                       result=result, where=str(result.path), hint=hint)


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *,
                      export_format: str = "onnx", opset: int | None = None,
                      image_size: tuple[int, int] | list[int] | None = None, dynamic_size: bool = False,
                      batch: int | None = None, images: str | os.PathLike | None = None, overwrite: bool = False,
                      progress: bool = True) -> ExportResult:
    """Export a checkpoint to ONNX and check the file against PyTorch with onnxruntime.

    Args:
        checkpoint: a ``.ckpt`` written by ``fit``.
        out: the file to write; default ``<run>/export/<checkpoint name>.onnx``.
        export_format: ``onnx`` (the only one).
        opset: ONNX opset, 11 to 20; default 17.
        image_size: ``(height, width)`` to fix the input size; default: height and width are dynamic.
        dynamic_size: say explicitly that height and width are dynamic (the default).
        batch: fix the batch; default 1 for detection and instance models (their batch cannot be dynamic),
            dynamic for semantic models.
        images: an image file or folder for the parity check; default: the checkpoint's validation images.
        overwrite: replace an existing file of that name.
        progress: show a progress bar during the parity check.

    Returns:
        ``ExportResult`` with the file, its input shape and the ``ParityReport``.

    Raises:
        ExportError: missing packages, flags out of range, an existing file (all before anything is loaded).
        CheckpointError: the checkpoint cannot be read.
        ParityError: onnxruntime and PyTorch disagree; the file is kept as ``<out>.unverified`` (exit code 1).
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    _check_arguments(opset, image_size, dynamic_size, batch, export_format)
    require_onnx()
    import onnx

    from cvtrain.engine.checkpoints import load_task, read_checkpoint

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.resolve().parent.parent / "export" / f"{checkpoint.stem}.onnx"
    unverified = out.with_name(out.name + UNVERIFIED)
    _refuse_existing([out, unverified, parity_file(out)], overwrite)
    payload = read_checkpoint(checkpoint)
    task = load_task(checkpoint, payload).eval()
    examples = parity_images(task.config, images)
    shape = input_shape(task, image_size=tuple(image_size) if image_size is not None else None, batch=batch)
    started = time.perf_counter()
    log.info("exporting %s (%s) with torch.onnx.export(dynamo=False), opset %d, input %s", checkpoint,
             task.config.model.name, opset, shape.describe())
    model = build_onnx(task, _example(task, examples[0][1], shape), shape, opset=opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    onnx.save(model, str(temporary))
    seconds = time.perf_counter() - started
    try:
        report = _compare(task, temporary, examples, shown=out, progress=progress)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    final = out if report.ok else unverified
    os.replace(temporary, final)
    for stale in {out, unverified} - {final}:
        stale.unlink(missing_ok=True)  # an earlier export of that name (only there with overwrite), now replaced
    result = ExportResult(path=final, verified=report.ok, parity=report, input=shape, opset=opset, seconds=seconds,
                          size_bytes=final.stat().st_size)
    write_json(result.parity_file, {"checkpoint": str(checkpoint), "opset": opset, "input": shape.describe(),
                                    "export_seconds": round(seconds, 2), **report.to_json(), "file": str(final)})
    if not report.ok:
        raise _failure(result)
    return result


def verify_export(checkpoint: str | os.PathLike, model: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  progress: bool = True) -> ExportResult:
    """Check an existing export against its checkpoint, as ``export_checkpoint`` checks a new one.

    A file that fails is renamed to ``<name>.unverified`` (unless that name is taken), so that it is not
    deployed by mistake.

    Raises:
        ExportError / CheckpointError: missing packages, files, or a file exported from another task or classes.
        ParityError: onnxruntime and PyTorch disagree (exit code 1).
    """
    require_onnx()
    from cvtrain.engine.checkpoints import load_task, read_checkpoint

    model = Path(model)
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    exported = OnnxModel(model, device="cpu")  # refuses a missing file or one cvtrain did not write
    hyper = payload["hyper_parameters"]
    trained = (hyper["config"].get("task"), list(hyper["class_names"]))
    if (exported.task, list(exported.metadata["class_names"])) != trained:
        raise CheckpointError(f"the file is a {exported.task} model of classes {exported.metadata['class_names']}, "
                              f"the checkpoint a {trained[0]} model of classes {trained[1]}", where=str(model),
                              hint="verify a file against the checkpoint it was exported from")
    task = load_task(checkpoint, payload).eval()
    examples = parity_images(task.config, images)
    report = _compare(task, model, examples, shown=model, progress=progress)
    final = model
    if not report.ok and not model.name.endswith(UNVERIFIED):
        marked = model.with_name(model.name + UNVERIFIED)
        if not marked.exists():
            os.replace(model, marked)
            final = marked
    result = ExportResult(path=final, verified=report.ok, parity=report, input=exported.shape, opset=None,
                          size_bytes=final.stat().st_size)
    write_json(result.parity_file, {"checkpoint": str(checkpoint), "input": exported.shape.describe(),
                                    **report.to_json(), "file": str(final)})
    if not report.ok:
        raise _failure(result)
    return result

