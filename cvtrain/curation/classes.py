"""Class statistics per split and the warnings drawn from them: imbalance, rare, unused, split gaps, negatives."""
from __future__ import annotations

from typing import Any

import numpy as np

from cvtrain.curation.columns import NO_IMAGE, lookup_rows
from cvtrain.curation.findings import Collector

UNASSIGNED = "(no split)"


def category_labels(out: Collector) -> np.ndarray:
    """Position of each annotation's category in ``index.categories``; -1 when undeclared."""
    declared = np.array([category.id for category in out.index.categories], dtype=np.int64)
    return lookup_rows(declared, out.annotations.category_id)


def split_labels(out: Collector) -> tuple[list[str], np.ndarray]:
    """Split names (plus one for unassigned images, if any) and each image row's position in them."""
    names = list(out.images.split_names)
    split = out.images.split.copy()
    if (split < 0).any():
        split[split < 0] = len(names)
        names.append(UNASSIGNED)
    return names, split


def class_statistics(out: Collector, usable: np.ndarray, mask_values: dict[int, dict[int, int]]) -> dict[str, Any]:
    """Counts per split and class, and the class-level findings.

    For detection an example is an annotation; for semantic masks it is an
    image in which the class appears, and the imbalance ratio uses pixels.
    """
    index = out.index
    names = index.class_names
    k = len(names)
    split_names, image_split = split_labels(out)
    s = len(split_names)
    semantic = index.task == "semantic_segmentation" or (
        not index.annotations and any(image.mask_file for image in index.images))
    if semantic:
        examples, weight = _mask_counts(out, mask_values, image_split, s)
    else:
        label = category_labels(out)
        rows = usable & (label >= 0)
        split_of = image_split[out.annotations.image_row[rows]]
        examples = np.bincount(split_of * k + label[rows], minlength=s * k).reshape(s, k)
        weight = examples
    images_per_split = np.bincount(image_split, minlength=s)
    annotated = np.zeros(len(index.images), dtype=bool)
    known = out.annotations.image_row[out.annotations.image_row != NO_IMAGE]
    annotated[known] = True
    if semantic:
        annotated[list(mask_values)] = True
    negatives = np.bincount(image_split[~annotated], minlength=s)

    splits: dict[str, Any] = {}
    for position, split in enumerate(split_names):
        present = weight[position][weight[position] > 0]
        ratio = float(present.max() / present.min()) if len(present) >= 2 else None
        splits[split] = {
            "images": int(images_per_split[position]),
            "annotations": int(examples[position].sum()) if not semantic else None,
            "negatives": int(negatives[position]) if not semantic else None,
            "class_counts": dict(zip(names, examples[position].tolist())),
            "imbalance_ratio": ratio,
        }
        if semantic:
            total = max(int(weight[position].sum()), 1)
            splits[split]["pixel_share"] = {n: round(v / total, 6) for n, v in zip(names, weight[position].tolist())}
        if ratio is not None and ratio > out.config.max_imbalance:
            unit = "pixels" if semantic else "annotations"
            most, least = (
                int(np.argmax(weight[position])),
                int(np.argmin(np.where(weight[position] > 0, weight[position], np.inf))),
            )
            out.add("class.imbalance", f"split {split!r}: {names[most]!r} has {ratio:.1f}x the {unit} of "
                    f"{names[least]!r}", split=split, file=_source(out))
    if not semantic or mask_values:  # masks not read (check_files off): nothing is known about classes
        _class_findings(out, names, split_names, examples)
    if not semantic:
        rows = np.flatnonzero(~annotated)
        out.add_images("image.negative", rows, "no annotations: counted as a negative example")
    return {"classes": names, "splits": splits, "semantic": semantic}


def _mask_counts(out: Collector, mask_values: dict[int, dict[int, int]], image_split: np.ndarray,
                 s: int) -> tuple[np.ndarray, np.ndarray]:
    categories = out.index.categories
    column = {category.id: position for position, category in enumerate(categories)}
    examples = np.zeros((s, len(categories)), dtype=np.int64)
    pixels = np.zeros((s, len(categories)), dtype=np.int64)
    for row, values in mask_values.items():  # one entry per mask file, not per pixel
        for value, count in values.items():
            if value in column:
                examples[image_split[row], column[value]] += 1
                pixels[image_split[row], column[value]] += count
    return examples, pixels


def _source(out: Collector) -> str | None:
    return out.index.sources[0] if out.index.sources else None


def _class_findings(out: Collector, names: list[str], split_names: list[str], examples: np.ndarray) -> None:
    total = examples.sum(axis=0)
    for position in np.flatnonzero(total == 0).tolist():
        out.add("class.unused", f"class {names[position]!r} is declared but has no examples", file=_source(out))
    minimum = out.config.min_class_examples
    for position in np.flatnonzero((total > 0) & (total < minimum)).tolist():
        out.add("class.rare", f"class {names[position]!r} has {int(total[position])} examples (fewer than {minimum})",
                file=_source(out))
    real = [p for p, name in enumerate(split_names) if name != UNASSIGNED]
    if len(real) < 2:
        return
    for position in np.flatnonzero(total > 0).tolist():
        counts = examples[real, position]
        for missing in np.flatnonzero(counts == 0).tolist():
            having = ", ".join(f"{int(counts[p])} in {split_names[real[p]]!r}" for p in np.flatnonzero(counts).tolist())
            out.add("class.missing_in_split", f"class {names[position]!r} has {having} and none in "
                    f"{split_names[real[missing]]!r}", split=split_names[real[missing]], file=_source(out))
