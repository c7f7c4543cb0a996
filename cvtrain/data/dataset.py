"""torch Datasets over a ``DatasetIndex``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cvtrain.data.files import inside_root, read_image_reduced
from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.errors import DataError


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """An HWC uint8 array as a CHW float tensor in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)


class DetectionDataset(Dataset):
    """Images with boxes for torchvision detection models.

    Each item is ``(image, target)``: a float CHW tensor in [0, 1] and a dict with
    ``boxes`` (xyxy pixels of the transformed image), ``labels`` (1..K),
    ``image_id`` and ``orig_size``/``size`` as ``(height, width)`` so predictions
    can be mapped back to the original image. Crowd regions are left out of
    training targets (as torchvision's references do) and kept for evaluation.
    Boxes are clipped to the image and those with no area left are dropped; the
    checks report them before training.

    With ``decode_size`` (the transform's longest side), a large JPEG is decoded at a
    reduced scale that still covers it (``data.files.read_image_reduced``) and its boxes
    scaled to match; ``orig_size`` stays the file's size. Instance masks are drawn at
    the file's size, so with ``with_masks`` images are decoded whole.
    """

    def __init__(self, index: DatasetIndex, transform=None, *, with_masks: bool = False,
                 decode_size: int | None = None):
        self.index = index
        self.images: list[ImageRecord] = list(index.images)
        self.transform = transform
        self.with_masks = with_masks
        self.decode_size = None if with_masks else decode_size

    def __len__(self) -> int:
        return len(self.images)

    def load(self, record: ImageRecord) -> tuple[np.ndarray, tuple[int, int]]:
        """The image (maybe reduced) and the file's ``(height, width)``."""
        return read_image_reduced(inside_root(self.index.root, record.file_name), self.decode_size)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[position]
        image, (height, width) = self.load(record)
        boxes, labels, keep = [], [], []
        for annotation in self.index.annotations_by_image.get(record.id, []):
            if annotation.iscrowd:
                continue
            x, y, w, h = annotation.bbox
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(self.index.label_of(annotation.category_id))
            keep.append(annotation)
        if image.shape[:2] != (height, width):  # decoded at a reduced scale
            factors = np.array([image.shape[1] / width, image.shape[0] / height] * 2, dtype=np.float32)
            boxes = [tuple(np.asarray(box, dtype=np.float32) * factors) for box in boxes]
        masks = self.instance_masks(keep, height, width) if self.with_masks else None
        if self.transform is not None:
            extra = {"masks": list(masks)} if masks is not None else {}
            out = self.transform(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                 labels=labels, indices=list(range(len(labels))), **extra)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = list(out["labels"])
            if masks is not None:
                chosen = [int(i) for i in out["indices"]]
                masks = (
                    np.stack([out["masks"][i] for i in chosen]) if chosen else np.zeros((0, *image.shape[:2]), np.uint8)
                )
        target: dict[str, Any] = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "image_id": record.id,
            "orig_size": (height, width),
            "size": tuple(image.shape[:2]),
        }
        if masks is not None:
            target["masks"] = torch.as_tensor(np.asarray(masks), dtype=torch.uint8)
        return to_tensor(image), target

    def instance_masks(self, annotations, height: int, width: int) -> np.ndarray:
        """Binary masks (N, H, W) of the annotations' polygons or RLE."""
        from pycocotools import mask as mask_utils

        masks = np.zeros((len(annotations), height, width), dtype=np.uint8)
        for row, annotation in enumerate(annotations):
            segmentation = annotation.segmentation
            if isinstance(segmentation, list):
                # Polygons of fewer than 3 points cover nothing (pycocotools would read 4 numbers as a box).
                segmentation = [p for p in segmentation if isinstance(p, list) and len(p) >= 6] or None
            if segmentation is None:
                x, y, w, h = (int(round(v)) for v in annotation.bbox)
                masks[row, max(y, 0): y + h, max(x, 0): x + w] = 1  # box-shaped mask when none is given
                continue
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            if list(rle["size"]) != [height, width]:
                raise DataError(
                    f"annotation {annotation.id}: RLE size {list(rle['size'])} is not the image's [{height}, {width}]",
                    where=str(annotation.source or self.index.root),
                    hint="re-encode the mask at the image size",
                )
            masks[row] = mask_utils.decode(rle)
        return masks


def collate(batch):
    """Detection batches are lists: images differ in size and targets in length."""
    return tuple(zip(*batch))
