"""From a spec's ``data`` section to one ``DatasetIndex`` with splits assigned."""
from __future__ import annotations

import csv
import random
from pathlib import Path, PurePosixPath

from cvtrain.data.files import named_in_spec
from cvtrain.data.formats import READERS
from cvtrain.data.index import DatasetIndex, merge_indexes
from cvtrain.errors import DataError, name_problem

# Where each format looks when the spec does not say (paths relative to data.root).
FORMAT_DEFAULTS: dict[str, dict[str, str]] = {
    "coco": {"annotations": "annotations.json", "images": "images"},
    "shapes": {"annotations": "annotations.json", "images": "images", "generated": "yes"},
    "voc": {"annotations": "Annotations", "images": "JPEGImages"},
    "masks": {"images": "images", "masks": "masks"},
    "yolo": {"annotations": "data.yaml"},
    "kitti": {"annotations": "training/label_2", "images": "training/image_2"},
    "cityscapes": {"images": "leftImg8bit", "masks": "gtFine"},
}


def build_index(data, *, images_needed: bool = False) -> DatasetIndex:
    """Read the dataset described by ``data`` (a ``DataConfig``) and assign every image a split.

    Splits come, in this order of preference, from per-split annotation files,
    from per-split file lists, from the format itself (a YOLO ``data.yaml``, Cityscapes'
    split folders: kept when ``data.splits`` is empty and ``data.val_split`` is among
    them), or from a seeded ratio split (``val_fraction``).

    Args:
        data: the spec's ``data`` section.
        images_needed: the caller reads the images (fit, evaluate): refuse at once when not one of them is there.

    Raises:
        DataError: the root, an annotation file or list is missing or malformed, or (``images_needed``) the image
            folder holds none of the images the annotations name: one line about the folder, not one per image.
    """
    index = _build_index(data)
    if images_needed:
        names = [image.file_name for image in index.images]
        if len(names) > 1 and _escaping(names) is None and not _any_present(Path(index.root), names):
            raise absent_images_error(Path(index.root), names)
    return index


def _escaping(names: list[str]) -> str | None:
    """The first name that is absolute, climbs out with ``..`` or cannot name a file (the checks report those)."""
    return next((name for name in names if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts
                 or name_problem(name)), None)


def _any_present(root: Path, names: list[str]) -> bool:
    return any((root / name).exists() for name in names)  # stops at the first one there: at once, in a real set


def absent_images_error(root: Path, names: list[str]) -> DataError:
    """The one-line error for an image folder that holds none of ``names``: empty, other files, or not there."""
    folder = root / PurePosixPath(names[0]).parent
    if folder.is_dir():
        present = sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))
        holds = f"it holds {len(present)} other file(s), e.g. {present[0]!r}" if present else "it is empty"
    else:
        holds = "it does not exist"
    return DataError(f"the image folder holds none of the {len(names)} images the annotations name "
                     f"(e.g. {PurePosixPath(names[0]).name!r}); {holds}", where=str(folder),
                     hint="check data.root and data.images, or the annotations' file names")


