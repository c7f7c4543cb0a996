"""``format: masks``: folders of images and segmentation masks (CamVid, Cityscapes, ADE-style).

An image and its mask pair by their path below their folders without the
extension: ``images/a/x.jpg`` goes with ``masks/a/x.png``. Names that differ by a
fixed ending pair through ``options.image_suffix`` / ``options.mask_suffix``
(Cityscapes: ``_leftImg8bit`` and ``_gtFine_labelTrainIds``).

Three kinds of mask are read (``read_mask``):
- single-channel index masks (mode ``L``, 16-bit): the pixel value is the class index;
- palette PNGs (mode ``P``): the palette index is the class; the palette's colours are not used;
- RGB colour masks: each colour is a class through ``data.palette`` ({class index: [r, g, b]});
  a colour may map to ``data.ignore_index``, and an unknown colour is an error.

Class ``i`` is ``data.classes[i]``; pixels equal to ``data.ignore_index`` are not
scored. Category ids are the class indices ``0..K-1``.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from cvtrain.data.files import IMAGE_SUFFIXES, MAX_MASK_VALUE, inside_root
from cvtrain.data.formats import register_reader
from cvtrain.data.index import Category, DatasetIndex, ImageRecord, Location
from cvtrain.errors import DataError


def _files(folder: Path, suffix: str, exclude_suffix: str = "") -> dict[str, Path]:
    """Image files below ``folder`` by pairing key: relative path, no extension, ``suffix`` cut off."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        stem = path.stem
        if exclude_suffix and stem.endswith(exclude_suffix):
            continue  # a mask lying in the image folder
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        found[str(PurePosixPath(path.relative_to(folder).parent.as_posix(), stem))] = path
    return found


def _check_table(
    classes: list[str], ignore_index: int | None, palette: dict[int, list[int]] | None, where: str
) -> None:
    if ignore_index is not None and not (len(classes) <= ignore_index <= MAX_MASK_VALUE):
        raise DataError(f"data.ignore_index {ignore_index} is {'a class index' if ignore_index >= 0 else 'negative'}",
                        where=where, hint=f"use a mask value above the classes 0..{len(classes) - 1}, e.g. 255")
    seen: dict[tuple[int, ...], int] = {}
    for key, colour in (palette or {}).items():
        if key != ignore_index and not 0 <= key < len(classes):
            raise DataError(f"data.palette has class {key}, outside 0..{len(classes) - 1}", where=where,
                            hint="palette keys are class indices (or ignore_index)")
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise DataError(f"data.palette[{key}] is {colour}, expected [r, g, b] in 0..255", where=where)
        if tuple(colour) in seen:
            raise DataError(
                f"data.palette gives colour {colour} to classes {seen[tuple(colour)]} and {key}",
                where=where,
                hint="each colour must mean one class",
            )
        seen[tuple(colour)] = key


@register_reader("masks")
def read_masks(annotation_file: Path | None, *, root: Path, images: str = "images", masks: str | None = "masks",
               classes: list[str] | None = None, ignore_index: int | None = None,
               palette: dict[int, list[int]] | None = None, image_suffix: str = "", mask_suffix: str = "",
               **_: Any) -> DatasetIndex:
    """Pair the images below ``root/images`` with the masks below ``root/masks``.

    Args:
        annotation_file: unused (masks are the annotations).
        root: dataset root; paths in the index are relative to it.
        images: image folder relative to ``root``.
        masks: mask folder relative to ``root`` (may be the image folder when ``mask_suffix`` is set).
        classes: class names in mask-value order (``data.classes``).
        ignore_index: mask value that is not scored (``data.ignore_index``).
        palette: class index -> RGB, for colour masks (``data.palette``).
        image_suffix, mask_suffix: endings cut off file stems before pairing (``data.options``).

    An image without a mask keeps the mask name it should have, so that
    ``cvtrain check`` reports it as missing; no mask at all is an error here.
    """
    where = str(root / (masks or ""))
    if not classes:
        raise DataError("format 'masks' needs data.classes", where=where,
                        hint="list the class names in mask-value order, e.g. classes: [sky, road, car]")
    _check_table(classes, ignore_index, palette, where)
    image_dir, mask_dir = root / (images or ""), root / (masks or "masks")
    for kind, name, folder in (("image", images or "", image_dir), ("mask", masks or "masks", mask_dir)):
        if not folder.is_dir():
            raise DataError(f"{kind} folder not found", where=str(folder),
                            hint=f"check data.{kind}s (relative to data.root)")
        inside_root(root, name, f"{kind} folder")
    if image_dir.resolve() == mask_dir.resolve() and not mask_suffix:
        raise DataError("images and masks share one folder but options.mask_suffix is not set", where=str(image_dir),
                        hint="set data.options.mask_suffix to the ending of mask names, e.g. _mask")
    same_folder = image_dir.resolve() == mask_dir.resolve()
    image_files = _files(image_dir, image_suffix, mask_suffix if same_folder else "")
    mask_files = _files(mask_dir, mask_suffix)
    if not image_files:
        raise DataError("no images found", where=str(image_dir), hint=f"supported: {', '.join(IMAGE_SUFFIXES)}")
    if not set(image_files) & set(mask_files):
        example = next(iter(image_files))
        raise DataError(
            f"no image has a mask (e.g. no mask named {example}{mask_suffix}.png)",
            where=str(mask_dir),
            hint="masks pair with images by name; set data.options.image_suffix/mask_suffix if the names differ",
        )
    source = Location(str(mask_dir))
    records = []
    for image_id, (key, path) in enumerate(sorted(image_files.items()), start=1):
        mask = mask_files.get(key, mask_dir / f"{key}{mask_suffix}.png")
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            width = height = None  # unreadable: the checks report it, training refuses it
        records.append(ImageRecord(id=image_id, file_name=path.relative_to(root).as_posix(), width=width, height=height,
                                   mask_file=mask.relative_to(root).as_posix(), source=source))
    return DatasetIndex(
        root=root,
        categories=[Category(position, name) for position, name in enumerate(classes)],
        images=records,
        task="semantic_segmentation",
        ignore_index=ignore_index,
        sources=[str(mask_dir)],
        format="masks",
    )
