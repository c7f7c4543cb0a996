"""The catalogue of check codes: default severity, the threshold that tunes it, and the fix.

Codes are stable strings (``box.outside_image``) that reports, severity
overrides and docs (``docs/curation.md``) refer to. A check may only emit a
code listed here; ``register_code`` refuses a duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class CheckCode:
    """A check code: its name, default severity, what it means and the key that tunes it."""

    code: str
    severity: Severity
    title: str
    hint: str
    threshold: str | None = None  # the ChecksConfig key that tunes the check, if any


CODES: dict[str, CheckCode] = {}


def register_code(code: str, severity: Severity, title: str, hint: str, threshold: str | None = None) -> None:
    """Add a check code to ``CODES``; a duplicate code is refused (``ValueError``)."""
    if code in CODES:
        raise ValueError(f"check code {code!r} is already registered")
    CODES[code] = CheckCode(code, severity, title, hint, threshold)


# ------------------------------------------------------------------ errors
register_code("file.unparseable", "error", "annotation file cannot be parsed",
              "fix the file at the line and column given, or export it again")
register_code("dataset.unreadable", "error", "the dataset cannot be read (a folder, list or field is missing)",
              "fix what the message names; nothing else was checked")
register_code("file.outside_root", "error", "file path escapes the dataset root",
              "file names must be relative paths inside data.root; move the file or fix the name")
register_code("image.missing", "error", "image file not found",
              "add the file, fix its name in the annotations, or remove the image entry")
register_code("image.none_found", "error", "the image folder holds none of the images the annotations name",
              "check data.root and data.images (an empty, wrong or unmounted folder), or the file names")
register_code("image.corrupt", "error", "image cannot be decoded (corrupt or truncated)",
              "replace the file with a good copy, or remove the image entry")
register_code("image.size_mismatch", "error", "image size in the annotations differs from the real size",
              "fix width/height in the annotations (boxes may have been drawn on a resized copy)")
register_code("image.duplicate_id", "error", "two image entries share an id",
              "give every image a unique id")
register_code("annotation.duplicate_id", "error", "two annotations share an id",
              "give every annotation a unique id")
register_code("annotation.unknown_image", "error", "annotation points to an image id that is not declared",
              "fix image_id or add the image entry")
register_code("annotation.unknown_category", "error", "annotation uses a category that is not declared",
              "declare the category (COCO 'categories', or data.classes for VOC) or fix the label")
register_code("box.not_finite", "error", "box has a NaN or infinite coordinate",
              "fix the coordinates; the exporter wrote a division by zero or a missing value")
register_code("box.non_positive", "error", "box has zero or negative width or height",
              "fix the box (x, y, width, height) or delete the annotation")
register_code("box.outside_image", "error", "box extends past the image edge",
              "clip or fix the box; check that it was drawn on this image at this size",
              "box_tolerance")
register_code("segmentation.invalid", "error", "segmentation is neither polygons of numbers nor a valid RLE",
              "write polygons as [[x1, y1, x2, y2, ...]] or RLE as {size: [h, w], counts: ...}")
register_code("segmentation.polygon_too_few_points", "error", "polygon has fewer than 3 points",
              "delete the polygon or redraw it with at least 3 points")
register_code("segmentation.polygon_odd_coordinates", "error", "polygon has an odd number of coordinates",
              "a polygon is x1, y1, x2, y2, ...; a value is missing or extra")
register_code("segmentation.rle_size_mismatch", "error", "RLE size differs from the image size",
              "RLE 'size' is [height, width] of the image; re-encode the mask at the image size")
register_code("mask.missing", "error", "mask file not found",
              "add the mask or fix its name")
register_code("mask.corrupt", "error", "mask cannot be decoded",
              "replace the mask file")
register_code("mask.unknown_value", "error", "mask holds values that are neither a declared class nor ignore_index",
              "map these values to classes, declare them, or set data.ignore_index")
register_code("mask.size_mismatch", "error", "mask size differs from the image size",
              "masks must have exactly the image's width and height")

# ---------------------------------------------------------------- warnings
register_code("class.imbalance", "warning", "class counts are strongly imbalanced",
              "consider class-balanced sampling or loss weights, or collect more of the rare classes",
              "max_imbalance")
register_code("class.rare", "warning", "class has few examples",
              "collect more examples, merge the class, or expect a noisy score for it",
              "min_class_examples")
register_code("class.missing_in_split", "warning", "class present in one split and absent from another",
              "re-split so every class is in every split, or its score will be missing or meaningless")
register_code("class.unused", "warning", "declared class has no annotations",
              "remove the class, or add examples; the model gets an output it can never learn")
register_code("box.duplicate", "warning", "the same box with the same class appears twice on an image",
              "delete the copy; duplicates double the loss for that object and skew AP")
register_code("box.class_conflict", "warning", "the same box is labelled with two classes",
              "keep the right class and delete the other annotation",
              "conflict_iou")
register_code("box.size_outlier", "warning", "box size is far from the other boxes of its class",
              "look at the crop: a mislabelled class or a box drawn at the wrong scale",
              "outlier_mads, outlier_min_examples")
register_code("box.aspect_outlier", "warning", "box aspect ratio is far from the other boxes of its class",
              "look at the crop: swapped width/height or a mislabelled class",
              "outlier_mads, outlier_min_examples")
register_code("box.tiny_at_input_size", "warning", "box shrinks below a few pixels at the model's input size",
              "raise train.image_size, tile the images, or accept that these objects will be missed",
              "min_box_pixels")
register_code("box.segmentation_mismatch", "warning", "box differs from the extent of its own mask or polygon",
              "recompute the box from the segmentation",
              "segmentation_box_iou")
register_code("annotation.area_mismatch", "warning", "'area' disagrees with the box or mask",
              "recompute area from the mask (or box); COCO eval uses it for the small/medium/large ranges",
              "area_ratio")
register_code("image.duplicate", "warning", "the same image file content appears more than once",
              "keep one copy; duplicates over-weight that image")
register_code("split.leakage", "warning", "near-duplicate images in two different splits (leakage)",
              "move the copies into one split, or validation scores will be optimistic",
              "near_duplicate_bits")
register_code("image.extreme_size", "warning", "image is very small or very large",
              "check the file; tiny images carry little signal and huge ones are resized hard",
              "min_image_side, max_image_side")
register_code("image.extreme_aspect", "warning", "image has an extreme aspect ratio",
              "check the file; letterboxing such images wastes most of the input",
              "max_image_aspect")
register_code("image.grayscale", "warning", "image is greyscale in a dataset fed as RGB",
              "fine if intended (it is converted to RGB); otherwise replace it with the colour original")
register_code("image.cmyk", "warning", "image is CMYK",
              "convert it to RGB with a colour-managed tool; naive conversion shifts colours")
register_code("image.high_bit_depth", "warning", "image has more than 8 bits per channel",
              "it is rescaled per image to 8 bits; convert it yourself if absolute intensity matters")
register_code("image.alpha", "warning", "image has an alpha channel, which is dropped",
              "the model sees the stored colour of transparent pixels (often black or garbage); "
              "composite the images onto a background, or save them without alpha")
register_code("image.exif_orientation", "warning", "image has an EXIF orientation that cvtrain does not apply",
              "cvtrain (like torchvision and pycocotools) reads the stored pixels; if the boxes were drawn on the "
              "rotated view, rotate the pixels (PIL.ImageOps.exif_transpose) and drop the tag, then check again")
register_code("image.unannotated", "warning", "image in the image folder has no annotation file and is not used",
              "add its annotation file (an empty one marks a negative example), or move the image out")
register_code("mask.all_ignore", "warning", "every pixel of the mask is ignore_index: the image teaches nothing",
              "fix the mask (an export that wrote the 'void' value everywhere?) or remove the image")

# -------------------------------------------------------------------- info
register_code("image.negative", "info", "image has no annotations (a negative example)",
              "nothing to do if intended: negatives teach the model what is not an object")
register_code("image.size_unknown", "info", "the annotations give no image size; the file's own size is used",
              "nothing to do; write the size (VOC <size>, COCO width/height) to catch images replaced by another")
register_code("mask.high_bit_depth", "info", "mask is stored with 16 or 32 bits per pixel",
              "nothing to do: its values are read as class indices; tools that expect 8-bit masks may not read it")
register_code("image.palette", "info", "image is palette-coded (mode P)",
              "nothing to do: it is converted to RGB when loaded")
register_code("category.zero_id", "info", "a category has id 0",
              "legal COCO, and cvtrain maps ids to labels 1..K so it does not clash with background; "
              "tools that use category_id as the label directly would treat it as background")
