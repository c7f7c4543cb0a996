"""``format: shapes``, the quick start's dataset: generated on first use, then read as COCO.

Squares, discs and triangles in random colours on a noisy background, written
as PNG files and a COCO ``annotations.json`` under ``data.root``. Generation is
seeded, so every machine gets the same files. An existing dataset is never
overwritten.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cvtrain.data.formats import register_reader
from cvtrain.data.formats.coco import read_coco
from cvtrain.data.index import DatasetIndex

CLASSES = ("square", "disc", "triangle")


def make_shapes(root: Path, *, num_images: int = 200, image_size: int = 128, seed: int = 0,
                max_objects: int = 3, negatives: float = 0.05) -> Path:
    """Write a synthetic COCO detection dataset to ``root`` and return the annotation file."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        background = noise.integers(0, 70, size=(image_size, image_size, 3), dtype=np.uint8)
        canvas = Image.fromarray(background)
        draw = ImageDraw.Draw(canvas)
        count = 0 if rng.random() < negatives else rng.randint(1, max_objects)
        for _ in range(count):
            label = rng.randrange(len(CLASSES))
            size = rng.randint(image_size // 6, image_size // 2)
            x0, y0 = rng.randint(0, image_size - size), rng.randint(0, image_size - size)
            colour = tuple(rng.randint(110, 255) for _ in range(3))
            if CLASSES[label] == "square":
                draw.rectangle((x0, y0, x0 + size - 1, y0 + size - 1), fill=colour)
            elif CLASSES[label] == "disc":
                draw.ellipse((x0, y0, x0 + size - 1, y0 + size - 1), fill=colour)
            else:
                draw.polygon([(x0 + size / 2, y0), (x0, y0 + size - 1), (x0 + size - 1, y0 + size - 1)], fill=colour)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x0, y0, size, size], "area": float(size * size), "iscrowd": 0})
        name = f"shape_{image_id:04d}.png"
        canvas.save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    target = root / "annotations.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    partial.replace(target)  # the annotation file appears last, so a half-written dataset is regenerated
    return target


@register_reader("shapes")
def read_shapes(annotation_file: Path, *, root: Path, images: str = "images", num_images: int = 200,
                image_size: int = 128, seed: int = 0, **_: Any) -> DatasetIndex:
    """Generate the dataset under ``root`` if it is missing, then read it as COCO."""
    if not annotation_file.is_file():
        make_shapes(root, num_images=num_images, image_size=image_size, seed=seed)
    index = read_coco(annotation_file, root=root, images=images)
    index.format = "shapes"
    return index
