"""KITTI 2D detection labels (as TAO Toolkit reads them) into a ``DatasetIndex``.

One ``label_2/<name>.txt`` per image ``image_2/<name>.png`` (any image suffix), one object per line, 15
space-separated values (a 16th, the score, in detection results)::

    type truncated occluded alpha left top right bottom height width length x y z rotation_y [score]

``left top right bottom`` are pixels of the image; the box is ``(left, top, right - left, bottom - top)``.
``truncated`` (0..1), ``occluded`` (0..3), ``alpha`` and the 3-D values are kept in ``Annotation.extra``
(``truncated``, ``occluded``, ``alpha``, ``dimensions``, ``location``, ``rotation_y``) so that writing KITTI again
loses nothing. ``DontCare`` lines are regions without a label: they go into the image's
``extra["ignore_regions"]``, are left out of training, and in evaluation a detection inside one counts neither
as a true nor as a false positive (``DatasetIndex.to_coco``).

Class names: ``data.classes`` in that order (a type not listed keeps ``category_id = -1`` for
``cvtrain check`` to report), else the sorted types found. Category ids are ``1..K``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtrain.data.files import IMAGE_SUFFIXES
from cvtrain.data.formats import register_reader
from cvtrain.data.formats.textfiles import image_sizes, number, read_lines
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError

FIELDS = ("type", "truncated", "occluded", "alpha", "left", "top", "right", "bottom", "height", "width", "length",
          "x", "y", "z", "rotation_y", "score")
DONT_CARE = "DontCare"


@register_reader("kitti")
def read_kitti(annotation_dir: Path, *, root: Path, images: str | None = "training/image_2",
               classes: Sequence[str] | None = None, names: set[str] | None = None, **_: Any) -> DatasetIndex:
    """Read a folder of KITTI label files.

    Args:
        annotation_dir: the ``label_2`` folder.
        root: dataset root; image paths in the index are relative to it.
        images: the image folder relative to ``root`` (``image_2``); an image is found by the label's stem.
        classes: class names in label order (``data.classes``).
        names: only read the label files whose stem is in this set.

    Returns:
        A ``DatasetIndex`` of boxes, KITTI's other values in ``extra``, DontCare in the images' ``extra``.

    Raises:
        DataError: a missing folder, or a line with the wrong number of values or a value that is not a
            number (naming the file, the line and the field).
    """
    if not annotation_dir.is_dir():
        raise DataError("label folder not found", where=str(annotation_dir),
                        hint="check data.annotations (KITTI: training/label_2, relative to data.root)")
    files = sorted(annotation_dir.glob("*.txt"))
    if names is not None:
        files = [f for f in files if f.stem in names]
    if not files:
        raise DataError("no *.txt label files", where=str(annotation_dir),
                        hint="KITTI labels are one text file per image")
    image_dir = root / (images or "")
    parsed = [(path, _parse(path)) for path in files]
    found = sorted({obj["type"] for _, objects in parsed for obj in objects if obj["type"] != DONT_CARE})
    class_names = list(classes) if classes else found
    category_id = {name: position + 1 for position, name in enumerate(class_names)}
    image_paths = [_find_image(image_dir, path.stem) for path in files]
    sizes = image_sizes(image_paths)
    records, annotations = [], []
    for image_id, ((path, objects), image, (width, height)) in enumerate(zip(parsed, image_paths, sizes), start=1):
        ignore = []
        for obj in objects:
            box = obj.pop("box")
            if obj["type"] == DONT_CARE:
                ignore.append(box)
                continue
            name, line = obj.pop("type"), obj.pop("line")
            annotations.append(Annotation(id=len(annotations) + 1, image_id=image_id,
                                          category_id=category_id.get(name, -1), bbox=box,
                                          source=Location(str(path), line), extra={"name": name, **obj}))
        records.append(ImageRecord(id=image_id, file_name=image.relative_to(root).as_posix(), width=width,
                                   height=height, source=Location(str(path)),
                                   extra={"ignore_regions": ignore} if ignore else None))
    return DatasetIndex(root=root, categories=[Category(i, n) for n, i in category_id.items()], images=records,
                        annotations=annotations, task="detection", sources=[str(annotation_dir)], format="kitti")


def _parse(path: Path) -> list[dict[str, Any]]:
    objects = []
    for line_number, line in enumerate(read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{line_number}"
        if len(tokens) not in (15, 16):
            raise DataError(f"{len(tokens)} values, expected 15 ({' '.join(FIELDS[:15])}) or 16 with a score",
                            where=where, hint="a class name with a space must be written without it")
        values = [number(token, where, f"field {k + 1} ({FIELDS[k]})") for k, token in enumerate(tokens[1:], start=1)]
        if not float(values[1]).is_integer():
            raise DataError(f"field 3 (occluded) is {tokens[2]!r}, expected 0, 1, 2 or 3", where=where)
        left, top, right, bottom = values[3:7]
        obj = {"type": tokens[0], "line": line_number, "box": (left, top, right - left, bottom - top),
               "truncated": values[0], "occluded": int(values[1]), "alpha": values[2],
               "dimensions": values[7:10], "location": values[10:13], "rotation_y": values[13]}
        if len(values) == 15:
            obj["score"] = values[14]
        objects.append(obj)
    return objects


def _find_image(image_dir: Path, stem: str) -> Path:
    for suffix in (".png", *IMAGE_SUFFIXES):
        if (image_dir / (stem + suffix)).exists():
            return image_dir / (stem + suffix)
    return image_dir / (stem + ".png")  # missing: the checks report it
