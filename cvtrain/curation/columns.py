"""Columnar views of a ``DatasetIndex`` for vectorised checks.

The annotation columns are the index's ``AnnotationTable`` when the reader built
one (COCO), else they are pulled out of the annotation objects once
(``table_from_annotations``); every check after it works on numpy arrays.
Polygons are one coordinate array with offsets, so that point counts, extents
and areas are computed with ``reduceat``.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from cvtrain.data.index import DatasetIndex
from cvtrain.data.table import OTHER, POLYGONS, RLE, AnnotationTable, table_from_annotations

NO_IMAGE = -1


@dataclass
class ImageColumns:
    id: np.ndarray  # int64
    width: np.ndarray  # float64, NaN when unknown
    height: np.ndarray
    split: np.ndarray  # int64 index into split_names, -1 when unassigned
    split_names: list[str]

    @classmethod
    def of(cls, index: DatasetIndex) -> ImageColumns:
        images = index.images
        n = len(images)
        names = sorted({image.split for image in images if image.split is not None})
        code = {name: position for position, name in enumerate(names)}
        return cls(
            id=np.fromiter(map(attrgetter("id"), images), np.int64, n),
            width=np.fromiter((np.nan if i.width is None else i.width for i in images), np.float64, n),
            height=np.fromiter((np.nan if i.height is None else i.height for i in images), np.float64, n),
            split=np.fromiter((code.get(i.split, -1) for i in images), np.int64, n),
            split_names=names,
        )

    def split_label(self, row: int) -> str | None:
        return self.split_names[self.split[row]] if row >= 0 and self.split[row] >= 0 else None


@dataclass
class Polygons:
    """Every polygon of every annotation, flattened."""

    owner: np.ndarray  # annotation row of each polygon
    length: np.ndarray  # number of coordinates of each polygon
    start: np.ndarray  # offset of each polygon in ``coords``
    coords: np.ndarray  # x1, y1, x2, y2, ... of all polygons, concatenated
    invalid_rows: np.ndarray  # annotation rows whose polygons are not lists of numbers


@dataclass
class AnnotationColumns:
    id: np.ndarray  # int64
    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray  # (n, 4) float64, x y w h
    area: np.ndarray  # float64, NaN when absent
    iscrowd: np.ndarray  # bool
    image_row: np.ndarray  # row in ImageColumns of the first image with this id, NO_IMAGE when none
    polygon_rows: np.ndarray  # annotation rows with polygon segmentation
    rle_rows: np.ndarray  # annotation rows with RLE segmentation
    other_segmentation_rows: np.ndarray  # neither polygons nor RLE
    table: AnnotationTable  # the columns themselves; ``segmentations[row]`` reads a row's segmentation

    @classmethod
    def of(cls, index: DatasetIndex, images: ImageColumns) -> AnnotationColumns:
        """The index's ``AnnotationTable`` (the COCO reader's), or columns pulled once from its list of objects."""
        table = table_from_annotations(index.annotations)
        return cls(
            id=table.id,
            image_id=table.image_id,
            category_id=table.category_id,
            bbox=table.bbox,
            area=table.area,
            iscrowd=table.iscrowd,
            image_row=lookup_rows(images.id, table.image_id),
            polygon_rows=np.flatnonzero(table.kind == POLYGONS),
            rle_rows=np.flatnonzero(table.kind == RLE),
            other_segmentation_rows=np.flatnonzero(table.kind == OTHER),
            table=table,
        )

    @property
    def segmentations(self) -> _Segmentations:
        return _Segmentations(self.table)

    def polygons(self) -> Polygons:
        table = self.table
        return Polygons(owner=table.polygon_owner, length=table.polygon_length, start=table.polygon_start,
                        coords=table.coords, invalid_rows=table.invalid_polygon_rows)


class _Segmentations:
    def __init__(self, table: AnnotationTable):
        self.table = table

    def __getitem__(self, row: int) -> Any:
        return self.table.segmentation(row)


def lookup_rows(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of the first occurrence of each ``wanted`` value in ``keys``; ``NO_IMAGE`` where absent."""
    if len(keys) == 0:
        return np.full(len(wanted), NO_IMAGE, np.int64)
    order = np.argsort(keys, kind="stable")  # stable: the first occurrence of a duplicated id wins
    sorted_keys = keys[order]
    position = np.searchsorted(sorted_keys, wanted, side="left")
    position = np.minimum(position, len(keys) - 1)
    found = sorted_keys[position] == wanted
    return np.where(found, order[position], NO_IMAGE)


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start offsets of the runs of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.empty(0, np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
