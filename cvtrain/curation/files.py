"""Checks that read the image and mask files: existence, decoding, sizes, modes, duplicates, leakage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtrain.curation.decode import DecodeCache, inspect_files
from cvtrain.curation.findings import Collector
from cvtrain.data.files import HIGH_BIT_MODES, inside_root
from cvtrain.errors import DataError

GREY_MODES = ("1", "L", "LA")  # 16-bit and float greys are reported as image.high_bit_depth
MIN_HASH_BITS = 4  # near-flat images (almost all dHash bits equal) match each other by chance


@dataclass
class FileFacts:
    """What the files told us, per image row."""

    width: np.ndarray  # real size, NaN when unknown (missing, unreadable or not looked at)
    height: np.ndarray
    mask_values: dict[int, dict[int, int]] = field(default_factory=dict)  # image row -> mask value -> pixels


def resolve_inside(root: Path, name: str) -> Path | None:
    """``root / name`` if it stays inside ``root`` (``data.files.inside_root``, as training requires), else None."""
    try:
        return inside_root(root, name)
    except DataError:
        return None


def check_files(out: Collector, *, progress: bool) -> FileFacts:
    """Open every image (and mask) once, in parallel, and report what is wrong with the files."""
    index, config = out.index, out.config
    root = Path(index.root).resolve()
    tasks: list[tuple[str, str]] = []
    owners: list[tuple[int, str]] = []
    for row, image in enumerate(index.images):
        for kind, name in (("image", image.file_name), ("mask", image.mask_file)):
            if not name:
                continue
            path = resolve_inside(root, name)
            if path is None:
                out.add_images("file.outside_root", [row], f"{kind} path {name!r} resolves outside {root}")
                continue
            tasks.append((str(path), kind))
            owners.append((row, kind))
    cache = DecodeCache(config.cache_file, enabled=config.use_cache and config.decode_images)
    results = inspect_files(tasks, decode=config.decode_images, cache=cache, workers=config.workers, progress=progress)

    n = len(index.images)
    facts = FileFacts(width=np.full(n, np.nan), height=np.full(n, np.nan))
    images = {row: result for (row, kind), result in zip(owners, results) if kind == "image"}
    masks = {row: result for (row, kind), result in zip(owners, results) if kind == "mask"}
    _report_unreadable(out, images, "image")
    _report_unreadable(out, masks, "mask")
    for row, result in images.items():
        if "width" in result:
            facts.width[row], facts.height[row] = result["width"], result["height"]
    _check_sizes(out, facts)
    _check_modes(out, images)
    _check_duplicates(out, images)
    _check_leakage(out, images)
    _check_masks(out, masks, facts)
    for name in index.unannotated:
        out.add("image.unannotated", f"image {name!r} has no annotation file", image=name)
    return facts


def _report_unreadable(out: Collector, results: dict[int, dict], kind: str) -> None:
    missing = [row for row, result in results.items() if result.get("missing")]
    if kind == "image" and len(missing) > 1 and len(missing) == len(out.index.images):  # a wrong or empty folder
        from cvtrain.data.loading import absent_images_error

        error = absent_images_error(Path(out.index.root), [image.file_name for image in out.index.images])
        out.add("image.none_found", error.message, file=error.where)
        return
    out.add_images(f"{kind}.missing", missing, [f"{kind} file {_name(out, row, kind)!r} not found" for row in missing])
    broken = [row for row, result in results.items() if "error" in result]
    out.add_images(f"{kind}.corrupt", broken,
                   [f"{kind} {_name(out, row, kind)!r} cannot be decoded: {results[row]['error']}" for row in broken])


def _name(out: Collector, row: int, kind: str) -> str:
    image = out.index.images[row]
    return image.file_name if kind == "image" else image.mask_file


def _check_sizes(out: Collector, facts: FileFacts) -> None:
    declared_w, declared_h = out.images.width, out.images.height
    known = ~np.isnan(declared_w) & ~np.isnan(declared_h) & ~np.isnan(facts.width)
    rows = np.flatnonzero(known & ((declared_w != facts.width) | (declared_h != facts.height)))

    def messages(shown: np.ndarray) -> list[str]:
        """One message per unreadable file: missing, unreadable or undecodable, with the decoder's reason."""
        texts = []
        for row in shown.tolist():
            text = (f"annotations say {declared_w[row]:.0f}x{declared_h[row]:.0f}, "
                    f"the file is {facts.width[row]:.0f}x{facts.height[row]:.0f}")
            if declared_w[row] == facts.height[row] and declared_h[row] == facts.width[row]:
                text += " (swapped: an EXIF rotation?)"
            texts.append(text)
        return texts

    out.add_images("image.size_mismatch", rows, messages)
    unknown = np.flatnonzero((np.isnan(declared_w) | np.isnan(declared_h)) & ~np.isnan(facts.width))
    out.add_images("image.size_unknown", unknown, lambda shown: (
        f"no size in the annotations; the file is {facts.width[r]:.0f}x{facts.height[r]:.0f}" for r in shown))


