"""COCO JSON (detection and instance segmentation) into a ``DatasetIndex``.

The file is decoded by msgspec straight into typed records (``_File``): one pass that parses and checks
every id, box, size and polygon type, about as fast as orjson's untyped parse and with half its peak memory
(no intermediate document). The annotations then go into an ``AnnotationTable`` (numpy columns, polygons as
one flat array) in a few whole-list passes, with the garbage collector paused while millions of objects live.
A file msgspec refuses (a syntax error, NaN literals, a byte-order mark, a value of the wrong type, a box
missing) is parsed again by ``json`` and read record by record, which names the first bad record and field
in the same words as before, or keeps what the checks report (an invalid segmentation) for ``cvtrain check``.
"""
from __future__ import annotations

import gc
import json
import math
import posixpath
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from cvtrain.data.formats import register_reader
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord, Location
from cvtrain.data.table import NONE, POLYGONS, RLE, AnnotationTable, polygon_columns, table_from_annotations
from cvtrain.errors import DataError, kind_of, name_problem, shown

HINT = "see https://cocodataset.org/#format-data for the layout"
INT64 = (-(2**63), 2**63 - 1)


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while millions of acyclic containers are created (it would rescan them all)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_json(path: Path) -> Any:
    """Parse a JSON file with ``json``, turning every way it can fail into one ``DataError`` line."""
    if not path.is_file():
        raise DataError("annotation file not found", where=str(path),
                        hint="check data.root and the annotation path in the spec")
    raw = path.read_bytes()
    if not raw or raw.isspace():
        raise DataError("annotation file is empty", where=str(path), hint="export the annotations again")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not UTF-8 text (byte {error.start} is 0x{raw[error.start]:02x})",
            where=str(path),
            hint="JSON must be UTF-8; re-save the file as UTF-8",
        ) from None
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error.msg}", where=f"{path}:{error.lineno}:{error.colno}",
                        hint="fix the syntax at that position") from None
    except RecursionError:
        raise DataError("JSON nested too deeply", where=str(path), hint="this is not a COCO annotation file") from None


def _parse_int(digits: str) -> int:
    """``int(digits)``; past Python's 4300-digit limit (a ValueError) a number of as many digits, for the message."""
    if len(digits) <= 4300:
        return int(digits)
    return (-1 if digits.startswith("-") else 1) * 10 ** (len(digits.lstrip("-")) - 1)


def _number(value: Any) -> bool:
    """A JSON number usable as a float: not a boolean, not an integer too large for one (``float`` raises)."""
    return type(value) is float or (type(value) is int and -sys.float_info.max <= value <= sys.float_info.max)


def _integer(value: Any) -> bool:
    return type(value) is int and INT64[0] <= value <= INT64[1]


def _whole(value: Any) -> bool:
    """An integer in int64, or a float with an integer value (640.0)."""
    return _integer(value) or (type(value) is float and math.isfinite(value) and value.is_integer()
                               and INT64[0] <= value <= INT64[1])


def _not_integer(value: Any) -> str:
    """``1e+400 (more than 64 bits)``: a value that is not an id or size, as messages show it."""
    return f"{shown(value)} (more than 64 bits)" if type(value) is int and not _integer(value) else shown(value)


def _instead(raw: Any) -> str:
    """``, not 'x'`` after ``needs an integer 'id'``: the id the record has, if it has one."""
    if not isinstance(raw, dict):
        return f", and is {kind_of(raw)}, not an object"
    if "id" not in raw:
        return ""
    return f", not {_not_integer(raw['id'])}"


def _require(condition: bool, path: Path, what: str, hint: str = HINT) -> None:
    if not condition:
        raise DataError(what, where=str(path), hint=hint)


def _types(values: list) -> set[type]:
    return set(map(type, values))


class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int | float | None = None
    height: int | float | None = None
    ignore_regions: Any = None  # KITTI DontCare boxes, as cvtrain's COCO writer keeps them


class _Category(msgspec.Struct, gc=False):
    id: int
    name: str
    supercategory: Any = None


class _Annotation(msgspec.Struct, gc=False):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float | None = None
    iscrowd: int | bool | float | None = 0
    segmentation: list[list[float]] | dict | None = None
    attributes: Any = None


class _File(msgspec.Struct, gc=False):
    images: list[_Image]
    categories: list[_Category]
    annotations: list[_Annotation]  # required: a file without it is refused by the record-by-record reader


_DECODER = msgspec.json.Decoder(_File)


