"""Annotations held as columns: what the COCO reader fills at COCO scale instead of one object per annotation.

An ``AnnotationTable`` is a read-only sequence of ``Annotation``: code that
iterates ``index.annotations`` or indexes it gets ``Annotation`` objects built
on demand, while the checks (``cvtrain/curation/columns.py``), ``subset``,
``merge_indexes`` and ``fingerprint`` read the numpy columns directly. Polygons
are one flat coordinate array with per-polygon offsets; RLE and malformed
segmentations (few per dataset) stay Python objects in a dict by row.

Building 860,000 ``Annotation`` objects with their polygon lists costs seconds
and about a gigabyte; the columns of the same annotations cost 80 MB.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, overload

import numpy as np

from cvtrain.data.records import Annotation, Location

NONE, POLYGONS, RLE, OTHER = 0, 1, 2, 3  # segmentation kinds, per row


@dataclass
class AnnotationTable(Sequence[Annotation]):
    """Annotations as columns; row ``r`` is ``table[r]``.

    Attributes:
        id, image_id, category_id: int64 per row.
        bbox: ``(n, 4)`` float64, ``x y w h``.
        area: float64, NaN where the source gave none.
        iscrowd: bool per row.
        kind: int8 per row: ``NONE``, ``POLYGONS``, ``RLE`` or ``OTHER`` (not a segmentation).
        polygon_owner, polygon_start, polygon_length: per polygon: its row, its offset in ``coords``,
            its number of coordinates; rows are ascending.
        coords: ``x1 y1 x2 y2 ...`` of every polygon, concatenated.
        invalid_polygon_rows: rows whose polygon list holds something other than lists of numbers
            (kept as written in ``raw``).
        raw: row -> segmentation as written, for RLE, ``OTHER`` and invalid polygon rows.
        extra: row -> format-specific flags (``Annotation.extra``).
        sources: the files the rows come from; ``source_row`` picks one per row (all rows: the first when None).
    """

    id: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    kind: np.ndarray
    polygon_owner: np.ndarray
    polygon_start: np.ndarray
    polygon_length: np.ndarray
    coords: np.ndarray
    invalid_polygon_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    raw: dict[int, Any] = field(default_factory=dict)
    extra: dict[int, dict[str, Any]] = field(default_factory=dict)
    sources: list[Location | None] = field(default_factory=list)
    source_row: np.ndarray | None = None  # int32 index into ``sources`` per row

    # ------------------------------------------------------------ sequence
    def __len__(self) -> int:
        return len(self.id)

    @overload
    def __getitem__(self, row: int) -> Annotation: ...

    @overload
    def __getitem__(self, row: slice) -> list[Annotation]: ...

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self.annotation(r) for r in range(*row.indices(len(self)))]
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError("annotation row out of range")
        return self.annotation(row)

    def __iter__(self) -> Iterator[Annotation]:
        ids, image_ids, categories = self.id.tolist(), self.image_id.tolist(), self.category_id.tolist()
        boxes, areas, crowd = self.bbox.tolist(), self.area.tolist(), self.iscrowd.tolist()
        polygons = self._polygon_lists()
        for row in range(len(self)):
            area = areas[row]
            yield Annotation(id=ids[row], image_id=image_ids[row], category_id=categories[row], bbox=tuple(boxes[row]),
                             area=None if area != area else area, iscrowd=crowd[row],
                             segmentation=polygons.get(row, self.raw.get(row)), source=self.source(row),
                             extra=self.extra.get(row))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (mutable container, as list)

    def annotation(self, row: int) -> Annotation:
        """The ``Annotation`` of one row, built now (a new object on every call)."""
        area = float(self.area[row])
        return Annotation(id=int(self.id[row]), image_id=int(self.image_id[row]),
                          category_id=int(self.category_id[row]), bbox=tuple(self.bbox[row].tolist()),
                          area=None if area != area else area, iscrowd=bool(self.iscrowd[row]),
                          segmentation=self.segmentation(row), source=self.source(row), extra=self.extra.get(row))

    def source(self, row: int) -> Location | None:
        """The file row ``row`` was read from."""
        if not self.sources:
            return None
        return self.sources[0] if self.source_row is None else self.sources[int(self.source_row[row])]

    def segmentation(self, row: int) -> Any:
        """Row ``row``'s segmentation as COCO writes it: a list of polygons, an RLE dict, or None."""
        kind = int(self.kind[row])
        if kind == NONE:
            return None
        if kind == POLYGONS and row not in self.raw:
            first, last = np.searchsorted(self.polygon_owner, [row, row + 1])
            return [self.coords[s:s + n].tolist() for s, n in
                    zip(self.polygon_start[first:last].tolist(), self.polygon_length[first:last].tolist())]
        return self.raw.get(row)

    def _polygon_lists(self) -> dict[int, list[list[float]]]:
        lists: dict[int, list[list[float]]] = {}
        coords = self.coords.tolist()
        for owner, start, length in zip(self.polygon_owner.tolist(), self.polygon_start.tolist(),
                                        self.polygon_length.tolist()):
            lists.setdefault(owner, []).append(coords[start:start + length])
        return lists

    # --------------------------------------------------------------- views
    def take(self, rows: np.ndarray) -> AnnotationTable:
        """A new table of ``rows`` (ascending row numbers or a boolean mask), renumbered from 0."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, np.int64)
        new_row = np.full(len(self) + 1, -1, np.int64)
        new_row[rows] = np.arange(len(rows))
        keep = new_row[self.polygon_owner] >= 0
        length = self.polygon_length[keep]
        start = self.polygon_start[keep]
        gather = np.repeat(start - _offsets(length), length) + np.arange(int(length.sum()))
        return AnnotationTable(
            id=self.id[rows], image_id=self.image_id[rows], category_id=self.category_id[rows], bbox=self.bbox[rows],
            area=self.area[rows], iscrowd=self.iscrowd[rows], kind=self.kind[rows],
            polygon_owner=new_row[self.polygon_owner[keep]], polygon_start=_offsets(length), polygon_length=length,
            coords=self.coords[gather],
            invalid_polygon_rows=new_row[self.invalid_polygon_rows][new_row[self.invalid_polygon_rows] >= 0],
            raw={int(new_row[r]): v for r, v in self.raw.items() if new_row[r] >= 0},
            extra={int(new_row[r]): v for r, v in self.extra.items() if new_row[r] >= 0},
            sources=self.sources, source_row=None if self.source_row is None else self.source_row[rows],
        )

    def renumbered(self, *, id_offset: int = 0, image_offset: int = 0,
                   category_map: dict[int, int] | None = None) -> AnnotationTable:
        """The same rows with ids and image ids shifted and categories mapped (``merge_indexes``)."""
        category_id = self.category_id
        if category_map:
            keys = np.array(list(category_map), np.int64)
            values = np.array(list(category_map.values()), np.int64)
            order = np.argsort(keys)
            position = np.clip(np.searchsorted(keys[order], category_id), 0, max(len(keys) - 1, 0))
            found = keys[order][position] == category_id
            category_id = np.where(found, values[order][position], category_id)
        return AnnotationTable(
            id=self.id + id_offset, image_id=self.image_id + image_offset, category_id=category_id, bbox=self.bbox,
            area=self.area, iscrowd=self.iscrowd, kind=self.kind, polygon_owner=self.polygon_owner,
            polygon_start=self.polygon_start, polygon_length=self.polygon_length, coords=self.coords,
            invalid_polygon_rows=self.invalid_polygon_rows, raw=self.raw, extra=self.extra, sources=self.sources,
            source_row=self.source_row)

    @staticmethod
    def concatenate(tables: list[AnnotationTable]) -> AnnotationTable:
        """One table of all rows of ``tables``, in order; each row keeps its source file."""
        sizes = [len(t) for t in tables]
        row_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        coord_offset = np.concatenate([[0], np.cumsum([len(t.coords) for t in tables])[:-1]]).astype(np.int64)
        raw: dict[int, Any] = {}
        extra: dict[int, dict[str, Any]] = {}
        for table, offset in zip(tables, row_offset.tolist()):
            raw.update({row + offset: value for row, value in table.raw.items()})
            extra.update({row + offset: value for row, value in table.extra.items()})
        sources: list[Location | None] = []
        source_rows = []
        for table in tables:
            local = table.source_row if table.source_row is not None else np.zeros(len(table), np.int32)
            source_rows.append((local + len(sources)).astype(np.int32))
            sources.extend(table.sources or [None])
        return AnnotationTable(
            id=np.concatenate([t.id for t in tables]), image_id=np.concatenate([t.image_id for t in tables]),
            category_id=np.concatenate([t.category_id for t in tables]),
            bbox=np.concatenate([t.bbox for t in tables]).reshape(-1, 4),
            area=np.concatenate([t.area for t in tables]), iscrowd=np.concatenate([t.iscrowd for t in tables]),
            kind=np.concatenate([t.kind for t in tables]),
            polygon_owner=np.concatenate([t.polygon_owner + o for t, o in zip(tables, row_offset)]),
            polygon_start=np.concatenate([t.polygon_start + o for t, o in zip(tables, coord_offset)]),
            polygon_length=np.concatenate([t.polygon_length for t in tables]),
            coords=np.concatenate([t.coords for t in tables]),
            invalid_polygon_rows=np.concatenate([t.invalid_polygon_rows + o for t, o in zip(tables, row_offset)]),
            raw=raw, extra=extra, sources=sources,
            source_row=np.concatenate(source_rows) if source_rows else None)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of each run given the run lengths."""
    starts = np.zeros(len(lengths), np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def polygon_columns(lists: list[list], rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flatten the polygon lists of ``rows`` (``lists[k]`` belongs to ``rows[k]``).

    Returns:
        ``(owner, start, length, coords, invalid_rows)``; a row whose list holds anything but lists of
        numbers is left out of the flat arrays and listed in ``invalid_rows``.
    """
    rows = np.asarray(rows, np.int64)
    counts = np.fromiter(map(len, lists), np.int64, len(lists))
    flat = list(chain.from_iterable(lists))
    owner = np.repeat(rows, counts)
    try:
        if flat and _types(flat) != {list}:
            raise TypeError
        values = list(chain.from_iterable(flat))
        length = np.fromiter(map(len, flat), np.int64, len(flat))
        # no per-value type scan (it would cost as much as the conversion): numpy refuses lists and dicts;
        # numeric strings are read as their numbers, as the checks have always read them
        coords = np.fromiter(values, np.float64, len(values))
        invalid = np.empty(0, np.int64)
    except (TypeError, ValueError, OverflowError):  # not a flat list of (float-sized) numbers: find which, slowly
        good = np.fromiter((_numeric_list(polygon) for polygon in flat), bool, len(flat))
        invalid = np.unique(owner[~good])
        keep = ~np.isin(owner, invalid)
        flat = [polygon for polygon, kept in zip(flat, keep.tolist()) if kept]
        owner = owner[keep]
        length = np.fromiter(map(len, flat), np.int64, len(flat))
        coords = np.fromiter(chain.from_iterable(flat), np.float64, int(length.sum()))
    return owner, _offsets(length), length, coords, invalid


def _types(values: list) -> set[type]:
    return set(map(type, values))


def _numeric_types(types: set[type]) -> bool:
    """Numbers only (numpy scalars too), no booleans."""
    return all(issubclass(t, (int, float, np.integer, np.floating)) and not issubclass(t, (bool, np.bool_))
               for t in types)


def _numeric_list(polygon: Any) -> bool:
    types = _types(polygon) if type(polygon) is list else {list}
    if not _numeric_types(types):
        return False
    # an integer past float's range (1e400 written out) is not a coordinate
    return int not in types or all(-sys.float_info.max <= v <= sys.float_info.max for v in polygon)


def table_from_annotations(annotations: Sequence[Annotation]) -> AnnotationTable:
    """Columns of a list of ``Annotation`` (for indexes that other readers built as lists)."""
    if isinstance(annotations, AnnotationTable):
        return annotations
    n = len(annotations)
    segmentations = [a.segmentation for a in annotations]
    kind = np.fromiter((NONE if s is None else POLYGONS if type(s) is list else RLE if type(s) is dict else OTHER
                        for s in segmentations), np.int8, n)
    polygon_rows = np.flatnonzero(kind == POLYGONS)
    owner, start, length, coords, invalid = polygon_columns([segmentations[r] for r in polygon_rows.tolist()],
                                                            polygon_rows)
    raw = {row: segmentations[row] for row in np.flatnonzero(kind >= RLE).tolist() + invalid.tolist()}
    sources: dict[Location | None, int] = {}
    source_row = np.fromiter((sources.setdefault(a.source, len(sources)) for a in annotations), np.int32, n)
    return AnnotationTable(
        id=np.fromiter((a.id for a in annotations), np.int64, n),
        image_id=np.fromiter((a.image_id for a in annotations), np.int64, n),
        category_id=np.fromiter((a.category_id for a in annotations), np.int64, n),
        bbox=np.array([a.bbox for a in annotations], np.float64).reshape(n, 4),
        area=np.fromiter((np.nan if a.area is None else a.area for a in annotations), np.float64, n),
        iscrowd=np.fromiter((bool(a.iscrowd) for a in annotations), np.bool_, n),
        kind=kind, polygon_owner=owner, polygon_start=start, polygon_length=length, coords=coords,
        invalid_polygon_rows=invalid, raw=raw, extra={row: a.extra for row, a in enumerate(annotations) if a.extra},
        sources=list(sources), source_row=source_row)
