"""Semantic segmentation as a LightningModule: cross-entropy with ignore_index, mIoU every validation epoch."""
from __future__ import annotations

import inspect
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from cvtrain.atomic import write_bytes
from cvtrain.config import Config
from cvtrain.data.files import ignore_value, mask_dtype
from cvtrain.evaluation.segmentation import (
    confusion_matrix,
    majority_confusion,
    segmentation_metrics,
    sum_sparse,
    to_sparse,
)
from cvtrain.models import MODELS, build_model
from cvtrain.tasks.common import clip_gradients, configure_optimization, gather_by_image, keep_step_losses

log = logging.getLogger("cvtrain")

# torchvision's segmentation weights were trained on ImageNet-normalised inputs; its models do not normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
AUX_WEIGHT = 0.5  # torchvision's segmentation reference weighs the auxiliary head's loss by half


def colour_table(num_classes: int, palette: dict[int, list[int]] | None = None) -> np.ndarray:
    """``(K + 1, 3)`` uint8 colours: ``data.palette`` where given, else Pascal VOC's colour map; the last row
    (black) is for unscored pixels."""
    table = np.zeros((num_classes + 1, 3), dtype=np.uint8)
    for label in range(num_classes):
        value, colour = label + 1, [0, 0, 0]  # VOC's map, shifted by one so that no class is black
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        table[label] = (palette or {}).get(label, colour)
    return table