@register_reader("coco")
def read_coco(annotation_file: Path, *, root: Path, images: str | None = "", **_: Any) -> DatasetIndex:
    """Read a COCO annotation file.

    Args:
        annotation_file: the ``instances_*.json`` file.
        root: dataset root; image paths in the index are relative to it.
        images: image folder relative to ``root`` that ``file_name`` is relative to.

    Returns:
        A ``DatasetIndex`` whose ``annotations`` is an ``AnnotationTable``. An annotation's ``attributes``
        object (as CVAT and datumaro write it) becomes its ``extra``.

    Raises:
        DataError: the file is missing, empty, not JSON, or a record lacks a field or has one of the
            wrong type (naming the record, e.g. ``annotations[12] (id 7): 'bbox' is ...``).
    """
    if not annotation_file.is_file():
        raise DataError("annotation file not found", where=str(annotation_file),
                        hint="check data.root and the annotation path in the spec")
    source = Location(str(annotation_file))
    # No garbage collection while the decoded records live: the collector would scan their millions of
    # (acyclic) lists again and again, during the decode and once more afterwards.
    with paused_gc():
        try:
            decoded = _DECODER.decode(annotation_file.read_bytes())
            categories, records, table = _from_records(decoded, images or "", source)
        except (msgspec.DecodeError, _Slow):
            decoded = None
        if decoded is None:
            categories, records, table = _from_json(annotation_file, images or "", source)
        else:
            # The few objects kept from the decode (RLE dicts, attributes) sit among the freed records and
            # would keep the memory of all of them from being returned: keep copies made after the free.
            kept = msgspec.json.encode([list(table.raw.items()), list(table.extra.items())])
            table.raw = table.extra = {}
            del decoded
            raw, extra = msgspec.json.decode(kept)
            table.raw, table.extra = dict(raw), dict(extra)
    _require(bool(records), annotation_file, "the file lists no images",
             hint="check that it is the dataset's annotation file; COCO lists every image under 'images'")
    seen: dict[int, str] = {}
    for category in categories:
        _require(category.id not in seen, annotation_file, f"category id {category.id} is declared twice "
                 f"({shown(seen.get(category.id))} and {shown(category.name)})",
                 hint="give every category its own id")
        seen[category.id] = category.name
    return DatasetIndex(root=root, categories=categories, images=records, annotations=table, task="detection",
                        sources=[str(annotation_file)], format="coco")


class _Slow(Exception):
    """Something the typed records do not settle: read the file record by record."""


def _from_records(decoded: _File, image_dir: str, source: Location):
    if not _in_int64([c.id for c in decoded.categories]):  # msgspec's int is any size
        raise _Slow
    categories = [Category(c.id, c.name, c.supercategory) for c in decoded.categories]
    records = _images(decoded.images, image_dir, source)
    table = _table(decoded.annotations, source)
    return categories, records, table


def _from_json(path: Path, image_dir: str, source: Location):
    data = load_json(path)
    _require(isinstance(data, dict), path,
             f"top level is {kind_of(data)}, expected an object with 'images' and 'categories'")
    for key in ("images", "categories"):
        _require(key in data, path, f"missing key '{key}'")
        _require(isinstance(data[key], list), path, f"'{key}' is {kind_of(data[key])}, expected a list")
    categories = _categories(data["categories"], path)
    records = _images_slowly(data["images"], path, image_dir, source)
    _require("annotations" in data, path, "missing key 'annotations'",
             hint='a COCO file for training lists its annotations; write "annotations": [] if the images have none')
    raw_annotations = data["annotations"]
    _require(isinstance(raw_annotations, list), path,
             f"'annotations' is {kind_of(raw_annotations)}, expected a list")
    table = table_from_annotations(_annotations_slowly(raw_annotations, path, source))
    return categories, records, table


def _categories(raw_categories: list, path: Path) -> list[Category]:
    categories = []
    for position, raw in enumerate(raw_categories):
        _require(isinstance(raw, dict) and _integer(raw.get("id")), path,
                 f"categories[{position}] needs an integer 'id'{_instead(raw)}")
        _require(isinstance(raw.get("name"), str), path, f"category id {raw['id']} needs a string 'name'")
        categories.append(Category(raw["id"], raw["name"], raw.get("supercategory")))
    return categories


