"""YOLO text labels (Ultralytics and Darknet layouts) into a ``DatasetIndex``.

One ``.txt`` file per image, one object per line, coordinates normalised by the image's width and height:

- detection: ``class cx cy w h`` (box centre and size);
- segmentation: ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon of at least 3 points; its extent is the box).

``class`` is a 0-based index into the class names. A label file sits where the image is with ``/images/``
replaced by ``/labels/`` (Ultralytics), or beside the image (Darknet); an image without one is a negative.

Layouts read (``data.annotations`` names the first file or folder; default ``data.yaml``):

- Ultralytics ``data.yaml``: ``path`` (dataset folder, relative to the YAML), ``train``/``val``/``test`` (each an
  image folder, a text file listing images, or a list of them) and ``names`` (a list, or ``{index: name}``).
  The splits come from the file. Roboflow's exports write ``../train/images``; when that is not found, the
  same path without the leading ``../`` is tried.
- Darknet ``obj.data``: ``names``, ``train``, ``valid`` entries (paths that start with ``data/``, as CVAT
  writes them, are tried relative to the ``obj.data`` folder with and without that prefix).
- a labels folder (``data.annotations: labels/train``) with its images folder (``data.images``, default the
  labels path with ``labels`` replaced by ``images``); class names from ``data.classes``, else from
  ``obj.names``/``classes.txt``/``data.yaml`` in ``data.root``.

Category ids are ``class index + 1``. A class index past the names keeps ``category_id = -1`` so that
``cvtrain check`` reports it (``annotation.unknown_category``); a malformed line is an error naming the file,
the line and the field.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from cvtrain.data.files import IMAGE_SUFFIXES
from cvtrain.data.formats import register_reader
from cvtrain.data.formats.textfiles import (
    find_names_file,
    image_sizes,
    number,
    read_lines,
    read_names,
    read_yaml_with_lines,
)
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError

SPLIT_KEYS = {"train": "train", "val": "val", "valid": "val", "test": "test"}
LAYOUT_HINT = ("point data.annotations at a data.yaml (Ultralytics), an obj.data (Darknet) or a labels folder; "
               "see docs/formats.md")


@register_reader("yolo")
def read_yolo(annotation_path: Path | None, *, root: Path, images: str | None = "",
              classes: Sequence[str] | None = None, names: set[str] | None = None, **_: Any) -> DatasetIndex:
    """Read a YOLO dataset.

    Args:
        annotation_path: a ``data.yaml``, an ``obj.data`` or a labels folder (see the module docstring).
        root: dataset root; image paths in the index are relative to it.
        images: with a labels folder, its images folder relative to ``root``.
        classes: class names in index order (``data.classes``); with a YAML that names them too, both must agree.
        names: only read the images whose stem is in this set.

    Returns:
        A ``DatasetIndex`` with absolute-pixel boxes (and polygons for segmentation lines); with a
        ``data.yaml`` or ``obj.data`` every image's ``split`` is set from it.

    Raises:
        DataError: a missing file or folder, a YAML key of the wrong kind, or a malformed label line
            (``file:line: field ... is ..., expected ...``).
    """
    annotation_path = annotation_path or root / "data.yaml"
    if annotation_path.is_dir():
        class_names = list(classes) if classes else _names_near(root)
        image_dir = root / images if images else _images_beside(annotation_path)
        entries = [(None, image, _label_in(annotation_path, image_dir, image)) for image in _images_in(image_dir)]
        where = str(annotation_path)
    elif annotation_path.suffix.lower() in (".yaml", ".yml") and annotation_path.is_file():
        class_names, entries = _ultralytics(annotation_path, classes)
        where = str(annotation_path)
    elif annotation_path.suffix.lower() == ".data" and annotation_path.is_file():
        class_names, entries = _darknet(annotation_path, root, classes)
        where = str(annotation_path)
    else:
        found = [name for name in ("data.yaml", "obj.data") if (root / name).is_file()]
        raise DataError("YOLO annotations not found", where=str(annotation_path),
                        hint=f"found {found[0]} in data.root: set data.annotations to it" if found else LAYOUT_HINT)
    if names is not None:
        entries = [entry for entry in entries if entry[1].stem in names]
    if not entries:
        raise DataError("no images found", where=where, hint=f"images end in {', '.join(IMAGE_SUFFIXES)}")
    if not any(label.is_file() for _, _, label in entries):
        example = entries[0][2]
        raise DataError(f"no label files found for the {len(entries)} images (e.g. {example} is missing)", where=where,
                        hint="labels lie where the images are, with /images/ replaced by /labels/, or beside them")
    return _index(root, class_names, entries, where)


Entry = tuple[str | None, Path, Path]  # (split, image, label file)


def _index(root: Path, class_names: list[str], entries: list[Entry], where: str) -> DatasetIndex:
    root_resolved = root.resolve()
    sizes = image_sizes([image for _, image, _ in entries])
    categories = [Category(position + 1, name) for position, name in enumerate(class_names)]
    records: list[ImageRecord] = []
    annotations: list[Annotation] = []
    for image_id, ((split, image, label), (width, height)) in enumerate(zip(entries, sizes), start=1):
        records.append(ImageRecord(id=image_id, file_name=_relative(image, root, root_resolved), width=width,
                                   height=height, split=split, source=Location(str(label))))
        if label.is_file():
            _parse(label, image_id, width, height, len(class_names), annotations)
    return DatasetIndex(root=root, categories=categories, images=records, annotations=annotations, task="detection",
                        sources=[where], format="yolo")


def _parse(label: Path, image_id: int, width: int | None, height: int | None, class_count: int,
           annotations: list[Annotation]) -> None:
    scale_x = float(width) if width else math.nan  # an unreadable image: NaN boxes, reported by the checks
    scale_y = float(height) if height else math.nan
    for line_number, line in enumerate(read_lines(label), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{label}:{line_number}"
        count = len(tokens)
        if count != 5 and (count < 7 or count % 2 == 0):
            raise DataError(f"{count} values; a box line has 5 (class cx cy w h), a polygon line a class and at least "
                            "3 x y pairs", where=where, hint="fix or remove the line")
        klass = number(tokens[0], where, "field 1 (class)")
        if not klass.is_integer():
            raise DataError(f"field 1 (class) is {tokens[0]!r}, expected a class index", where=where,
                            hint="the first value is the 0-based index into the class names")
        index = int(klass)
        known = 0 <= index < class_count
        if count == 5:
            cx, cy, w, h = (number(t, where, f"field {k} ({n})") for k, (t, n) in
                            enumerate(zip(tokens[1:], ("cx", "cy", "w", "h")), start=2))
            bbox = ((cx - w / 2) * scale_x, (cy - h / 2) * scale_y, w * scale_x, h * scale_y)
            segmentation, area = None, None
        else:
            values = [number(t, where, f"field {k} ({'x' if k % 2 == 0 else 'y'}{(k - 2) // 2 + 1})")
                      for k, t in enumerate(tokens[1:], start=2)]
            polygon = [v * (scale_x if k % 2 == 0 else scale_y) for k, v in enumerate(values)]
            xs, ys = polygon[0::2], polygon[1::2]
            bbox = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            segmentation = [polygon]
            area = abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
        annotations.append(Annotation(
            id=len(annotations) + 1, image_id=image_id, category_id=index + 1 if known else -1, bbox=bbox, area=area,
            segmentation=segmentation, source=Location(str(label), line_number),
            extra=None if known else {"name": str(index)},
        ))


# ---------------------------------------------------------------------- layouts
def _ultralytics(path: Path, classes: Sequence[str] | None) -> tuple[list[str], list[Entry]]:
    tree, lines = read_yaml_with_lines(path)
    base = path.parent
    if tree.get("path"):
        given = Path(os.path.expanduser(str(tree["path"])))
        base = given if given.is_absolute() else path.parent / given
        if not base.is_dir():
            base = path.parent  # a 'path' written for another machine: the YAML's own folder is the dataset
    class_names = _yaml_names(tree, path, lines, classes)
    entries: list[tuple[str | None, Path, Path]] = []
    seen_split = False
    for key, split in SPLIT_KEYS.items():
        value = tree.get(key)
        if not value:
            continue
        seen_split = True
        where = f"{path}:{lines.get(key, '?')}"
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                raise DataError(f"'{key}' holds {item!r}, expected a folder or a text file of image paths", where=where)
            for image in _split_images(base, item, where, key):
                entries.append((split, image, _label_for(image)))
    if not seen_split:
        raise DataError("no 'train', 'val' or 'test' entry", where=str(path),
                        hint="name the image folders of the splits, e.g. train: images/train")
    return class_names, entries


def _yaml_names(tree: dict, path: Path, lines: dict[str, int], classes: Sequence[str] | None) -> list[str]:
    where = f"{path}:{lines.get('names', '?')}"
    raw = tree.get("names")
    if raw is None:
        if classes:
            return list(classes)
        raise DataError("no 'names' (the class names)", where=str(path),
                        hint="add names: [cat, dog] or set data.classes")
    if isinstance(raw, list):
        found = [str(name) for name in raw]
    elif isinstance(raw, dict) and all(isinstance(k, int) for k in raw):
        if sorted(raw) != list(range(len(raw))):
            raise DataError(f"'names' has indices {sorted(raw)}, expected 0..{len(raw) - 1}", where=where)
        found = [str(raw[k]) for k in range(len(raw))]
    else:
        raise DataError("'names' must be a list of names or a mapping {index: name}", where=where)
    count = tree.get("nc")
    if count is not None and count != len(found):
        raise DataError(f"'nc' is {count} but 'names' lists {len(found)} classes",
                        where=f"{path}:{lines.get('nc', '?')}", hint="make nc the number of names, or drop it")
    if classes and list(classes) != found:
        raise DataError(f"data.classes {list(classes)} differ from the names here {found}", where=where,
                        hint="remove data.classes, or list the same names in the same order")
    return found


def _split_images(base: Path, item: str, where: str, key: str) -> list[Path]:
    candidate = _existing(base, item)
    if candidate is None:
        raise DataError(f"'{key}' names {item!r}, which is not found under {base}", where=where,
                        hint="the split's image folder or list file, relative to 'path' (or the YAML's folder)")
    if candidate.is_dir():
        return _images_in(candidate)
    return _listed_images(candidate, base)


def _existing(base: Path, item: str) -> Path | None:
    given = Path(os.path.expanduser(item))
    tries = [given] if given.is_absolute() else [base / given]
    stripped = PurePosixPath(item)
    while stripped.parts and stripped.parts[0] in ("..", "."):  # Roboflow: ../train/images beside data.yaml
        stripped = PurePosixPath(*stripped.parts[1:])
        tries.append(base / stripped)
    if stripped.parts and stripped.parts[0] == "data" and len(stripped.parts) > 1:  # CVAT/Darknet: data/...
        tries.append(base / PurePosixPath(*stripped.parts[1:]))
    return next((path for path in tries if path.exists()), None)


def _listed_images(list_file: Path, base: Path) -> list[Path]:
    images = []
    for line_number, line in enumerate(read_lines(list_file), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        found = _existing(list_file.parent, item) or _existing(base, item)
        if found is None:
            raise DataError(f"listed image {item!r} not found", where=f"{list_file}:{line_number}",
                            hint="paths are relative to the list file's folder or the dataset folder")
        images.append(found)
    return images


def _darknet(path: Path, root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[Entry]]:
    settings: dict[str, tuple[str, int]] = {}
    for line_number, line in enumerate(read_lines(path), start=1):
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = (value.strip(), line_number)
    base = path.parent
    if "names" in settings:
        value, line_number = settings["names"]
        names_file = _existing(base, value)
        if names_file is None:
            raise DataError(f"names file {value!r} not found", where=f"{path}:{line_number}")
        class_names = read_names(names_file)
    elif classes:
        class_names = list(classes)
    else:
        raise DataError("no 'names' entry", where=str(path), hint="add names = obj.names or set data.classes")
    if classes and list(classes) != class_names:
        raise DataError(f"data.classes {list(classes)} differ from the names file {class_names}", where=str(path))
    entries: list[tuple[str | None, Path, Path]] = []
    for key, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        if key in settings:
            value, line_number = settings[key]
            list_file = _existing(base, value)
            if list_file is None:
                raise DataError(f"{key} list {value!r} not found", where=f"{path}:{line_number}")
            entries += [(split, image, _label_for(image)) for image in _listed_images(list_file, base)]
    return class_names, entries


def _names_near(root: Path) -> list[str]:
    names_file = find_names_file(root)
    if names_file is not None:
        return read_names(names_file)
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (root / name).is_file():
            tree, lines = read_yaml_with_lines(root / name)
            return _yaml_names(tree, root / name, lines, None)
    raise DataError("no class names", where=str(root),
                    hint="set data.classes, or put obj.names / classes.txt / data.yaml with names in data.root")


# --------------------------------------------------------------------- pairing
def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError("image folder not found", where=str(folder), hint="check data.images (relative to data.root)")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _label_for(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``; else beside the image."""
    text = image.as_posix()
    head, separator, tail = text.rpartition("/images/")
    if separator:
        text = head + "/labels/" + tail
    return Path(text).with_suffix(".txt")


def _images_beside(labels: Path) -> Path:
    parts = list(labels.parts)
    for position in range(len(parts) - 1, -1, -1):
        if parts[position].lower() == "labels":
            parts[position] = "images" if parts[position] == "labels" else "Images"
            return Path(*parts)
    raise DataError("cannot tell where the images of this labels folder are", where=str(labels),
                    hint="set data.images (or the split's images) to the image folder")


def _label_in(labels: Path, image_dir: Path, image: Path) -> Path:
    return (labels / image.relative_to(image_dir)).with_suffix(".txt")


def _relative(path: Path, root: Path, root_resolved: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root_resolved).as_posix()
    except ValueError:
        raise DataError("image lies outside data.root", where=str(path),
                        hint="set data.root to the folder that holds the images and labels") from None
