"""COCO JSON out: one ``annotations/<split>.json`` and one ``images/<split>/`` folder per split.

Everything in the index is carried over: category ids and names, boxes, areas, crowd flags, polygons and
RLE, and ``Annotation.extra`` as the annotation's ``attributes`` object (VOC ``difficult``/``truncated``, KITTI
``truncated``/``occluded``/``alpha`` and the 3-D values), which the COCO reader reads back. KITTI's DontCare
regions go into the image record as ``ignore_regions`` (a key COCO tools skip; the COCO reader keeps it).
A box without an area gets ``width * height`` (COCO requires one).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from cvtrain.data.index import DatasetIndex
from cvtrain.data.writers import (
    Losses,
    WriteResult,
    image_size,
    place_image,
    progress,
    register_writer,
    relative_names,
    split_of,
    write_bytes,
    write_dataset_file,
)


def dumps(payload: Any) -> bytes:
    """Compact JSON bytes."""
    return msgspec.json.encode(payload)


@register_writer("coco")
def write_coco(index: DatasetIndex, out: Path, *, images: str = "copy", **_: Any) -> WriteResult:
    """Write ``index`` as COCO files below ``out`` (see the module docstring for the layout).

    Args:
        index: a detection or instance-segmentation index.
        out: a new or empty folder.
        images: ``copy``, ``link``, ``symlink`` or ``none``: how the image files get there.

    Returns:
        The ``WriteResult`` (``lost`` names what was filled in or left out).
    """
    losses = Losses()
    names = relative_names(index.images)
    split_names = sorted({split_of(image) for image in index.images})
    split_by_image = {image.id: split_of(image) for image in index.images}
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory or ""} for c in index.categories]
    records: dict[str, list[dict[str, Any]]] = {split: [] for split in split_names}
    for image in progress(index.images, "writing COCO"):
        width, height = image_size(index, image)
        record: dict[str, Any] = {"id": image.id, "file_name": names[image.id], "width": width, "height": height}
        if image.extra and image.extra.get("ignore_regions"):
            record["ignore_regions"] = [list(box) for box in image.extra["ignore_regions"]]
        records[split_by_image[image.id]].append(record)
        place_image(index, image, out / "images" / split_by_image[image.id] / names[image.id], images)
    known = {c.id for c in index.categories}
    annotations: dict[str, list[dict[str, Any]]] = {split: [] for split in split_names}
    for annotation in index.annotations:
        x, y, w, h = annotation.bbox
        area = annotation.area
        if area is None:
            area = float(w * h)
        record = {"id": annotation.id, "image_id": annotation.image_id, "category_id": annotation.category_id,
                  "bbox": [x, y, w, h], "area": area, "iscrowd": int(annotation.iscrowd)}
        if annotation.segmentation is not None:
            record["segmentation"] = annotation.segmentation
        attributes = dict(annotation.extra or {})
        if annotation.category_id in known:
            attributes.pop("name", None)  # the category says it
        if attributes:
            record["attributes"] = attributes
        annotations[split_by_image.get(annotation.image_id, split_names[0] if split_names else "train")].append(record)
    splits = {}
    for split in split_names:
        target = out / "annotations" / f"{split}.json"
        write_bytes(target, dumps({"images": records[split], "annotations": annotations.get(split, []),
                                   "categories": categories}))
        splits[split] = {"annotations": str(PurePosixPath("annotations", f"{split}.json")),
                         "images": str(PurePosixPath("images", split))}
    dataset_file = write_dataset_file(out, {"format": "coco", "splits": splits})
    return WriteResult(out=out, format="coco", dataset_file=dataset_file, images=len(index.images),
                       annotations=len(index.annotations), lost=losses.lines())