# ----------------------------------------------------------------------- images
def _images(images: list[_Image], image_dir: str, source: Location) -> list[ImageRecord]:
    ids = list(map(attrgetter("id"), images))
    names = list(map(attrgetter("file_name"), images))
    sizes = [list(map(attrgetter(name), images)) for name in ("width", "height")]
    if "" in names or not _in_int64(ids) or any(name_problem(name) for name in names):
        raise _Slow
    for values in sizes:
        if float in _types(values):  # 640.0 is a size, 640.5 is not
            if not all(v is None or float(v).is_integer() for v in values):
                raise _Slow
            values[:] = [v if v is None else int(v) for v in values]
        if not _in_int64([v for v in values if v is not None]):  # 1e300 or 10**400: refused record by record
            raise _Slow
        if any(v is not None and v < 0 for v in values):  # refused record by record
            raise _Slow
        values[:] = [v or None for v in values]  # 0: unknown, as exporters write it; the file's size is used
    base = posixpath.normpath(image_dir) if image_dir else "."
    prefix = "" if base == "." else base + "/"
    records = [ImageRecord(id=i, file_name=_join(prefix, image_dir, name), width=w, height=h, source=source)
               for i, name, w, h in zip(ids, names, *sizes)]
    for image, record in zip(images, records):
        if image.ignore_regions is not None:
            _set_ignore_regions(record, image.ignore_regions)
    return records


def _set_ignore_regions(record: ImageRecord, regions: Any) -> None:
    """``ignore_regions`` of an image record (KITTI DontCare boxes); anything but a list of boxes is ignored."""
    if isinstance(regions, list) and regions and all(isinstance(box, list) and len(box) == 4 and
                                                     all(_number(v) for v in box) for box in regions):
        record.extra = {"ignore_regions": [tuple(float(v) for v in box) for box in regions]}


def _join(prefix: str, image_dir: str, name: str) -> str:
    if not image_dir:
        return name
    if "/." in "/" + name or "//" in name or name.startswith("/") or name.endswith("/"):
        return posixpath.normpath(posixpath.join(image_dir, name))
    return prefix + name


def _in_int64(values: list[int]) -> bool:
    return not values or (INT64[0] <= min(values) and max(values) <= INT64[1])


def _images_slowly(raw_images: list, path: Path, image_dir: str, source: Location) -> list[ImageRecord]:
    """Record by record, naming the first bad one (floats like 640.0 are accepted as sizes)."""
    records = []
    for position, raw in enumerate(raw_images):
        _require(isinstance(raw, dict) and _integer(raw.get("id")), path,
                 f"images[{position}] needs an integer 'id'{_instead(raw)}")
        _require(isinstance(raw.get("file_name"), str) and raw["file_name"] != "",
                 path, f"image id {raw['id']} needs a non-empty string 'file_name'")
        problem = name_problem(raw["file_name"])
        _require(problem is None, path, f"image id {raw['id']}: 'file_name' {shown(raw['file_name'])} {problem}",
                 hint="fix the exporter's output: file names are text, without NUL or lone surrogate characters")
        width, height = raw.get("width"), raw.get("height")
        for name, value in (("width", width), ("height", height)):
            _require(value is None or (_whole(value) and value >= 0), path,
                     f"image id {raw['id']}: '{name}' is {_not_integer(value)}, expected a size in pixels (0 or more)")
        records.append(ImageRecord(
            id=raw["id"],
            file_name=posixpath.normpath(posixpath.join(image_dir, raw["file_name"])) if image_dir
            else raw["file_name"],
            width=int(width) or None if width is not None else None,  # 0: unknown, the file's size is used
            height=int(height) or None if height is not None else None,
            source=source,
        ))
    for raw, record in zip(raw_images, records):
        if raw.get("ignore_regions") is not None:
            _set_ignore_regions(record, raw["ignore_regions"])
    return records


