"""Object detection (and, through ``iou_types``, instance segmentation) as a LightningModule."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import draw_bounding_boxes

from cvtrain.config import Config
from cvtrain.evaluation.coco import coco_evaluate
from cvtrain.models import build_model
from cvtrain.tasks.common import clip_gradients, configure_optimization, gather_by_image, keep_step_losses


class DetectionTask(pl.LightningModule):
    """Trains a torchvision detector and scores it with pycocotools every validation epoch.

    The checkpoint carries the resolved config, the class names and the dataset's
    category ids, so ``evaluate`` and ``predict`` need nothing else to rebuild it.
    """

    iou_types: tuple[str, ...] = ("bbox",)
    monitor = "val/mAP"

    def __init__(self, config: dict[str, Any], class_names: list[str], category_ids: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.config = Config.model_validate(config)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.model = build_model(self.config.model, len(class_names), self.config.train.image_size)
        self._results: list[tuple[int, list[dict[str, Any]]]] = []
        self._logged_images: list[torch.Tensor] = []
        self.last_metrics: dict[str, Any] = {}
        self.ground_truth: dict[str, Any] | None = None  # COCO dict of the validation split

    def prepare(self, *, train_index: Any = None, val_index: Any = None) -> None:
        """Take what validation scores against: the validation split's ground truth as a COCO dict.

        Args:
            train_index: the training split (``DatasetIndex``); detection needs nothing from it.
            val_index: the validation split; without it validation computes no metrics.
        """
        if val_index is not None:
            self.ground_truth = val_index.to_coco()

    # ---------------------------------------------------------------- training
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        images, targets = batch
        targets = [self._model_target(target) for target in targets]
        losses = self.model(list(images), targets)
        # Sum in float32 whatever autocast produced: small FP16 terms would round away.
        losses = {name: value.float() for name, value in losses.items()}
        loss = torch.stack(list(losses.values())).sum()
        keep_step_losses(self, loss, losses)
        return loss

    def _model_target(self, target: dict[str, Any]) -> dict[str, torch.Tensor]:
        keep = {"boxes": target["boxes"], "labels": target["labels"]}
        if "masks" in target:
            keep["masks"] = target["masks"]
        return keep

    def configure_optimizers(self):
        return configure_optimization(self, self.config)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._results = []
        self._logged_images = []

    def validation_step(self, batch, batch_index: int) -> None:
        images, targets = batch
        outputs = self.model(list(images))
        for image, output, target in zip(images, outputs, targets):
            self._results.append((target["image_id"], self.to_results(output, target)))
            if len(self._logged_images) < self.config.eval.num_log_images and self.global_rank == 0:
                self._logged_images.append(self.draw(image, output, target))

    def to_results(self, output: dict[str, torch.Tensor], target: dict[str, Any]) -> list[dict[str, Any]]:
        """COCO results in the original image's pixels and the dataset's category ids."""
        (orig_h, orig_w), (h, w) = target["orig_size"], target["size"]
        boxes = output["boxes"].detach().float().cpu()
        boxes = boxes * torch.tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
        results = []
        for box, label, score in zip(boxes.tolist(), output["labels"].tolist(), output["scores"].tolist()):
            x0, y0, x1, y1 = box
            results.append({"image_id": target["image_id"], "category_id": self.category_ids[label - 1],
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(score), 5)})
        return results

    def on_validation_epoch_end(self) -> None:
        gathered = gather_by_image(self._results)
        metrics: dict[str, Any] = {}
        if self.global_rank == 0 and self.ground_truth is not None:
            results = [r for _, per_image in gathered for r in per_image]
            metrics = self.evaluate_results(results, {image_id for image_id, _ in gathered})
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.last_metrics = metrics
        for name, value in metrics.get("scalars", {}).items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        if self.global_rank == 0 and self._logged_images and self.logger is not None:
            for position, picture in enumerate(self._logged_images):
                self.logger.experiment.add_image(f"val/image_{position}", picture, self.global_step)
        self._results = []

    def evaluate_results(self, results: list[dict[str, Any]], image_ids: set[int]) -> dict[str, Any]:
        """pycocotools on the images that were seen (all of them, except in a limited smoke run)."""
        ground_truth = self.ground_truth
        if image_ids != {image["id"] for image in ground_truth["images"]}:
            ground_truth = {**ground_truth,
                            "images": [i for i in ground_truth["images"] if i["id"] in image_ids],
                            "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in image_ids]}
        metrics: dict[str, Any] = {"scalars": {}, "per_class": {}, "num_images": len(image_ids)}
        for iou_type in self.iou_types:
            scored = coco_evaluate(ground_truth, results, iou_type, backend=self.config.eval.backend)
            prefix = "" if iou_type == "bbox" else "segm_"
            metrics["scalars"].update({prefix + name: value for name, value in scored["stats"].items()})
            metrics["per_class"][iou_type] = scored["per_class"]
            metrics.setdefault("summary", {})[iou_type] = scored["summary"]
            metrics["backend"] = scored["backend"]  # pycocotools or faster (eval.backend)
        metrics["scalars"]["mAP"] = metrics["scalars"]["AP"]
        return metrics

    def draw(self, image: torch.Tensor, output: dict[str, torch.Tensor], target: dict[str, Any]) -> torch.Tensor:
        """Ground truth in green, predictions above ``eval.score_threshold`` in red."""
        picture = (image.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8)
        if len(target["boxes"]):
            picture = draw_bounding_boxes(picture, target["boxes"].cpu(), colors="lime",
                                          labels=[self.class_names[i - 1] for i in target["labels"].tolist()])
        return self._draw_output(picture, output, scale=(1.0, 1.0))

    def draw_prediction(
        self, original: torch.Tensor, output: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> torch.Tensor:
        """Predictions drawn on the original image (``output`` is in the resized image's pixels)."""
        (orig_h, orig_w), (h, w) = meta["orig_size"], meta["size"]
        picture = (original.clamp(0, 1) * 255).to(torch.uint8)
        return self._draw_output(picture, output, scale=(orig_w / w, orig_h / h))

    def _draw_output(
        self, picture: torch.Tensor, output: dict[str, torch.Tensor], scale: tuple[float, float]
    ) -> torch.Tensor:
        keep = output["scores"].detach().cpu() >= self.config.eval.score_threshold
        if keep.any():
            sx, sy = scale
            boxes = output["boxes"].detach().float().cpu()[keep] * torch.tensor([sx, sy, sx, sy])
            labels = [f"{self.class_names[i - 1]} {s:.2f}"
                      for i, s in zip(output["labels"][keep].tolist(), output["scores"][keep].tolist())]
            picture = draw_bounding_boxes(picture, boxes, colors="red", labels=labels, width=2)
        return picture