def _build_index(data) -> DatasetIndex:
    root = Path(data.root)
    defaults = FORMAT_DEFAULTS.get(data.format, {})
    if not root.is_dir() and not defaults.get("generated"):
        raise DataError(
            "dataset root not found",
            where=str(root),
            hint="check data.root (relative paths are relative to the spec file)",
        )
    reader = READERS[data.format]

    def read(
        annotations: str | None, images: str | None, masks: str | None, names: set[str] | None = None
    ) -> DatasetIndex:
        """Read one part of the dataset with the format's reader and the spec's defaults."""
        source = annotations or data.annotations or defaults.get("annotations")
        for key, folder in (("images", images or data.images), ("masks", masks or data.masks)):
            if folder:
                named_in_spec(root, folder, f"data.{key}")
        return reader(
            named_in_spec(root, source, "data.annotations") if source else None,
            root=root,
            images=images or data.images or defaults.get("images", ""),
            masks=masks or data.masks or defaults.get("masks"),
            classes=data.classes,
            ignore_index=data.ignore_index,
            palette=data.palette,
            names=names,
            **data.options,
        )

    # A split with its own annotation file, or its own mask folder, is read on its own.
    own_files = {name: split for name, split in data.splits.items() if split.annotations or split.masks}
    if own_files:
        parts = []
        for name, split in own_files.items():
            part = read(split.annotations, split.images, split.masks)
            if split.list:
                part = part.subset(_listed(part, named_in_spec(root, split.list, f"data.splits.{name}.list")))
            for image in part.images:
                image.split = name
            parts.append(part)
        index = merge_indexes(parts)
        _check_classes(index, data.classes)
        return index

    index = read(None, None, None)
    if not data.splits and index.images and all(image.split is not None for image in index.images) and \
            data.val_split in index.split_names:
        return index  # the format names the splits (YOLO data.yaml, Cityscapes folders): keep them
    listed = {name: split for name, split in data.splits.items() if split.list}
    if listed:
        for name, split in listed.items():
            keep = _listed(index, named_in_spec(root, split.list, f"data.splits.{name}.list"))
            for image in index.images:
                if image.id in keep:
                    if image.split not in (None, name):
                        raise DataError(f"image {image.file_name} is listed in split '{image.split}' and in '{name}'",
                                        where=str(root / split.list), hint="a file must belong to one split")
                    image.split = name
        return index.subset(image.id for image in index.images if image.split is not None)
    assign_ratio_split(index, data.val_fraction, data.split_seed, data.train_split, data.val_split)
    return index


def assign_ratio_split(
    index: DatasetIndex, val_fraction: float, seed: int, train: str = "train", val: str = "val"
) -> None:
    """Seeded split: the same seed and image set always give the same split."""
    order = sorted(index.images, key=lambda image: image.file_name)
    random.Random(seed).shuffle(order)
    count = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) > 1:
        count = max(count, 1)
    for position, image in enumerate(order):
        image.split = val if position < count else train


def _listed(index: DatasetIndex, list_file: Path) -> set[int]:
    """Image ids named in a list file: one file name (or stem) per line, or a CSV with a 'filename' column.

    A line of two paths (``image mask``, as in CamVid's and VOC-style segmentation lists) names its first
    path's file: ``/SegNet/CamVid/val/x.png /SegNet/CamVid/valannot/x.png`` lists ``x.png``.
    """
    if not list_file.is_file():
        raise DataError("split list not found", where=str(list_file), hint="check data.splits.<name>.list")
    text = list_file.read_text(encoding="utf-8", errors="replace")
    if list_file.suffix.lower() == ".csv":
        rows = csv.DictReader(text.splitlines())
        column = next((c for c in rows.fieldnames or [] if c.lower() in ("filename", "file_name", "image")), None)
        if column is None:
            raise DataError(
                "CSV split list has no 'filename' column", where=str(list_file), hint="name the column 'filename'"
            )
        names = {row[column].strip() for row in rows if row.get(column)}
    else:
        names = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    by_name: dict[str, int] = {}
    for image in index.images:
        path = PurePosixPath(image.file_name)
        for key in (image.file_name, path.name, path.stem):
            by_name.setdefault(key, image.id)
    names = {n if n in by_name or len(n.split()) != 2 else PurePosixPath(n.split()[0]).name for n in names}
    found = {by_name[n] for n in names if n in by_name}
    missing = sorted(n for n in names if n not in by_name)
    if missing:
        raise DataError(f"{len(missing)} listed image(s) are not in the annotations, e.g. {missing[0]!r}",
                        where=str(list_file), hint="list file names (or stems) that the annotations describe")
    return found


def _check_classes(index: DatasetIndex, classes: list[str] | None) -> None:
    if classes and [c.name for c in index.categories][: len(classes)] != list(classes):
        raise DataError(f"data.classes {classes} do not match the annotation categories {index.class_names}",
                        hint="remove data.classes for COCO files or list the same names in the same order")
