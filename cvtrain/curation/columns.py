"""Columnar views of a ``DatasetIndex`` for vectorised checks.

This is the one place that walks the annotation objects: each column is pulled
out with ``map``/``np.fromiter`` once, and every check after it works on numpy
arrays. Polygons are flattened into one coordinate array with offsets so that
point counts, extents and areas are computed with ``reduceat``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from cvtrain.data.index import DatasetIndex

NO_IMAGE = -1


@dataclass
class ImageColumns:
    """The images of an index as NumPy columns (id, size, split), row-aligned with ``index.images``."""

    id: np.ndarray  # int64
    width: np.ndarray  # float64, NaN when unknown
    height: np.ndarray
    split: np.ndarray  # int64 index into split_names, -1 when unassigned
    split_names: list[str]

    @classmethod
    def of(cls, index: DatasetIndex) -> ImageColumns:
        """Build the columns of ``index``."""
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
    """The annotations of an index as NumPy columns (boxes, ids, rows of their images and categories)."""

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
    segmentations: list[Any]  # per annotation, as in the index (None when absent)

    @classmethod
    def of(cls, index: DatasetIndex, images: ImageColumns) -> AnnotationColumns:
        """Build the columns of ``index``."""
        annotations = index.annotations
        n = len(annotations)
        image_id = np.fromiter(map(attrgetter("image_id"), annotations), np.int64, n)
        bbox = np.array(list(map(attrgetter("bbox"), annotations)), dtype=np.float64).reshape(n, 4)
        segmentations = list(map(attrgetter("segmentation"), annotations))
        kinds = np.fromiter((0 if s is None else 1 if type(s) is list else 2 if type(s) is dict else 3
                             for s in segmentations), np.int8, n)
        return cls(
            id=np.fromiter(map(attrgetter("id"), annotations), np.int64, n),
            image_id=image_id,
            category_id=np.fromiter(map(attrgetter("category_id"), annotations), np.int64, n),
            bbox=bbox,
            area=np.fromiter((np.nan if a.area is None else a.area for a in annotations), np.float64, n),
            iscrowd=np.fromiter(map(attrgetter("iscrowd"), annotations), np.bool_, n),
            image_row=lookup_rows(images.id, image_id),
            polygon_rows=np.flatnonzero(kinds == 1),
            rle_rows=np.flatnonzero(kinds == 2),
            other_segmentation_rows=np.flatnonzero(kinds == 3),
            segmentations=segmentations,
        )

    def polygons(self) -> Polygons:
        """Every polygon of every annotation, flattened (built on first use)."""
        rows = self.polygon_rows
        lists = [self.segmentations[row] for row in rows.tolist()]
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        flat = list(itertools.chain.from_iterable(lists))
        owner = np.repeat(rows, counts)
        try:
            length = np.fromiter(map(len, flat), np.int64, len(flat))
            coords = np.fromiter(itertools.chain.from_iterable(flat), np.float64, int(length.sum()))
            invalid = np.empty(0, np.int64)
        except (TypeError, ValueError):  # a polygon that is not a flat list of numbers: find which, slowly
            good = np.array([_numeric_list(polygon) for polygon in flat], dtype=bool)
            invalid = np.unique(owner[~good])
            keep = ~np.isin(owner, invalid)
            flat = [polygon for polygon, kept in zip(flat, keep) if kept]
            owner = owner[keep]
            length = np.fromiter(map(len, flat), np.int64, len(flat))
            coords = np.fromiter(itertools.chain.from_iterable(flat), np.float64, int(length.sum()))
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64) if len(length) else length
        return Polygons(owner=owner, length=length, start=start, coords=coords, invalid_rows=invalid)


def _numeric_list(polygon: Any) -> bool:
    return isinstance(polygon, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)


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