def _check_modes(out: Collector, images: dict[int, dict]) -> None:
    by_code: dict[str, list[int]] = {"image.grayscale": [], "image.cmyk": [], "image.high_bit_depth": [],
                                     "image.palette": [], "image.alpha": []}
    modes = {row: result.get("mode") for row, result in images.items() if result.get("mode")}
    for row, mode in modes.items():
        if mode in HIGH_BIT_MODES:
            by_code["image.high_bit_depth"].append(row)
        elif mode in GREY_MODES:
            by_code["image.grayscale"].append(row)
        elif mode == "CMYK":
            by_code["image.cmyk"].append(row)
        elif mode in ("P", "PA"):
            by_code["image.palette"].append(row)
        if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            by_code["image.alpha"].append(row)
    for code, rows in by_code.items():
        out.add_images(code, rows, [f"mode {modes[row]}" for row in rows])
    rotated = sorted(row for row, result in images.items() if result.get("orientation", 1) not in (1, None))
    turns = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "transposed", 6: "rotated 90° clockwise",
             7: "transversed", 8: "rotated 90° counter-clockwise"}
    out.add_images("image.exif_orientation", rotated, [
        f"EXIF orientation {images[row]['orientation']} ({turns.get(images[row]['orientation'], 'unknown')}): "
        f"viewers show it turned, the model sees the stored {images[row]['width']}x{images[row]['height']} pixels"
        for row in rotated])


def _check_duplicates(out: Collector, images: dict[int, dict]) -> None:
    first: dict[str, int] = {}
    rows, texts = [], []
    for row in sorted(images):
        digest = images[row].get("sha1")
        if digest is None:
            continue
        if digest in first:
            rows.append(row)
            original = out.index.images[first[digest]]
            texts.append(
                f"same bytes as {original.file_name!r}" + (f" (split {original.split!r})" if original.split else "")
            )
        else:
            first[digest] = row
    out.add_images("image.duplicate", rows, texts)


