"""Per-image predictions: collected from ``trainer.validate`` or made on altered images.

``PredictionCollector`` keeps what a validation pass computed per image (COCO results or a sparse
confusion matrix, and the image's brightness), so intervals, slices and comparisons need no second pass.
``predict`` runs a task on validation images changed before the evaluation resize (a corruption, a flip,
an object pasted elsewhere), through the same dataset, transform and ``to_results`` as validation.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cvtrain.data.dataset import collate
from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.data.module import build_dataset
from cvtrain.data.workers import WorkerLoader
from cvtrain.evaluation.segmentation import confusion_matrix, sum_sparse, to_sparse
from cvtrain.prediction import pick_device
from cvtrain.tasks.common import gather_by_image

Alteration = Callable[[np.ndarray, ImageRecord], np.ndarray]
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as OpenCV's RGB2GRAY


def is_semantic(task) -> bool:
    """Semantic segmentation scores confusion matrices; detection and instance segmentation COCO results."""
    return task.config.task == "semantic_segmentation"


def primary_metric(task) -> str:
    """The score a task is judged by: ``mIoU`` for semantic segmentation, box ``mAP`` otherwise."""
    return "mIoU" if is_semantic(task) else "mAP"


class PredictionCollector(pl.Callback):
    """Keeps each validation image's predictions, size and brightness.

    Lightning calls a callback's ``on_validation_epoch_end`` before the module's, which is where the
    tasks score and then drop their per-image lists (``_results`` for detection, ``_confusions`` for
    semantic segmentation); this reads them just before, gathered over ranks like the task does.
    """

    def __init__(self) -> None:
        self.predictions: dict[int, Any] = {}
        self.brightness: dict[int, float] = {}
        self.sizes: dict[int, tuple[int, int]] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.predictions, self.brightness, self.sizes = {}, {}, {}

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, targets = batch
        weights = torch.tensor(LUMA)
        for image, target in zip(images, targets):
            luma = torch.tensordot(weights.to(image.device, image.dtype), image[:3].float(), dims=1)
            self.brightness[int(target["image_id"])] = float(luma.mean())
            self.sizes[int(target["image_id"])] = tuple(int(v) for v in target["orig_size"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        per_image = getattr(module, "_results", None)
        if per_image is None:
            per_image = getattr(module, "_confusions", [])
        self.predictions = dict(gather_by_image(list(per_image)))
        self.brightness = dict(gather_by_image(list(self.brightness.items())))
        self.sizes = dict(gather_by_image(list(self.sizes.items())))


@dataclass
class Item:
    """One image to predict: ``key`` names it in the output, ``alter`` changes the original image first."""

    key: Hashable
    record: ImageRecord
    alter: Alteration | None = None


class _AlteredTransform:
    """The evaluation transform, after the current item's alteration; a class, not a closure, so that the dataset
    can be sent to worker processes (they start from a fork server and receive it pickled)."""

    def __init__(self, owner: _AlteredImages, transform: Callable | None):
        self.owner, self.transform = owner, transform

    def __call__(self, image: np.ndarray, **rest: Any) -> dict[str, Any]:
        current = self.owner.current
        if current is not None and current.alter is not None:
            image = current.alter(image, current.record)
        return self.transform(image=image, **rest) if self.transform is not None else {"image": image, **rest}


class _AlteredImages(Dataset):
    """The evaluation dataset over ``items``; each original image goes through its alteration before the
    evaluation transform (the resize), so boxes and masks keep the original image's coordinates."""

    def __init__(self, base: Dataset, items: Sequence[Item]):
        self.base = base
        self.items = list(items)
        self.position = {record.id: position for position, record in enumerate(base.images)}
        self.current: Item | None = None
        base.transform = _AlteredTransform(self, base.transform)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        self.current = self.items[index]
        image, target = self.base[self.position[self.current.record.id]]
        target["item"] = index
        return image, target


