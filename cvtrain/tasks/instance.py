"""Instance segmentation (Mask R-CNN): detection plus masks, scored as COCO ``bbox`` and ``segm``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.utils import draw_segmentation_masks

from cvtrain.evaluation.coco import coco_evaluate
from cvtrain.tasks.detection import DetectionTask

MASK_THRESHOLD = 0.5  # on Mask R-CNN's mask probabilities, as torchvision's and Detectron2's evaluations do
CHUNK = 16  # masks resized to the original image at a time (bounds memory on large photos)


def masks_at(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary ``(N, H, W)`` masks at ``size`` from ``(N, 1, h, w)`` probabilities (resized, then thresholded)."""
    probabilities = probabilities.detach().float()
    if len(probabilities) == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    parts = []
    for start in range(0, len(probabilities), CHUNK):
        chunk = probabilities[start:start + CHUNK]
        if tuple(chunk.shape[-2:]) != tuple(size):
            chunk = F.interpolate(chunk, size=tuple(size), mode="bilinear", align_corners=False)
        parts.append(chunk[:, 0] > MASK_THRESHOLD)
    return torch.cat(parts).cpu()


def encode_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO compressed RLE (``counts`` as text, JSON-ready) of binary ``(N, H, W)`` masks."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.numpy().transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


class InstanceSegmentationTask(DetectionTask):
    """Mask R-CNN: DetectionTask's training and validation loop, with masks in the results and the pictures.

    Crowd regions are left out of training targets (``DetectionDataset``) and kept in the
    ground truth, where pycocotools ignores detections that fall on them.
    """

    iou_types = ("bbox", "segm")

    def to_results(self, output: dict[str, torch.Tensor], target: dict[str, Any]) -> list[dict[str, Any]]:
        """Boxes as DetectionTask gives them, plus ``segmentation``: RLE of the mask at the original image size."""
        results = super().to_results(output, target)
        for record, rle in zip(results, encode_rle(masks_at(output["masks"], target["orig_size"]))):
            record["segmentation"] = rle
        return results

    def evaluate_results(self, results: list[dict[str, Any]], image_ids: set[int]) -> dict[str, Any]:
        """COCO ``bbox`` and ``segm`` stats (``segm_`` prefix) on the images that were seen.

        Masks are scored without their boxes: pycocotools gives a result that has a ``bbox`` the box's
        area, which would put a mask in its box's small/medium/large range; without it the mask's own
        area counts (as in COCO's published segm results and Detectron2's evaluator).
        """
        ground_truth = self.ground_truth
        if image_ids != {image["id"] for image in ground_truth["images"]}:
            ground_truth = {**ground_truth, "images": [i for i in ground_truth["images"] if i["id"] in image_ids],
                            "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in image_ids]}
        masks_only = [{key: value for key, value in record.items() if key != "bbox"} for record in results]
        metrics: dict[str, Any] = {"scalars": {}, "per_class": {}, "summary": {}, "num_images": len(image_ids)}
        for iou_type, prefix, scored_results in (("bbox", "", results), ("segm", "segm_", masks_only)):
            scored = coco_evaluate(ground_truth, scored_results, iou_type, backend=self.config.eval.backend)
            metrics["scalars"].update({prefix + name: value for name, value in scored["stats"].items()})
            metrics["per_class"][iou_type] = scored["per_class"]
            metrics["summary"][iou_type] = scored["summary"]
            metrics["backend"] = scored["backend"]
        metrics["scalars"]["mAP"] = metrics["scalars"]["AP"]
        return metrics

    def _draw_output(
        self, picture: torch.Tensor, output: dict[str, torch.Tensor], scale: tuple[float, float]
    ) -> torch.Tensor:
        """Masks of the detections above ``eval.score_threshold``, then their boxes (DetectionTask)."""
        keep = output["scores"].detach().cpu() >= self.config.eval.score_threshold
        if keep.any():
            masks = masks_at(output["masks"][keep.to(output["masks"].device)], tuple(picture.shape[-2:]))
            picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors="red")
        return super()._draw_output(picture, output, scale)
