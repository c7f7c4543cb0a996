"""Semantic segmentation data: the torch Dataset over image/mask pairs, and class pixel statistics."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cvtrain.data.dataset import to_tensor
from cvtrain.data.files import ignore_value, inside_root, read_image, read_mask
from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.errors import DataError


class SegmentationDataset(Dataset):
    """Images with class-index masks for torchvision segmentation models.

    Each item is ``(image, target)``: a float CHW tensor in [0, 1] and a dict with
    ``mask`` (int64 ``(H, W)`` of the transformed image; unscored pixels, padding
    included, hold ``ignore_value``), ``image_id`` and ``orig_size``/``size`` as
    ``(height, width)``. With ``keep_original`` the untransformed mask comes along
    as ``orig_mask``, so that metrics are computed at the mask's own resolution.
    """

    def __init__(self, index: DatasetIndex, transform=None, *, palette: dict[int, list[int]] | None = None,
                 keep_original: bool = False):
        self.index = index
        self.images: list[ImageRecord] = list(index.images)
        self.transform = transform
        self.palette = palette
        self.keep_original = keep_original
        self.ignore = ignore_value(index.num_classes, index.ignore_index)

    def __len__(self) -> int:
        return len(self.images)

    def load_mask(self, record: ImageRecord) -> np.ndarray:
        """The class-index mask of ``record`` (read through ``data.files``)."""
        if not record.mask_file:
            raise DataError("image has no mask", where=record.file_name, hint="add its mask or leave the image out")
        if self.index.mask_table is not None:  # label ids -> classes (Cityscapes)
            from cvtrain.data.formats.cityscapes import read_table_mask

            return read_table_mask(inside_root(self.index.root, record.mask_file, "mask"), self.index.mask_table)
        return read_mask(
            inside_root(self.index.root, record.mask_file, "mask"),
            self.index.num_classes,
            self.index.ignore_index,
            self.palette,
        )

    def __getitem__(self, position: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[position]
        image = read_image(inside_root(self.index.root, record.file_name))
        mask = self.load_mask(record)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}",
                            where=record.mask_file, hint="masks must have exactly the image's width and height")
        original = mask
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        target: dict[str, Any] = {
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.int64)),
            "image_id": record.id,
            "orig_size": original.shape[:2],
            "size": tuple(image.shape[:2]),
        }
        if self.keep_original:
            target["orig_mask"] = torch.from_numpy(original.astype(np.int32))  # only compared, never a loss target
        return to_tensor(image), target


def class_pixel_statistics(
    index: DatasetIndex, palette: dict[int, list[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, over the masks of ``index``: its pixels, and all scored pixels of the images it appears in.

    The second count is the denominator of median frequency balancing
    (Eigen & Fergus 2015, as used by SegNet). Masks are read in threads.
    """
    dataset = SegmentationDataset(index, palette=palette)
    classes = index.num_classes

    def count(record: ImageRecord) -> np.ndarray:
        """Class pixel counts of one mask, and the pixels of its image."""
        mask = dataset.load_mask(record)
        return np.bincount(mask[mask < classes].ravel(), minlength=classes)

    pixels = np.zeros(classes, dtype=np.int64)
    image_pixels = np.zeros(classes, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for counts in pool.map(count, index.images):
            pixels += counts
            image_pixels += np.where(counts > 0, counts.sum(), 0)
    return pixels, image_pixels


def class_weights(pixels: np.ndarray, image_pixels: np.ndarray, method: str) -> np.ndarray | None:
    """Cross-entropy weights from class frequencies; ``None`` for ``method='none'``.

    - ``inverse``: ``total / (classes present * pixels of the class)``, so a balanced set gets 1 everywhere;
    - ``median_frequency``: ``median(freq) / freq`` with ``freq = pixels / image_pixels`` (SegNet).

    A class without training pixels gets weight 0: it is never a target, so the weight is never used.
    """
    if method == "none":
        return None
    present = pixels > 0
    weights = np.zeros(len(pixels), dtype=np.float64)
    if not present.any():
        return weights
    if method == "inverse":
        weights[present] = pixels.sum() / (present.sum() * pixels[present])
    elif method == "median_frequency":
        frequency = pixels[present] / image_pixels[present]
        weights[present] = np.median(frequency) / frequency
    else:
        raise ValueError(f"unknown class weighting {method!r}")
    return weights