def colourise(mask: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` colours of a class-index mask; values that are not classes are black."""
    return table[np.minimum(mask, len(table) - 1)]


def pad_stack(tensors: list[torch.Tensor], fill: float) -> torch.Tensor:
    """Stack ``(..., h, w)`` tensors of different sizes, padding bottom and right with ``fill``."""
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], height, width), fill)
    for row, tensor in enumerate(tensors):
        batch[row, ..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return batch


class SegmentationTask(pl.LightningModule):
    """Trains a torchvision segmentation model and scores it with mIoU every validation epoch.

    The checkpoint carries the resolved config, the class names and ids, and the
    training masks' class pixel counts (the majority-class baseline and the class
    weights come from them), so ``evaluate`` and ``predict`` need nothing else.
    """

    monitor = "val/mIoU"
    channels_last = False  # set by the engine with train.channels_last: the input batch then matches the weights

    def __init__(self, config: dict[str, Any], class_names: list[str], category_ids: list[int]):
        super().__init__()
        self.save_hyperparameters()
        self.config = Config.model_validate(config)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        classes = len(class_names)
        self.ignore = ignore_value(classes, self.config.data.ignore_index)
        self.model = build_model(_with_aux_loss(self.config.model), classes, self.config.train.image_size)
        if not (self.config.model.weights or self.config.model.backbone_weights):
            _track_batchnorm(self.model)
        self.register_buffer("train_pixels", torch.zeros(classes, dtype=torch.float64))
        self.register_buffer("class_weight", torch.ones(classes))
        self.register_buffer("mean", torch.tensor(MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(3, 1, 1), persistent=False)
        self.colours = colour_table(classes, self.config.data.palette)
        self._confusions: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = []
        self._logged_images: list[torch.Tensor] = []
        self.last_metrics: dict[str, Any] = {}

    def prepare(self, *, train_index: Any = None, val_index: Any = None) -> None:
        """Count the training masks' class pixels (the majority baseline and the class weights come from them).

        Args:
            train_index: the training split (``DatasetIndex``); None for evaluation, where the counts come
                with the checkpoint.
            val_index: the validation split; segmentation scores from the masks in the batches instead.
        """
        if train_index is None:
            return
        from cvtrain.data.segmentation import class_pixel_statistics, class_weights

        pixels, image_pixels = class_pixel_statistics(train_index, self.config.data.palette)
        self.train_pixels.copy_(torch.from_numpy(pixels.astype(np.float64)))
        weights = class_weights(pixels, image_pixels, self.config.train.class_weights)
        if weights is not None:
            self.class_weight.copy_(torch.from_numpy(weights.astype(np.float32)))
            log.info("class weights (%s): %s", self.config.train.class_weights,
                     ", ".join(f"{n} {w:.3f}" for n, w in zip(self.class_names, weights)))

    # ---------------------------------------------------------------- forward
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image, class logits ``(K, h, w)`` over that image (padding cut off)."""
        logits = self.model(self._batch(images))["out"]
        return [{"logits": logits[row, :, : image.shape[-2], : image.shape[-1]]} for row, image in enumerate(images)]

    def _batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        batch = pad_stack([(image - self.mean) / self.std for image in images], 0.0)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def predict_mask(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Class indices ``(H, W)`` at ``size``: logits are resized bilinearly before the argmax."""
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
        return logits.argmax(0)

    # --------------------------------------------------------------- training
    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        images, targets = batch
        masks = pad_stack([target["mask"] for target in targets], self.ignore)
        outputs = self.model(self._batch(list(images)))
        weight = self.class_weight if self.config.train.class_weights != "none" else None
        losses = {f"loss_{name}": self._loss(logits, masks, weight) for name, logits in outputs.items()}
        loss = losses["loss_out"] + AUX_WEIGHT * losses.get("loss_aux", 0.0)
        keep_step_losses(self, loss, losses)
        return loss

    def _loss(self, logits: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy's mean over the scored pixels (weighted: over their class weights), as
        ``F.cross_entropy(reduction="mean")``, but 0 rather than NaN for a batch with no scored pixel, and
        without asking the device whether there is one (which would make every step wait for the GPU)."""
        # float32 whatever autocast produced: softmax over FP16 logits loses the small classes.
        total = F.cross_entropy(logits.float(), masks, weight=weight, ignore_index=self.ignore, reduction="sum")
        scored = masks != self.ignore
        if weight is None:
            count = scored.sum().float()
        else:
            count = (weight[torch.where(scored, masks, 0)] * scored).sum()
        return total / count.clamp_min(1e-12)

    def configure_optimizers(self):
        return configure_optimization(self, self.config)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._confusions = []
        self._logged_images = []

    def validation_step(self, batch, batch_index: int) -> None:
        images, targets = batch
        outputs = self(list(images))
        classes = len(self.class_names)
        for image, output, target in zip(images, outputs, targets):
            truth = target["orig_mask"]
            prediction = self.predict_mask(output["logits"], truth.shape[-2:])
            self._confusions.append((target["image_id"], to_sparse(confusion_matrix(truth, prediction, classes))))
            if len(self._logged_images) < self.config.eval.num_log_images and self.global_rank == 0:
                self._logged_images.append(self.draw(image, output["logits"].argmax(0), target["mask"]))

    def on_validation_epoch_end(self) -> None:
        # Every rank gathers every image's matrix once (the sampler's padding repeats images), so all agree.
        gathered = gather_by_image(self._confusions)
        confusion = sum_sparse((cells for _, cells in gathered), len(self.class_names))
        metrics = self.evaluate_confusion(confusion)
        metrics["num_images"] = len(gathered)
        self.last_metrics = metrics
        for name, value in metrics["scalars"].items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        if self.global_rank == 0 and self.logger is not None:
            for name, value in metrics["per_class"]["IoU"].items():
                if value is not None:
                    self.logger.experiment.add_scalar(f"val_IoU/{name}", value, self.global_step)
            for position, picture in enumerate(self._logged_images):
                self.logger.experiment.add_image(f"val/image_{position}", picture, self.global_step)
        self._confusions = []

    def evaluate_confusion(self, confusion: np.ndarray) -> dict[str, Any]:
        """Metrics of ``confusion``, with the majority-class baseline beside them when training counts are known."""
        metrics = segmentation_metrics(confusion, self.class_names)
        if self.train_pixels.sum() > 0:
            majority = int(self.train_pixels.argmax())
            baseline = segmentation_metrics(majority_confusion(confusion, majority), self.class_names)["scalars"]
            metrics["scalars"]["baseline_mIoU"] = baseline["mIoU"]
            metrics["scalars"]["baseline_pixel_accuracy"] = baseline["pixel_accuracy"]
            metrics["baseline"] = {"predicts": self.class_names[majority], **baseline}
        return metrics

    def draw(self, image: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """The image, the true mask and the predicted mask side by side (CHW uint8)."""
        picture = (image.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        panels = [
            picture,
            colourise(truth.cpu().numpy(), self.colours),
            colourise(prediction.cpu().numpy(), self.colours),
        ]
        return torch.from_numpy(np.concatenate(panels, axis=1)).permute(2, 0, 1)

    # ---------------------------------------------------------------- predict
    def write_prediction(self, path: Path, original: np.ndarray, output: dict[str, torch.Tensor], meta: dict[str, Any],
                         out_dir: Path) -> list[dict[str, Any]]:
        """Write ``masks/<stem>.png`` (class indices), ``colour/<stem>.png`` and ``images/<stem>.jpg`` (overlay)."""
        prediction = self.predict_mask(output["logits"], meta["orig_size"]).cpu().numpy()
        prediction = prediction.astype(mask_dtype(len(self.class_names), self.config.data.ignore_index))
        colour = colourise(prediction, self.colours)
        files = {
            "mask": f"masks/{path.stem}.png",
            "colour_mask": f"colour/{path.stem}.png",
            "overlay": f"images/{path.stem}.jpg",
        }
        overlay = (0.5 * original.astype(np.float32) + 0.5 * colour).astype(np.uint8)
        pictures = [("mask", prediction, {"format": "PNG"}), ("colour_mask", colour, {"format": "PNG"}),
                    ("overlay", overlay, {"format": "JPEG", "quality": 90})]
        for key, picture, options in pictures:
            encoded = io.BytesIO()
            Image.fromarray(picture).save(encoded, **options)
            write_bytes(out_dir / files[key], encoded.getbuffer())  # atomically, creating the folder
        counts = np.bincount(prediction.ravel(), minlength=len(self.class_names))
        return [{"image_id": meta["image_id"], "file_name": path.name, **files,
                 "pixels": {name: int(count) for name, count in zip(self.class_names, counts) if count}}]


def _track_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm momentum 0.1 (PyTorch's default) where torchvision set less, for models trained from scratch.

    MobileNetV3's BatchNorm keeps 99 % of its running statistics each step (momentum 0.01), tuned for
    long ImageNet schedules. From random weights in a short run the statistics lag far behind the
    weights, and evaluation, which uses them, predicts one class everywhere.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (module.momentum or 0.1) < 0.1:
            module.momentum = 0.1


def _with_aux_loss(model_config):
    """DeepLabV3 and FCN train with their auxiliary head unless the spec says otherwise (as torchvision's reference)."""
    builder = MODELS[model_config.name].builder
    if "aux_loss" in inspect.signature(builder).parameters and "aux_loss" not in model_config.options:
        return model_config.model_copy(update={"options": {**model_config.options, "aux_loss": True}})
    return model_config
