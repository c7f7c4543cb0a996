"""Cityscapes semantic masks into a ``DatasetIndex``: ``gtFine/*_labelIds.png``,
through the official id -> trainId table.

Layout (``data.images`` default ``leftImg8bit``, ``data.masks`` default ``gtFine``)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The split is the first folder (``train``, ``val``, ``test``). Masks are read in the first of these kinds that
the dataset has (or the one ``data.options.mask_kind`` names):

- ``labelIds``: the 34 label ids (0..33); the index's ``mask_table`` maps them to the 19 train ids of
  ``LABELS`` (cityscapesScripts' ``labels.py``), everything else to 255 (not scored);
- ``labelTrainIds``: already train ids (cityscapesScripts' ``createTrainIdLabelImgs``); no table;
- ``instanceIds``: a label id, or ``label id * 1000 + instance`` for things (16-bit); mapped by the table.

Classes are the 19 train-id names (``data.classes`` may rename them, keeping 19); ``ignore_index`` is 255.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import UnidentifiedImageError

from cvtrain.data.files import open_image
from cvtrain.data.formats import register_reader
from cvtrain.data.formats.masks import _files
from cvtrain.data.formats.textfiles import image_sizes
from cvtrain.data.index import Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    colour: tuple[int, int, int]


# cityscapesScripts/helpers/labels.py (github.com/mcordts/cityscapesScripts): name, id, trainId, colour
LABELS = (
    Label("unlabeled", 0, 255, (0, 0, 0)), Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)), Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)), Label("dynamic", 5, 255, (111, 74, 0)), Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)), Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)), Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)), Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)), Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)), Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)), Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)), Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)), Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)), Label("person", 24, 11, (220, 20, 60)), Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)), Label("truck", 27, 14, (0, 0, 70)), Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)), Label("trailer", 30, 255, (0, 0, 110)), Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)), Label("bicycle", 33, 18, (119, 11, 32)),
)
IGNORE = 255
TRAIN_CLASSES = tuple(label.name for label in sorted((lb for lb in LABELS if lb.train_id != IGNORE),
                                                      key=lambda lb: lb.train_id))
MASK_KINDS = ("labelIds", "labelTrainIds", "instanceIds")


def label_table(kind: str) -> np.ndarray | None:
    """Pixel value -> train id for a mask kind (uint8; 255 = not scored); None for ``labelTrainIds``."""
    ids = np.full(256, IGNORE, np.uint8)
    for label in LABELS:
        ids[label.id] = label.train_id
    if kind == "labelIds":
        return ids
    if kind == "instanceIds":
        values = np.arange(65536)
        return ids[np.where(values < 1000, values, values // 1000).clip(max=255)]
    return None


@register_reader("cityscapes")
def read_cityscapes(annotation_file: Path | None, *, root: Path, images: str | None = "leftImg8bit",
                    masks: str | None = "gtFine", classes: Sequence[str] | None = None, names: set[str] | None = None,
                    mask_kind: str = "auto", **_: Any) -> DatasetIndex:
    """Pair ``leftImg8bit`` images with ``gtFine`` masks.

    Args:
        annotation_file: unused (the masks are the annotations).
        root: dataset root; paths in the index are relative to it.
        images, masks: the two folders relative to ``root``.
        classes: 19 names to use instead of the official ones.
        names: only these image stems (without ``_leftImg8bit``).
        mask_kind: ``auto`` (the first of ``labelIds``, ``labelTrainIds``, ``instanceIds`` present),
            or one of them (``data.options.mask_kind``).

    Returns:
        A semantic-segmentation ``DatasetIndex`` with ``mask_table`` set for label and instance ids.

    Raises:
        DataError: a missing folder, no images, no masks of the kind, or ``classes`` that are not 19 names.
    """
    image_dir, mask_dir = root / (images or "leftImg8bit"), root / (masks or "gtFine")
    for kind, folder in (("image", image_dir), ("mask", mask_dir)):
        if not folder.is_dir():
            raise DataError(f"{kind} folder not found", where=str(folder),
                            hint="Cityscapes: leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/ below data.root")
    if classes and len(classes) != len(TRAIN_CLASSES):
        raise DataError(f"data.classes has {len(classes)} names; Cityscapes has {len(TRAIN_CLASSES)} train ids",
                        hint="remove data.classes to use the official names")
    if mask_kind not in ("auto", *MASK_KINDS):
        raise DataError(f"options.mask_kind is {mask_kind!r}", hint=f"use auto or one of {', '.join(MASK_KINDS)}")
    image_files = _files(image_dir, "_leftImg8bit")
    if names is not None:
        image_files = {key: path for key, path in image_files.items() if Path(key).name in names}
    if not image_files:
        raise DataError("no *_leftImg8bit images found", where=str(image_dir),
                        hint="see docs/formats.md for the layout")
    found = {kind: _files(mask_dir, f"_gtFine_{kind}") for kind in MASK_KINDS}
    if mask_kind == "auto":
        mask_kind = next((kind for kind in MASK_KINDS if set(found[kind]) & set(image_files)), "")
        if not mask_kind:
            raise DataError("no image has a *_gtFine_labelIds.png (or labelTrainIds, instanceIds) mask",
                            where=str(mask_dir),
                            hint="masks pair with images by name, below the same split/city folders")
    masks_found = found[mask_kind]
    source = Location(str(mask_dir))
    records = []
    pairs = sorted(image_files.items())
    for image_id, ((key, path), (width, height)) in enumerate(zip(pairs, image_sizes([p for _, p in pairs])), start=1):
        mask = masks_found.get(key, mask_dir / f"{key}_gtFine_{mask_kind}.png")
        records.append(ImageRecord(id=image_id, file_name=path.relative_to(root).as_posix(), width=width, height=height,
                                   split=Path(key).parts[0], mask_file=mask.relative_to(root).as_posix(),
                                   source=source))
    return DatasetIndex(
        root=root,
        categories=[Category(position, name) for position, name in enumerate(classes or TRAIN_CLASSES)],
        images=records,
        task="semantic_segmentation",
        ignore_index=IGNORE,
        sources=[str(mask_dir)],
        format="cityscapes",
        mask_table=label_table(mask_kind),
    )


def read_table_mask(path: Path, table: np.ndarray) -> np.ndarray:
    """Train ids ``(H, W)`` (uint8) of a label- or instance-id mask; values past the table are not scored.

    Raises:
        DataError: a missing or undecodable file, or a mask that is not single-channel.
    """
    try:
        with open_image(path, "mask") as image:
            array = np.asarray(image)
    except FileNotFoundError:
        raise DataError("mask file not found", where=str(path),
                        hint="run 'cvtrain check' to list every missing mask") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot decode mask: {error}", where=str(path), hint="replace the mask file") from None
    if array.ndim != 2 or array.dtype.kind not in "ui":
        raise DataError(f"mask of shape {array.shape} and type {array.dtype} is not a label-id mask", where=str(path),
                        hint="Cityscapes masks are single-channel PNGs of label ids")
    return table[np.minimum(array.astype(np.int64), len(table) - 1)] if array.size and array.max() >= len(table) \
        else table[array]


def map_value_counts(values: dict[int, int], table: np.ndarray | None) -> dict[int, int]:
    """Pixel counts per mask value -> pixel counts per class (``mask_table``); unchanged without a table."""
    if table is None:
        return values
    mapped: dict[int, int] = {}
    for value, count in values.items():
        key = int(table[value]) if 0 <= value < len(table) else IGNORE
        mapped[key] = mapped.get(key, 0) + count
    return mapped
