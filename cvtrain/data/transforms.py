"""albumentations pipelines built from the spec's ``augment`` section.

Boxes (``pascal_voc`` pixels) and masks move with the image. Training resizes
the longest side to ``train.image_size`` and then jitters scale, flips and
colour; validation and prediction only resize, so predictions map back to the
original image by one scale factor per axis.
"""
from __future__ import annotations

import warnings

import albumentations as A
import cv2


def _bbox_params(augment) -> A.BboxParams:
    return A.BboxParams(format="pascal_voc", label_fields=["labels", "indices"], min_visibility=augment.min_visibility)


def build_train_transform(augment, image_size: int, with_boxes: bool = True, mask_fill: int = 0) -> A.Compose:
    """The training augmentation of the spec's ``augment`` section, ending at ``image_size`` (longest side)."""
    steps: list = [A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_LINEAR)]
    low, high = augment.scale
    if (low, high) != (1.0, 1.0):
        # Scale jitter must survive the model's own resize, so the jittered image is
        # cropped or padded back to a fixed square canvas (large-scale-jitter style).
        steps += [
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
            A.RandomCrop(image_size, image_size, pad_if_needed=True, pad_position="random",
                         border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=mask_fill),
        ]
    if augment.hflip:
        steps.append(A.HorizontalFlip(p=augment.hflip))
    if augment.vflip:
        steps.append(A.VerticalFlip(p=augment.vflip))
    if augment.color_jitter or augment.hue:
        c = augment.color_jitter
        steps.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=augment.hue, p=0.8))
    return _compose(steps, augment if with_boxes else None)


def build_eval_transform(augment, image_size: int, with_boxes: bool = True) -> A.Compose:
    """Validation and prediction: resize so the longest side is ``image_size``, nothing random."""
    return _compose(
        [A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_LINEAR)], augment if with_boxes else None
    )


def _compose(steps: list, augment) -> A.Compose:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # albumentations' notices about its own update checks
        if augment is None:
            return A.Compose(steps)
        return A.Compose(steps, bbox_params=_bbox_params(augment))
