"""Tiny COCO datasets written into tmp_path for the curation tests: 64x48 images, two boxes each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cvtrain.config import DataConfig

WIDTH, HEIGHT = 64, 48


def smooth_image(seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """A smooth random picture: its dHash is stable under small edits and differs between seeds."""
    grid = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def clean_coco(root: Path, images: int = 8) -> dict:
    """Eight 64x48 images, two boxes each (classes cat and dog), polygons that match the boxes."""
    (root / "images").mkdir(parents=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    for number in range(1, images + 1):
        smooth_image(number).save(root / "images" / f"{number}.png")
        data["images"].append({"id": number, "file_name": f"{number}.png", "width": WIDTH, "height": HEIGHT})
        for category, (x, y) in ((1, (4, 4)), (2, (30, 20))):
            add_box(data, number, category, [x, y, 20, 16])
    return data


def add_box(data: dict, image_id: int, category: int, box: list, **fields) -> dict:
    x, y, w, h = box
    record = {"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": category, "bbox": box,
              "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    record.update(fields)
    data["annotations"].append(record)
    return record


def write(root: Path, data: dict, splits: dict[str, list[int]] | None = None) -> DataConfig:
    (root / "annotations.json").write_text(json.dumps(data))
    description = {"format": "coco", "root": root, "annotations": "annotations.json", "images": "images"}
    if splits:
        by_id = {image["id"]: image["file_name"] for image in data["images"]}
        for name, ids in splits.items():
            (root / f"{name}.txt").write_text("".join(f"{by_id[i]}\n" for i in ids))
        description["splits"] = {name: {"list": f"{name}.txt"} for name in splits}
    return DataConfig(**description)
