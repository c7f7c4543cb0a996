"""Predictions of the images of an index with one model: COCO results for boxes and masks, region statistics for
semantic masks (the probability maps are summarised image by image, never kept)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from cvtrain.audit.scores import RegionStatistics, region_statistics
from cvtrain.data.dataset import to_tensor
from cvtrain.data.files import inside_root, read_image
from cvtrain.data.index import DatasetIndex
from cvtrain.data.transforms import build_eval_transform
from cvtrain.data.workers import WorkerLoader


class _Images(Dataset):
    """The index's images resized as validation resizes them, with what maps predictions back."""

    def __init__(self, index: DatasetIndex, config):
        self.index = index
        self.images = list(index.images)
        self.transform = build_eval_transform(config.augment, config.train.image_size, with_boxes=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[position]
        original = read_image(inside_root(self.index.root, record.file_name))
        resized = self.transform(image=original)["image"]
        return to_tensor(resized), {"image_id": record.id, "orig_size": original.shape[:2], "size": resized.shape[:2]}


def _collate(batch):
    return tuple(zip(*batch))


@torch.no_grad()
def predict_index(task, config, index: DatasetIndex, *, device: torch.device, min_score: float, batch_size: int = 8,
                  num_workers: int = 0, description: str = "predict",
                  progress: bool = True) -> list[dict[str, Any]] | list[RegionStatistics]:
    """Run ``task`` (a trained cvtrain task module) on every image of ``index`` in FP32.

    Args:
        task: a detection, instance or semantic segmentation task with its weights.
        config: the spec (its ``augment`` and ``train.image_size`` say how images are resized).
        index: the images to predict (for semantic segmentation, with their masks).
        device: where the model runs.
        min_score: detections scoring less are dropped.

    Returns:
        COCO results (``image_id``, ``category_id``, ``bbox``, ``score``, and ``segmentation`` RLE for instance
        segmentation) in the original images' pixels; for semantic segmentation, one ``RegionStatistics`` per image.
    """
    semantic = config.task == "semantic_segmentation"
    task = task.to(device).eval()
    loader = WorkerLoader(_Images(index, config), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    results: list = []
    by_id = index.image_by_id
    with tqdm(total=len(index.images), desc=description, unit="img", disable=not progress, leave=False) as bar:
        for images, metas in loader:
            outputs = task([image.to(device) for image in images])
            for output, meta in zip(outputs, metas):
                if semantic:
                    results.append(_regions(task, config, index, by_id[meta["image_id"]], output["logits"], meta))
                else:
                    output = {key: value.cpu() for key, value in output.items()}
                    results.extend(r for r in task.to_results(output, meta) if r["score"] >= min_score)
            bar.update(len(images))
    return results


def _regions(task, config, index: DatasetIndex, record, logits: torch.Tensor, meta) -> RegionStatistics:
    from cvtrain.data.files import read_mask

    mask = read_mask(index.mask_path(record), index.num_classes, index.ignore_index, config.data.palette)
    size = tuple(mask.shape[:2])
    logits = logits.float()
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    probabilities = torch.softmax(logits, dim=0).cpu().numpy()
    return region_statistics(record.id, mask.astype(np.int64), probabilities, index.num_classes,
                             config.audit.min_region_pixels)
