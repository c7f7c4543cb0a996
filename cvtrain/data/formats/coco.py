"""COCO JSON (detection and instance segmentation) into a ``DatasetIndex``."""
from __future__ import annotations

import json
import math
import posixpath
from pathlib import Path
from typing import Any

from cvtrain.data.formats import register_reader
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError


def load_json(path: Path) -> Any:
    """Parse a JSON file, turning every way it can fail into one ``DataError`` line."""
    if not path.is_file():
        raise DataError(
            "annotation file not found", where=str(path), hint="check data.root and the annotation path in the spec"
        )
    raw = path.read_bytes()
    if not raw.strip():
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
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON: {error.msg}",
            where=f"{path}:{error.lineno}:{error.colno}",
            hint="fix the syntax at that position",
        ) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", where=str(path), hint="this is not a COCO annotation file") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, path: Path, what: str, hint: str) -> None:
    if not condition:
        raise DataError(what, where=str(path), hint=hint)


@register_reader("coco")
def read_coco(annotation_file: Path, *, root: Path, images: str | None = "", **_: Any) -> DatasetIndex:
    """Read a COCO annotation file.

    Args:
        annotation_file: the ``instances_*.json`` file.
        root: dataset root; image paths in the index are relative to it.
        images: image folder relative to ``root`` that ``file_name`` is relative to.
    """
    data = load_json(annotation_file)
    hint = "see https://cocodataset.org/#format-data for the layout"
    _require(
        isinstance(data, dict),
        annotation_file,
        f"top level is a {type(data).__name__}, expected an object with 'images' and 'categories'",
        hint,
    )
    for key in ("images", "categories"):
        _require(key in data, annotation_file, f"missing key '{key}'", hint)
        _require(
            isinstance(data[key], list),
            annotation_file,
            f"'{key}' is a {type(data[key]).__name__}, expected a list",
            hint,
        )
    raw_annotations = data.get("annotations", [])
    _require(
        isinstance(raw_annotations, list),
        annotation_file,
        f"'annotations' is a {type(raw_annotations).__name__}, expected a list",
        hint,
    )
    source = Location(str(annotation_file))

    categories = []
    for position, raw in enumerate(data["categories"]):
        _require(isinstance(raw, dict) and isinstance(raw.get("id"), int) and not isinstance(raw.get("id"), bool),
                 annotation_file, f"categories[{position}] needs an integer 'id'", hint)
        _require(
            isinstance(raw.get("name"), str), annotation_file, f"category id {raw['id']} needs a string 'name'", hint
        )
        categories.append(Category(raw["id"], raw["name"], raw.get("supercategory")))

    image_dir = images or ""
    records = []
    for position, raw in enumerate(data["images"]):
        _require(isinstance(raw, dict) and isinstance(raw.get("id"), int) and not isinstance(raw.get("id"), bool),
                 annotation_file, f"images[{position}] needs an integer 'id'", hint)
        _require(isinstance(raw.get("file_name"), str) and raw["file_name"] != "",
                 annotation_file, f"image id {raw['id']} needs a non-empty string 'file_name'", hint)
        width, height = raw.get("width"), raw.get("height")
        for name, value in (("width", width), ("height", height)):
            _require(value is None or (_number(value) and float(value).is_integer()),
                     annotation_file, f"image id {raw['id']}: '{name}' is {value!r}, expected an integer", hint)
        records.append(
            ImageRecord(
                id=raw["id"],
                file_name=posixpath.normpath(posixpath.join(image_dir, raw["file_name"]))
                if image_dir
                else raw["file_name"],
                width=int(width) if width is not None else None,
                height=int(height) if height is not None else None,
                source=source,
            )
        )

    annotations = []
    for position, raw in enumerate(raw_annotations):
        label = f"annotations[{position}]"
        _require(isinstance(raw, dict), annotation_file, f"{label} is not an object", hint)
        for key in ("id", "image_id", "category_id"):
            value = raw.get(key)
            _require(
                isinstance(value, int) and not isinstance(value, bool),
                annotation_file,
                f"{label} (id {raw.get('id')!r}): '{key}' is {value!r}, expected an integer",
                hint,
            )
        label = f"annotation id {raw['id']}"
        bbox = raw.get("bbox")
        segmentation = raw.get("segmentation")
        if bbox is None and segmentation:
            bbox = _bbox_from_segmentation(segmentation, annotation_file, label)
        _require(isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox),
                 annotation_file, f"{label}: 'bbox' is {bbox!r}, expected [x, y, width, height]", hint)
        area = raw.get("area")
        _require(
            area is None or _number(area), annotation_file, f"{label}: 'area' is {area!r}, expected a number", hint
        )
        annotations.append(
            Annotation(
                id=raw["id"],
                image_id=raw["image_id"],
                category_id=raw["category_id"],
                bbox=tuple(float(v) for v in bbox),
                area=float(area) if area is not None else None,
                iscrowd=bool(raw.get("iscrowd", 0)),
                segmentation=segmentation if segmentation not in (None, [], {}) else None,
                source=source,
            )
        )
    return DatasetIndex(
        root=root,
        categories=categories,
        images=records,
        annotations=annotations,
        task="detection",
        sources=[str(annotation_file)],
        format="coco",
    )


def _bbox_from_segmentation(segmentation: Any, path: Path, label: str) -> list[float] | None:
    if isinstance(segmentation, list):
        xs = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon[0::2] if _number(v)]
        ys = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon[1::2] if _number(v)]
        if xs and ys and all(math.isfinite(v) for v in xs + ys):
            return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return None
    if isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        from pycocotools import mask as mask_utils

        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return [float(v) for v in mask_utils.toBbox(rle)]
    raise DataError(f"{label}: 'segmentation' is neither polygons nor RLE", where=str(path), hint="see the COCO format")