@dataclass
class Predictions:
    """Per item key: COCO results (detection, instance) or a sparse confusion matrix (semantic)."""

    payload: dict[Hashable, Any] = field(default_factory=dict)
    masks: dict[Hashable, np.ndarray] = field(default_factory=dict)  # predicted class masks, when kept
    brightness: dict[int, float] = field(default_factory=dict)  # image id -> mean luma of the unaltered image
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # image id -> (height, width)


@torch.no_grad()
def predict(task, config, index: DatasetIndex, items: Sequence[Item], *, keep_masks: bool = False,
            progress: bool = True, description: str = "predict",
            postfix: Callable[[Item], str] | None = None) -> Predictions:
    """Run ``task`` on ``items`` (validation images of ``index``, each altered as it says).

    Args:
        task: a task from ``load_task`` (or a ``DetectionTask``/``SegmentationTask`` built directly).
        config: the config whose ``train.image_size``, ``eval.batch_size``, ``train.num_workers`` and
            ``trainer.accelerator`` apply.
        index: the split the items' records come from (its ground truth is what semantic masks are scored on).
        items: what to predict; keys must be unique.
        keep_masks: semantic segmentation: also keep each predicted class mask (original size).
        progress: show a tqdm bar (images, rate, ETA).
        postfix: text shown beside the bar for the item being predicted (e.g. the corruption).

    Returns:
        ``Predictions`` keyed by ``Item.key``.
    """
    dataset = _AlteredImages(build_dataset(config, index, train=False), items)
    workers = config.train.num_workers  # WorkerLoader resolves auto
    loader = WorkerLoader(dataset, batch_size=config.eval.batch_size or config.train.batch_size, shuffle=False,
                          num_workers=workers, collate_fn=collate, persistent_workers=False)
    device = pick_device(config.trainer.accelerator)
    task = task.to(device).eval()
    semantic = is_semantic(task)
    classes = len(task.class_names)
    out = Predictions()
    luma = torch.tensor(LUMA)
    bar = tqdm(total=len(dataset), desc=description, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for images, targets in loader:
            outputs = task([image.to(device) for image in images])
            for image, output, target in zip(images, outputs, targets):
                item = dataset.items[target["item"]]
                if item.alter is None:
                    out.brightness[item.record.id] = float(torch.tensordot(luma, image[:3].float(), dims=1).mean())
                    out.sizes[item.record.id] = tuple(int(v) for v in target["orig_size"])
                if semantic:
                    truth = target["orig_mask"]
                    mask = task.predict_mask(output["logits"], tuple(truth.shape[-2:])).cpu()
                    out.payload[item.key] = to_sparse(confusion_matrix(truth, mask, classes))
                    if keep_masks:
                        out.masks[item.key] = mask.numpy().astype(np.int32)
                else:
                    output = {name: value.detach().cpu() for name, value in output.items()}
                    out.payload[item.key] = task.to_results(output, target)
            bar.update(len(images))
            if postfix is not None:
                bar.set_postfix_str(postfix(dataset.items[targets[-1]["item"]]), refresh=False)
    finally:
        bar.close()
    return out


def score(task, index: DatasetIndex, per_image: dict[int, Any]) -> dict[str, Any]:
    """The task's own metrics (pycocotools, or mIoU beside the majority-class baseline) over ``per_image``
    (image id -> COCO results or sparse confusion), on those images of ``index``."""
    if is_semantic(task):
        confusion = sum_sparse(per_image.values(), len(task.class_names))
        metrics = task.evaluate_confusion(confusion)
    else:
        if getattr(task, "ground_truth", None) is None or {i["id"] for i in task.ground_truth["images"]} != {
                image.id for image in index.images}:
            task.ground_truth = index.to_coco()
        results = [record for records in per_image.values() for record in records]
        metrics = task.evaluate_results(results, set(per_image))
    metrics.pop("summary", None)
    metrics["num_images"] = len(per_image)
    return metrics
