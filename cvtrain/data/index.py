"""The format-neutral dataset index that every reader produces and everything else reads.

A ``DatasetIndex`` is a plain table of images, categories and annotations.
Readers (``cvtrain/data/formats``) fill it without judging it: a duplicate id,
a box outside its image or an unknown category stays in the index exactly as
the file says, so that ``cvtrain check`` can report it. Training, evaluation
and curation all read the same object.

Conventions:
- ``Annotation.bbox`` is ``(x, y, width, height)`` in absolute pixels of the
  original image, 0-based continuous coordinates (COCO's convention).
- ``ImageRecord.file_name`` and ``ImageRecord.mask_file`` are POSIX paths
  relative to ``DatasetIndex.root``.
- Category ids are the dataset's own (COCO ids may be sparse). Models see the
  contiguous labels ``1..K`` returned by ``label_of`` (0 is background).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.data.records import Annotation, Category, ImageRecord, Location
from cvtrain.data.table import AnnotationTable

__all__ = ["Annotation", "AnnotationTable", "Category", "DatasetIndex", "ImageRecord", "Location", "merge_indexes"]


@dataclass
class DatasetIndex:
    """Images, categories and annotations of one dataset, across all its splits."""

    root: Path
    categories: list[Category]
    images: list[ImageRecord]
    annotations: list[Annotation] = field(default_factory=list)
    task: str = "detection"
    ignore_index: int | None = None
    sources: list[str] = field(default_factory=list)
    format: str = ""
    # semantic masks whose pixel values are not the classes (Cityscapes labelIds): class of each value,
    # ``mask_table[value]``; values past its end are not scored. None: the values are the classes.
    mask_table: np.ndarray | None = None
    # image files (relative to ``root``) that the reader found without an annotation file (VOC): not used
    unannotated: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- lookups
    @cached_property
    def image_by_id(self) -> dict[int, ImageRecord]:
        """Image records by image id."""
        return {image.id: image for image in self.images}

    @cached_property
    def annotations_by_image(self) -> dict[int, list[Annotation]]:
        """Annotations grouped by image id (every image present, possibly empty)."""
        grouped: dict[int, list[Annotation]] = {image.id: [] for image in self.images}
        for annotation in self.annotations:
            grouped.setdefault(annotation.image_id, []).append(annotation)
        return grouped

    @cached_property
    def _labels(self) -> dict[int, int]:
        return {category.id: position + 1 for position, category in enumerate(self.categories)}

    @property
    def class_names(self) -> list[str]:
        """Category names in label order."""
        return [category.name for category in self.categories]

    @property
    def num_classes(self) -> int:
        """Number of categories (without background)."""
        return len(self.categories)

    def label_of(self, category_id: int) -> int:
        """Contiguous label ``1..K`` of a category id (0 is the background)."""
        return self._labels[category_id]

    def category_of(self, label: int) -> int:
        """Inverse of ``label_of``."""
        return self.categories[label - 1].id

    def image_path(self, image: ImageRecord) -> Path:
        """The image file of ``image`` below the root (not checked: see ``data.files.inside_root``)."""
        return self.root / image.file_name

    def mask_path(self, image: ImageRecord) -> Path | None:
        """Where ``image``'s mask is (semantic segmentation), or None when it has none."""
        return self.root / image.mask_file if image.mask_file else None

    @property
    def split_names(self) -> list[str]:
        """The names of the splits images are assigned to, sorted."""
        return sorted({image.split for image in self.images if image.split is not None})

    # ------------------------------------------------------------------ views
    def subset(self, image_ids: Iterable[int]) -> DatasetIndex:
        """A new index holding only these images and their annotations."""
        keep = set(image_ids)
        if _is_table(self.annotations):
            wanted = np.fromiter(keep, np.int64, len(keep))
            annotations = self.annotations.take(np.isin(self.annotations.image_id, wanted))
        else:
            annotations = [a for a in self.annotations if a.image_id in keep]
        return replace(self, images=[image for image in self.images if image.id in keep], annotations=annotations)

    def split(self, name: str) -> DatasetIndex:
        """The images of split ``name`` and their annotations, as a new index."""
        return self.subset(image.id for image in self.images if image.split == name)

    # ---------------------------------------------------------------- exports
    def to_coco(self) -> dict[str, Any]:
        """COCO ground truth for pycocotools (``COCO.dataset``)."""
        images = [
            {"id": image.id, "file_name": image.file_name, "width": image.width, "height": image.height}
            for image in self.images
        ]
        annotations = []
        for annotation in self.annotations:
            x, y, w, h = annotation.bbox
            record = {
                "id": annotation.id,
                "image_id": annotation.image_id,
                "category_id": annotation.category_id,
                "bbox": [x, y, w, h],
                "area": float(annotation.area) if annotation.area is not None else float(w * h),
                "iscrowd": int(annotation.iscrowd),
            }
            if annotation.segmentation is not None:
                record["segmentation"] = annotation.segmentation
            if annotation.extra and annotation.extra.get("difficult"):
                # VOC "difficult" objects are neither required nor penalised, as crowd regions are.
                record["ignore"] = 1
            annotations.append(record)
        annotations.extend(self._ignore_regions(annotations))
        categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory or ""} for c in self.categories]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _ignore_regions(self, annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Crowd records for each image's ``extra["ignore_regions"]`` (KITTI DontCare), one per category.

        pycocotools matches a crowd region only to detections of its own category; one region per
        category makes a detection of any class inside it neither a true nor a false positive.
        """
        regions = [(image.id, box) for image in self.images if image.extra
                   for box in image.extra.get("ignore_regions", ())]
        if not regions:
            return []
        next_id = max((a["id"] for a in annotations), default=0) + 1
        records = []
        for image_id, (x, y, w, h) in regions:
            for category in self.categories:
                records.append({"id": next_id, "image_id": image_id, "category_id": category.id, "bbox": [x, y, w, h],
                                "area": float(w * h), "iscrowd": 1, "ignore_region": 1})
                next_id += 1
        return records

    def fingerprint(self) -> str:
        """A stable hash of what training sees: files, sizes, splits, classes and labels."""
        digest = hashlib.sha256()
        digest.update(json.dumps([(c.id, c.name) for c in self.categories]).encode())
        for image in sorted(self.images, key=lambda record: record.id):
            digest.update(f"{image.id}|{image.file_name}|{image.width}|{image.height}|{image.split}|{image.mask_file}\n"
                          .encode("utf-8", "surrogatepass"))  # a name with a lone surrogate is refused later, not here
        if _is_table(self.annotations):  # the same lines, from the columns
            table = self.annotations
            order = np.argsort(table.id, kind="stable")
            rows = zip(table.id[order].tolist(), table.image_id[order].tolist(), table.category_id[order].tolist(),
                       map(tuple, table.bbox[order].tolist()), table.iscrowd[order].astype(int).tolist())
            digest.update("".join(f"{a}|{b}|{c}|{d}|{e}\n" for a, b, c, d, e in rows).encode())
        else:
            for annotation in sorted(self.annotations, key=lambda record: record.id):
                digest.update(f"{annotation.id}|{annotation.image_id}|{annotation.category_id}|{annotation.bbox}|{int(annotation.iscrowd)}\n".encode())
        return "sha256:" + digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts for ``run.json``: images, annotations and classes per split."""
        per_split: dict[str, dict[str, int]] = {}
        split_of = {image.id: image.split or "all" for image in self.images}
        for image in self.images:
            per_split.setdefault(image.split or "all", {"images": 0, "annotations": 0})["images"] += 1
        image_ids = self.annotations.image_id.tolist() if _is_table(self.annotations) else \
            [annotation.image_id for annotation in self.annotations]
        for image_id in image_ids:
            name = split_of.get(image_id, "unknown")
            per_split.setdefault(name, {"images": 0, "annotations": 0})["annotations"] += 1
        return {
            "classes": self.num_classes,
            "images": len(self.images),
            "annotations": len(self.annotations),
            "splits": per_split,
        }


def merge_indexes(parts: list[DatasetIndex]) -> DatasetIndex:
    """Join indexes read from separate files (one per split) into one.

    Image and annotation ids that clash across files are renumbered (the
    original id stays in ``source_id``); categories are matched by name.
    Ids that repeat *within* one file are left alone for the checks to report.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    categories = list(first.categories)
    by_name = {c.name: c for c in categories}
    images: list[ImageRecord] = []
    annotations: list[Annotation] = []
    tables = []
    columnar = all(_is_table(part.annotations) for part in parts)
    used_image_ids: set[int] = set()
    used_annotation_ids: set[int] = set()
    for part in parts:
        category_map: dict[int, int] = {}
        for category in part.categories:
            if category.name not in by_name:
                new = Category(max((c.id for c in categories), default=0) + 1, category.name, category.supercategory)
                if not any(c.id == category.id for c in categories):
                    new.id = category.id
                categories.append(new)
                by_name[new.name] = new
            category_map[category.id] = by_name[category.name].id
        image_offset = (max(used_image_ids) + 1) if used_image_ids & {i.id for i in part.images} else 0
        part_annotation_ids = set(part.annotations.id.tolist()) if _is_table(part.annotations) else \
            {a.id for a in part.annotations}
        annotation_offset = (max(used_annotation_ids) + 1) if used_annotation_ids & part_annotation_ids else 0
        for image in part.images:
            moved = replace(image, id=image.id + image_offset)
            if image_offset:
                moved.source_id = image.id if image.source_id is None else image.source_id
            images.append(moved)
        if columnar:
            tables.append(part.annotations.renumbered(id_offset=annotation_offset, image_offset=image_offset,
                                                      category_map=category_map))
        else:
            for annotation in part.annotations:
                annotations.append(
                    replace(
                        annotation,
                        id=annotation.id + annotation_offset,
                        image_id=annotation.image_id + image_offset,
                        category_id=category_map.get(annotation.category_id, annotation.category_id),
                    )
                )
        used_image_ids.update(i.id + image_offset for i in part.images)
        used_annotation_ids.update(a + annotation_offset for a in part_annotation_ids)
    if columnar:  # all parts are columns (COCO): so is the whole

        annotations = AnnotationTable.concatenate(tables)
    return DatasetIndex(
        root=first.root,
        categories=categories,
        images=images,
        annotations=annotations,
        task=first.task,
        ignore_index=first.ignore_index,
        sources=[s for part in parts for s in part.sources],
        format=first.format,
        mask_table=first.mask_table,
    )


def _is_table(annotations: Any) -> bool:
    """Whether ``annotations`` is an ``AnnotationTable`` (columns) rather than a list of objects."""
    return isinstance(annotations, AnnotationTable)
