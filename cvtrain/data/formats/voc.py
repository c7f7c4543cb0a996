"""Pascal VOC XML (one file per image) into a ``DatasetIndex``."""
from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtrain.data.files import IMAGE_SUFFIXES
from cvtrain.data.formats import register_reader
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError, shown


def _text(element: ET.Element | None, tag: str) -> str | None:
    child = element.find(tag) if element is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _coordinate(obj: ET.Element, tag: str, where: str) -> float:
    child = obj.find(f"bndbox/{tag}")
    if child is None:
        raise DataError(f"object without bndbox/{tag}", where=where,
                        hint="every <object> needs <bndbox> with xmin, ymin, xmax, ymax")
    value = (child.text or "").strip()
    if not value:
        raise DataError(f"bndbox/{tag} is empty", where=where,
                        hint="write the coordinate in pixels, e.g. <ymin>12</ymin>")
    try:
        return float(value)
    except ValueError:
        raise DataError(
            f"bndbox/{tag} is {shown(value)}, expected a number", where=where, hint="fix the coordinate"
        ) from None


def _size(width: str | None, height: str | None, where: str) -> tuple[int | None, int | None]:
    """``<size>``'s width and height as integers (None when absent or empty); NaN, infinite or huge ones refused."""
    try:
        values = tuple(int(float(text)) if text else None for text in (width, height))
    except (ValueError, OverflowError):  # not a number, NaN (ValueError), or infinite (OverflowError)
        values = None
    if values is None or any(v is not None and not -(2**63) <= v < 2**63 for v in values):
        raise DataError(f"size is {shown(width)} x {shown(height)}, expected integers", where=where, hint="fix <size>")
    return values


def _refuse_external_dtd(path: Path, data: bytes) -> None:
    """A DOCTYPE that names an external DTD (``SYSTEM``/``PUBLIC``) is refused: nothing is ever fetched or read."""
    from xml.parsers import expat

    def doctype(name: str, system_id: str | None, public_id: str | None, has_internal_subset: int) -> None:
        if system_id or public_id:
            raise DataError(f"the file names an external DTD ({system_id or public_id!r})",
                            where=f"{path}:{parser.CurrentLineNumber}",
                            hint="VOC files need no DTD, and nothing was fetched: remove the <!DOCTYPE ...> line")

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(data, True)
    except expat.ExpatError:
        pass  # ElementTree names the syntax error with its position


def _parse(path: Path) -> ET.Element:
    data = path.read_bytes()
    if b"<!DOCTYPE" in data:
        _refuse_external_dtd(path, data)
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        line, column = error.position
        raise DataError(
            f"invalid XML: {error.msg if hasattr(error, 'msg') else error}",
            where=f"{path}:{line}:{column + 1}",
            hint="fix the syntax at that position",
        ) from None


@register_reader("voc")
def read_voc(annotation_dir: Path, *, root: Path, images: str = "JPEGImages", classes: Sequence[str] | None = None,
             names: set[str] | None = None, **_: Any) -> DatasetIndex:
    """Read a folder of Pascal VOC XML files.

    Args:
        annotation_dir: folder of ``*.xml`` files, one per image.
        root: dataset root; image paths in the index are relative to it.
        images: image folder relative to ``root``; ``<filename>`` is looked up there
            (the absolute ``<path>`` that labelImg writes is ignored).
        classes: class names in label order. Without it the sorted names found are used;
            with it, an object of another name keeps ``category_id = -1`` for the checks to report.
        names: only read the XML files whose stem is in this set.
    """
    if not annotation_dir.is_dir():
        raise DataError(
            "annotation folder not found", where=str(annotation_dir), hint="check data.root and the annotations path"
        )
    files = sorted(annotation_dir.glob("*.xml"))
    if names is not None:
        files = [f for f in files if f.stem in names]
    if not files:
        raise DataError("no *.xml files", where=str(annotation_dir), hint="VOC annotations are one XML file per image")
    parsed = []
    found_names: set[str] = set()
    for path in files:
        element = _parse(path)
        if element.tag != "annotation":
            raise DataError(
                f"root element is <{element.tag}>, expected <annotation>", where=str(path), hint="not a VOC file"
            )
        parsed.append((path, element))
        found_names.update(_text(obj, "name") or "" for obj in element.findall("object"))
    class_names = list(classes) if classes else sorted(n for n in found_names if n)
    categories = [Category(position + 1, name) for position, name in enumerate(class_names)]
    category_id = {c.name: c.id for c in categories}

    image_records, annotations = [], []
    for image_id, (path, element) in enumerate(parsed, start=1):
        where = str(path)
        file_name = _text(element, "filename") or _find_image(root / images, path.stem)
        size = element.find("size")
        width_value, height_value = _size(_text(size, "width"), _text(size, "height"), where)
        image_records.append(
            ImageRecord(
                id=image_id,
                file_name=posixpath.normpath(posixpath.join(images, file_name)),
                # 0 means "unknown" in many exporters; the dataset reads the real size then.
                width=width_value or None,
                height=height_value or None,
                source=Location(where),
            )
        )
        for obj in element.findall("object"):
            name = _text(obj, "name") or ""
            xmin, ymin = _coordinate(obj, "xmin", where), _coordinate(obj, "ymin", where)
            xmax, ymax = _coordinate(obj, "xmax", where), _coordinate(obj, "ymax", where)
            # VOC pixel indices are 1-based and inclusive: pixel i covers [i - 1, i] in
            # continuous 0-based coordinates (detectron2 reads VOC the same way).
            x, y = xmin - 1.0, ymin - 1.0
            annotations.append(
                Annotation(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=category_id.get(name, -1),
                    bbox=(x, y, xmax - x, ymax - y),
                    source=Location(where),
                    extra={
                        "name": name,
                        "difficult": _text(obj, "difficult") == "1",
                        "truncated": _text(obj, "truncated") == "1",
                    },
                )
            )
    unannotated = []
    if names is None and (root / images).is_dir():  # with split lists, images outside them are left out on purpose
        annotated = {path.stem for path in files} | {posixpath.basename(r.file_name) for r in image_records}
        unannotated = sorted(posixpath.join(images, path.name) for path in (root / images).iterdir()
                             if path.suffix.lower() in IMAGE_SUFFIXES and path.stem not in annotated
                             and path.name not in annotated)
    return DatasetIndex(root=root, categories=categories, images=image_records, annotations=annotations,
                        task="detection", sources=[str(annotation_dir)], format="voc", unannotated=unannotated)


def _find_image(image_dir: Path, stem: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if (image_dir / (stem + suffix)).exists():
            return stem + suffix
    return stem + ".jpg"
