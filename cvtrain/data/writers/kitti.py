"""KITTI 2D detection out, as TAO reads it: ``<split>/label_2/<name>.txt`` beside ``<split>/image_2/<name>``.

One line per object: ``type truncated occluded alpha left top right bottom h w l x y z rotation_y``. The
values a KITTI source had (``Annotation.extra``) are written back unchanged; for other sources KITTI's own
"unknown" values are used (truncated 0, occluded 0, alpha -10, dimensions -1, location -1000, rotation -10).
Coordinates keep their decimals. A class name with spaces gets underscores (KITTI separates by spaces).
Crowd regions and the images' ``ignore_regions`` become ``DontCare`` lines; masks, polygons and areas
cannot be carried (listed as lost).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from cvtrain.data.index import DatasetIndex
from cvtrain.data.writers import (
    Losses,
    WriteResult,
    flat_names,
    place_image,
    progress,
    register_writer,
    split_of,
    write_dataset_file,
    write_text,
)

UNKNOWN = {"truncated": 0.0, "occluded": 0, "alpha": -10.0, "dimensions": [-1.0, -1.0, -1.0],
           "location": [-1000.0, -1000.0, -1000.0], "rotation_y": -10.0}


@register_writer("kitti")
def write_kitti(index: DatasetIndex, out: Path, *, images: str = "copy", **_: Any) -> WriteResult:
    """Write ``index`` as KITTI label files below ``out``.

    Args:
        index: a detection index.
        out: a new or empty folder.
        images: ``copy``, ``link``, ``symlink`` or ``none``.

    Returns:
        The ``WriteResult``; ``lost`` counts segmentations, areas, crowd classes, VOC ``difficult`` flags
        and renamed classes, and says when category ids were renumbered.
    """
    losses = Losses()
    names = flat_names(index.images)
    type_of = {c.id: c.name.replace(" ", "_") for c in index.categories}
    renamed = [c.name for c in index.categories if " " in c.name]
    losses.add(f"class names with spaces written with underscores ({', '.join(renamed)})", len(renamed))
    if [c.id for c in index.categories] != list(range(1, len(index.categories) + 1)) or \
            [c.name for c in index.categories] != sorted(c.name for c in index.categories):
        losses.add("category ids and order (KITTI has names only; without data.classes they read back sorted, "
                   "as 1..K)", len(index.categories))
    by_image = index.annotations_by_image
    splits: set[str] = set()
    written = 0
    for image in progress(index.images, "writing KITTI"):
        split = split_of(image)
        splits.add(split)
        lines = []
        for annotation in by_image.get(image.id, []):
            extra = annotation.extra or {}
            if annotation.segmentation is not None:
                losses.add("segmentations (masks and polygons; KITTI holds boxes)")
            if annotation.area is not None and "truncated" not in extra:
                losses.add("areas")
            if extra.get("difficult"):
                losses.add("VOC difficult flags")
            if annotation.iscrowd:
                losses.add("crowd regions written as DontCare (their class is not kept)")
                lines.append(_line("DontCare", annotation.bbox, {}))
                continue
            kind = type_of.get(annotation.category_id, str(extra.get("name", annotation.category_id)).replace(" ", "_"))
            lines.append(_line(kind, annotation.bbox, extra))
            written += 1
        for box in (image.extra or {}).get("ignore_regions", []):
            lines.append(_line("DontCare", box, {}))
        stem = PurePosixPath(names[image.id]).stem
        write_text(out / split / "label_2" / f"{stem}.txt", "".join(lines))
        place_image(index, image, out / split / "image_2" / names[image.id], images)
    dataset_file = write_dataset_file(out, {
        "format": "kitti", "classes": [type_of[c.id] for c in index.categories],
        "splits": {split: {"annotations": f"{split}/label_2", "images": f"{split}/image_2"}
                   for split in sorted(splits)}})
    return WriteResult(out=out, format="kitti", dataset_file=dataset_file, images=len(index.images),
                       annotations=written, lost=losses.lines())


def _line(kind: str, bbox: tuple[float, float, float, float], extra: dict[str, Any]) -> str:
    x, y, w, h = bbox
    value = {key: extra.get(key, default) for key, default in UNKNOWN.items()}
    fields = [kind, _decimal(value["truncated"]), str(int(value["occluded"])), _decimal(value["alpha"]),
              _decimal(x), _decimal(y), _decimal(x + w), _decimal(y + h),
              *(_decimal(v) for v in value["dimensions"]), *(_decimal(v) for v in value["location"]),
              _decimal(value["rotation_y"])]
    if "score" in extra:
        fields.append(_decimal(extra["score"]))
    return " ".join(fields) + "\n"


def _decimal(value: float) -> str:
    """Two decimals as KITTI writes them when that is exact, else every digit (nothing is rounded)."""
    value = float(value)
    return f"{value:.2f}" if round(value, 2) == value else repr(value)
