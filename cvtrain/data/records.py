"""The records of a ``DatasetIndex``: where a record came from, categories, images and annotations.

Their conventions are stated in ``cvtrain.data.index``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was declared: a file and, for text formats, line and column."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text


@dataclass(slots=True)
class Category:
    """A class: its id in the annotation files and its name."""

    id: int
    name: str
    supercategory: str | None = None


@dataclass(slots=True)
class ImageRecord:
    """An image: id, path relative to the root, size, split, mask path and where it was read from."""

    id: int
    file_name: str
    width: int | None = None
    height: int | None = None
    split: str | None = None
    mask_file: str | None = None
    source: Location | None = None
    source_id: Any = None  # the id as written in the source file, when it differs from ``id``
    # format-specific data, e.g. KITTI's DontCare boxes: {"ignore_regions": [(x, y, w, h), ...]}
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Annotation:
    """One object: its image, category, xywh box, crowd flag, segmentation and where it was read from."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float | None = None
    iscrowd: bool = False
    segmentation: Any = None  # polygons (list of lists) or RLE dict, as in COCO
    source: Location | None = None
    extra: dict[str, Any] | None = None  # format-specific flags, e.g. VOC ``difficult``