# ------------------------------------------------------------------ annotations
def _table(annotations: list[_Annotation], source: Location) -> AnnotationTable:
    n = len(annotations)
    ids, image_ids, category_ids = (list(map(attrgetter(name), annotations))
                                    for name in ("id", "image_id", "category_id"))
    if not (_in_int64(ids) and _in_int64(image_ids) and _in_int64(category_ids)):
        raise _Slow
    columns = [np.array(values, np.int64).reshape(n) for values in (ids, image_ids, category_ids)]
    del ids, image_ids, category_ids
    bbox = np.fromiter(chain.from_iterable(map(attrgetter("bbox"), annotations)), np.float64, 4 * n).reshape(n, 4)
    areas = list(map(attrgetter("area"), annotations))
    area = np.array([math.nan if v is None else v for v in areas] if None in areas else areas, np.float64).reshape(n)
    del areas
    crowd = list(map(attrgetter("iscrowd"), annotations))
    if not set(crowd) <= {0, 1, None}:  # True and False are 1 and 0 here; anything else is named record by record
        raise _Slow
    iscrowd = np.array([bool(v) for v in crowd], bool) if None in crowd else np.array(crowd).astype(bool).reshape(n)
    del crowd
    segmentations = list(map(attrgetter("segmentation"), annotations))
    kind = np.fromiter((NONE if s is None else (POLYGONS if s else NONE) if type(s) is list else (RLE if s else NONE)
                        for s in segmentations), np.int8, n)
    polygon_rows = np.flatnonzero(kind == POLYGONS)
    owner, start, length, coords, invalid = polygon_columns([segmentations[r] for r in polygon_rows.tolist()],
                                                            polygon_rows)
    stored = {row: segmentations[row] for row in np.flatnonzero(kind == RLE).tolist()}
    del segmentations
    attributes = [(row, a.attributes) for row, a in enumerate(annotations) if a.attributes is not None]
    extra = {row: value for row, value in attributes if isinstance(value, dict) and value}
    return AnnotationTable(
        id=columns[0], image_id=columns[1], category_id=columns[2], bbox=bbox, area=area, iscrowd=iscrowd, kind=kind,
        polygon_owner=owner, polygon_start=start, polygon_length=length, coords=coords, invalid_polygon_rows=invalid,
        raw=stored, extra=extra, sources=[source])


def _annotations_slowly(raw_annotations: list, path: Path, source: Location) -> list[Annotation]:
    """Record by record, naming the first bad record and field."""
    annotations = []
    for position, raw in enumerate(raw_annotations):
        label = f"annotations[{position}]"
        _require(isinstance(raw, dict), path, f"{label} is not an object")
        for key in ("id", "image_id", "category_id"):
            value = raw.get(key)
            _require(_integer(value), path,
                     f"{label} (id {shown(raw.get('id'))}): '{key}' is {_not_integer(value)}, expected an integer")
        label = f"annotation id {raw['id']}"
        bbox = raw.get("bbox")
        segmentation = raw.get("segmentation")
        if bbox is None and segmentation:
            bbox = _bbox_from_segmentation(segmentation, path, label)
        _require(bbox is not None or "bbox" in raw, path, f"{label}: no 'bbox' and no segmentation to take it from",
                 hint="write 'bbox': [x, y, width, height] in pixels")
        _require(bbox is not None, path, f"{label}: 'bbox' is null",
                 hint="write 'bbox': [x, y, width, height] in pixels")
        _require(isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox),
                 path, f"{label}: 'bbox' is {shown(bbox)}, expected [x, y, width, height]")
        area = raw.get("area")
        _require(area is None or _number(area), path, f"{label}: 'area' is {shown(area)}, expected a number")
        crowd = raw.get("iscrowd", 0)
        _require(not isinstance(crowd, float) and crowd in (0, 1, None), path,  # True/False are 1/0; 1.0 is not
                 f"{label}: 'iscrowd' is {shown(crowd)}, expected 0 or 1")
        attributes = raw.get("attributes")
        annotations.append(Annotation(
            id=raw["id"],
            image_id=raw["image_id"],
            category_id=raw["category_id"],
            bbox=tuple(float(v) for v in bbox),
            area=float(area) if area is not None else None,
            iscrowd=bool(raw.get("iscrowd", 0)),
            segmentation=segmentation if segmentation not in (None, [], {}) else None,
            source=source,
            extra=attributes if isinstance(attributes, dict) and attributes else None,
        ))
    return annotations


def _bbox_from_segmentation(segmentation: Any, path: Path, label: str) -> list[float] | None:
    if isinstance(segmentation, list):
        xs = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon[0::2] if _number(v)]
        ys = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon[1::2] if _number(v)]
        if xs and ys and all(math.isfinite(v) for v in xs + ys):
            return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return None
    if isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        from pycocotools import mask as mask_utils

        size, counts = segmentation["size"], segmentation["counts"]
        try:
            if not (isinstance(size, list) and len(size) == 2 and all(_integer(v) and v >= 0 for v in size)):
                raise ValueError
            rle = mask_utils.frPyObjects(segmentation, *size) if isinstance(counts, list) else \
                {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
            return [float(v) for v in mask_utils.toBbox(rle)]
        except Exception:  # noqa: BLE001 - pycocotools raises plain Exceptions (and TypeError, OverflowError)
            raise DataError(f"{label}: no 'bbox', and its RLE 'segmentation' (size {shown(size)}) cannot be decoded",
                            where=str(path), hint="give the annotation a bbox, or fix the RLE's size "
                                                  "[height, width] and counts") from None
    raise DataError(f"{label}: 'segmentation' is neither polygons nor RLE", where=str(path), hint="see the COCO format")