def _check_leakage(out: Collector, images: dict[int, dict]) -> None:
    if not out.enabled("split.leakage") or len(out.images.split_names) < 2:
        return
    rows = np.array([row for row in sorted(images) if images[row].get("dhash") is not None], dtype=np.int64)
    if len(rows) == 0:
        return
    hashes = np.array([images[row]["dhash"] for row in rows.tolist()], dtype=np.uint64)
    informative = (np.bitwise_count(hashes) >= MIN_HASH_BITS) & (np.bitwise_count(~hashes) >= MIN_HASH_BITS)
    rows, hashes = rows[informative], hashes[informative]
    split = out.images.split[rows]
    limit = out.config.near_duplicate_bits
    flagged, texts = [], []
    names = out.images.split_names
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            small, large = (a, b) if (split == a).sum() <= (split == b).sum() else (b, a)
            small_rows, large_rows = rows[split == small], rows[split == large]
            small_hashes, large_hashes = hashes[split == small], hashes[split == large]
            if len(small_rows) == 0 or len(large_rows) == 0:
                continue
            step = max(1, 4_000_000 // len(large_rows))
            for begin in range(0, len(small_rows), step):
                distance = np.bitwise_count(small_hashes[begin:begin + step, None] ^ large_hashes[None, :])
                nearest = distance.argmin(axis=1)
                best = distance[np.arange(len(nearest)), nearest]
                for position in np.flatnonzero(best <= limit).tolist():
                    other = int(large_rows[nearest[position]])
                    flagged.append(int(small_rows[begin + position]))
                    texts.append(f"near-duplicate of {names[large]} image {out.index.images[other].file_name!r} "
                                 f"(dHash distance {int(best[position])} of 64)")
    out.add_images("split.leakage", flagged, texts)


def _check_masks(out: Collector, masks: dict[int, dict], facts: FileFacts) -> None:
    index = out.index
    allowed = {category.id for category in index.categories}
    if index.ignore_index is not None:
        allowed.add(index.ignore_index)
    size_rows, size_texts, value_rows, value_texts, deep_rows, deep_texts, void_rows = [], [], [], [], [], [], []
    for row, result in sorted(masks.items()):
        if "width" not in result:
            continue
        width, height = facts.width[row], facts.height[row]
        if np.isnan(width):
            width, height = out.images.width[row], out.images.height[row]
        if not np.isnan(width) and (result["width"], result["height"]) != (width, height):
            size_rows.append(row)
            size_texts.append(f"mask is {result['width']}x{result['height']}, image is {width:.0f}x{height:.0f}")
        values = {int(v): c for v, c in result.get("values", {}).items()}
        if index.mask_table is not None:  # label ids -> classes (Cityscapes)
            from cvtrain.data.formats.cityscapes import map_value_counts

            values = map_value_counts(values, index.mask_table)
        if values:
            facts.mask_values[row] = values
        if result.get("mode") in ("I;16", "I;16B", "I;16L", "I"):
            deep_rows.append(row)
            deep_texts.append(f"mask mode {result['mode']}")
        if values and index.ignore_index is not None and set(values) == {index.ignore_index}:
            void_rows.append(row)
        unknown = sorted(set(values) - allowed)
        if unknown:
            shown = ", ".join(f"{v} ({values[v]} px)" for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            value_rows.append(row)
            value_texts.append(f"mask values {shown} are not declared classes {sorted(allowed - {index.ignore_index})}"
                               f" nor ignore_index {index.ignore_index}")
    out.add_images("mask.size_mismatch", size_rows, size_texts)
    out.add_images("mask.unknown_value", value_rows, value_texts)
    out.add_images("mask.high_bit_depth", deep_rows, deep_texts)
    out.add_images("mask.all_ignore", void_rows,
                   [f"all {sum(facts.mask_values[row].values())} pixels are ignore_index {index.ignore_index}"
                    for row in void_rows])


def check_image_shapes(out: Collector, width: np.ndarray, height: np.ndarray) -> None:
    """Very small, very large or very elongated images (sizes from the files when read, else declared)."""
    config = out.config
    short, long = np.fmin(width, height), np.fmax(width, height)
    with np.errstate(invalid="ignore", divide="ignore"):
        extreme = (short < config.min_image_side) | (long > config.max_image_side)
        aspect = long / short
    rows = np.flatnonzero(extreme)
    out.add_images("image.extreme_size", rows, lambda shown: (
        f"image is {width[r]:.0f}x{height[r]:.0f} (sides allowed: {config.min_image_side} to {config.max_image_side})"
        for r in shown))
    rows = np.flatnonzero(aspect > config.max_image_aspect)
    out.add_images("image.extreme_aspect", rows, lambda shown: (
        f"image is {width[r]:.0f}x{height[r]:.0f}, aspect ratio {aspect[r]:.1f}" for r in shown))
