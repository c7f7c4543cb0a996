"""Pascal VOC XML out: ``Annotations/<name>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Boxes are written in VOC's 1-based inclusive pixels (``xmin = x + 1``, ``xmax = x + width``, the inverse of
the reader), as integers where they are whole and as decimals otherwise, so nothing is rounded. VOC has no
polygons, masks, crowd regions, areas or category ids: those are listed as not carried over (categories
keep their names and order; ids become 1..K).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import escape

from cvtrain.data.index import DatasetIndex
from cvtrain.data.writers import (
    Losses,
    WriteResult,
    flat_names,
    image_size,
    number_text,
    place_image,
    progress,
    register_writer,
    split_of,
    write_dataset_file,
    write_text,
)


@register_writer("voc")
def write_voc(index: DatasetIndex, out: Path, *, images: str = "copy", **_: Any) -> WriteResult:
    """Write ``index`` as Pascal VOC below ``out``.

    Args:
        index: a detection index.
        out: a new or empty folder.
        images: ``copy``, ``link``, ``symlink`` or ``none``.

    Returns:
        The ``WriteResult``; ``lost`` counts segmentations, crowd regions, KITTI-only values and DontCare
        regions, and says when category ids were renumbered.
    """
    losses = Losses()
    names = flat_names(index.images)
    name_of = {c.id: c.name for c in index.categories}
    if [c.id for c in index.categories] != list(range(1, len(index.categories) + 1)):
        losses.add("category ids (VOC has names only; they read back as 1..K in the same order)", len(index.categories))
    by_image = index.annotations_by_image
    members: dict[str, list[str]] = {}
    written = 0
    for image in progress(index.images, "writing VOC"):
        stem = PurePosixPath(names[image.id]).stem
        members.setdefault(split_of(image), []).append(stem)
        width, height = image_size(index, image)
        objects = []
        for annotation in by_image.get(image.id, []):
            extra = annotation.extra or {}
            if annotation.iscrowd:
                losses.add("crowd regions (VOC has none)")
                continue
            if annotation.segmentation is not None:
                losses.add("segmentations (polygons/RLE; VOC XML holds boxes)")
            if any(key in extra for key in ("alpha", "dimensions", "location", "rotation_y")):
                losses.add("KITTI values (alpha, 3-D box, occlusion level 0-3 and truncation 0-1 become 0/1 flags)")
            name = name_of.get(annotation.category_id, extra.get("name", str(annotation.category_id)))
            objects.append(_object(name, annotation.bbox, extra))
            written += 1
        regions = (image.extra or {}).get("ignore_regions", [])
        losses.add("DontCare regions (VOC has none)", len(regions))
        xml = (f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(names[image.id])}</filename>\n"
               f"  <size>\n    <width>{width or 0}</width>\n    <height>{height or 0}</height>\n    <depth>3</depth>\n"
               f"  </size>\n  <segmented>0</segmented>\n{''.join(objects)}</annotation>\n")
        write_text(out / "Annotations" / f"{stem}.xml", xml)
        place_image(index, image, out / "JPEGImages" / names[image.id], images)
    for split, stems in members.items():
        write_text(out / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{stem}\n" for stem in stems))
    dataset_file = write_dataset_file(out, {
        "format": "voc", "annotations": "Annotations", "images": "JPEGImages", "classes": index.class_names,
        "splits": {split: {"list": f"ImageSets/Main/{split}.txt"} for split in members}})
    return WriteResult(out=out, format="voc", dataset_file=dataset_file, images=len(index.images), annotations=written,
                       lost=losses.lines())


def _object(name: str, bbox: tuple[float, float, float, float], extra: dict[str, Any]) -> str:
    x, y, w, h = bbox
    truncated = extra.get("truncated", False)
    occluded = extra.get("occluded")
    pose = escape(str(extra.get("pose", "Unspecified")))
    lines = [f"  <object>\n    <name>{escape(name)}</name>\n    <pose>{pose}</pose>\n",
             f"    <truncated>{int(bool(truncated))}</truncated>\n",
             f"    <difficult>{int(bool(extra.get('difficult', False)))}</difficult>\n"]
    if occluded is not None:
        lines.append(f"    <occluded>{int(bool(occluded))}</occluded>\n")
    lines.append(f"    <bndbox>\n      <xmin>{number_text(x + 1)}</xmin>\n      <ymin>{number_text(y + 1)}</ymin>\n"
                 f"      <xmax>{number_text(x + w)}</xmax>\n      <ymax>{number_text(y + h)}</ymax>\n    </bndbox>\n"
                 "  </object>\n")
    return "".join(lines)
