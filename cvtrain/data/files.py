"""The one place that opens files a dataset names: the path guard, image and mask decoding, their limits.

Readers, datasets, prediction and the curation checks all come through here,
so what ``cvtrain check`` calls corrupt is exactly what training cannot read.

- ``inside_root``: a name from an annotation or list file, resolved inside the
  dataset root or refused (absolute paths, ``..``, NUL bytes, symlinks leading out).
- ``open_image``: ``PIL.Image.open`` that refuses decompression bombs.
- ``read_image``: RGB uint8, whatever the file's mode (grey, palette, CMYK, 16-bit);
  ``read_image_reduced``: the same, a large JPEG decoded at a reduced scale (training).
- ``read_mask``: class indices of an index, palette or colour mask, checked against the classes.
"""
from __future__ import annotations

import math
import os
import posixpath
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from cvtrain.errors import DataError, name_problem, shown

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit and float greys
MAX_MASK_VALUE = 65535  # masks are 8- or 16-bit PNGs


def ignore_value(num_classes: int, ignore_index: int | None) -> int:
    """The mask value of pixels that are not scored (also what padding is filled with)."""
    if ignore_index is not None:
        return ignore_index
    return 255 if num_classes < 255 else MAX_MASK_VALUE


def mask_dtype(num_classes: int, ignore_index: int | None) -> type:
    """uint8 when every class and the ignore value fit in 8 bits, else uint16."""
    return np.uint8 if max(num_classes - 1, ignore_value(num_classes, ignore_index)) < 256 else np.uint16


def inside_root(root: str | os.PathLike, name: str, what: str = "image") -> Path:
    """``root / name`` resolved, refusing any name that does not stay inside ``root``.

    Args:
        root: the dataset root (itself may be a symlink: it is resolved once).
        name: a relative path from an annotation or list file.
        what: what the file is, for the message (``image``, ``mask``, ``split list``).

    Returns:
        The resolved path (which may not exist).

    Raises:
        DataError: an absolute path, a NUL byte, a lone surrogate, ``..`` leading out, or a symlink pointing
            outside ``root``.

    >>> inside_root("/data/set", "images/a.jpg").as_posix().endswith("images/a.jpg")
    True
    """
    base = Path(root).resolve()
    text = str(name)
    problem = name_problem(text)
    if problem:
        raise DataError(f"{what} path {shown(text)} {problem}", where=str(base),
                        hint="write the file's real name: plain text, without NUL or lone surrogate characters")
    normal = posixpath.normpath(text.replace("\\", "/"))
    if os.path.isabs(text) or normal == ".." or normal.startswith("../"):
        raise DataError(f"{what} path {text!r} escapes the dataset root", where=str(base),
                        hint="paths named in the dataset's files must be relative and stay inside data.root")
    path = (base / text).resolve()
    if not path.is_relative_to(base):
        raise DataError(f"{what} path {text!r} escapes the dataset root", where=str(base),
                        hint="paths named in the dataset's files must be relative and stay inside data.root")
    return path


def named_in_spec(root: str | os.PathLike, name: str | os.PathLike, what: str) -> Path:
    """``root / name`` for a path the dataset description names (annotation file, split list, image or mask
    folder), refused when it leads out of ``root``.

    The check is on the path as written (``..``, an absolute path elsewhere): the root and the files and folders
    the spec names may be symlinks (images on another disk is a common layout), followed as the system does.
    What lies inside those files (image and mask names) goes through ``inside_root``, which also resolves links.

    Args:
        root: the dataset root (``data.root``).
        name: the path the spec gives, relative to ``root`` (absolute only when inside ``root``).
        what: the key, for the message (``data.splits.train.list``).

    Returns:
        The path joined to the root (not resolved; it may not exist).

    Raises:
        DataError: a NUL byte, or a path outside ``root``; the message names the key, never the file's content.

    >>> named_in_spec("/data/set", "lists/train.txt", "data.splits.train.list").as_posix()
    '/data/set/lists/train.txt'
    """
    text = str(name)
    base = Path(os.path.abspath(root))
    if "\x00" in text:
        raise DataError(f"{what} {text!r} contains a NUL byte", where=str(base), hint="fix the path in the spec")
    candidate = Path(os.path.normpath(text if os.path.isabs(text) else base / text))
    if not (candidate.is_relative_to(base) or candidate.is_relative_to(base.resolve())):
        raise DataError(f"{what} {text!r} is outside the dataset root", where=str(base),
                        hint="paths in a dataset description are relative to data.root and stay inside it: move the "
                             "file into the dataset, or set data.root to a folder that holds it")
    return candidate


# Refuse decompression bombs: 16k x 16k is larger than any real training photo.
MAX_IMAGE_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def open_image(path: str | os.PathLike | IO[bytes], what: str = "image", *, name: str | None = None) -> Image.Image:
    """``Image.open`` that refuses decompression bombs with a ``DataError`` naming the file.

    ``path`` may be an open binary file; ``name`` is then what errors name.

    Pillow checks the header's size before decoding; above its limit it only warns (up to twice the
    limit), and that warning would print besides the error, so it is refused like the error.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{what} is too large to decode safely: {str(error).split(', could be')[0]}",
                        where=name or str(path),
                        hint=f"decompression bombs are refused; resize the {what} if it is real") from None


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array; grey, palette, CMYK and 16-bit images are converted."""
    return read_image_reduced(path, None)[0]


def read_image_reduced(path: Path, longest: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """``read_image``, decoding a large JPEG at a reduced scale, and the file's own ``(height, width)``.

    With ``longest`` set, a JPEG at least twice that size on its longest side is decoded at 1/2, 1/4 or 1/8
    scale (PIL's ``draft``: libjpeg scales the DCT blocks while decoding, several times faster than decoding
    every pixel and resizing), the largest reduction whose longest side still reaches ``longest``. Training
    resizes to ``train.image_size`` right after, so nothing it keeps is lost. Coordinates in the file's pixels
    scale by the returned array's shape over the returned size.
    """
    try:
        image = open_image(path)
        with image:
            size = (image.height, image.width)
            if longest and image.format == "JPEG" and max(size) >= 2 * longest:
                scale = longest / max(size)
                image.draft(None, (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))))
            if image.mode in HIGH_BIT_MODES:
                array = np.asarray(image, dtype=np.float32)
                array = (255 * (array - array.min()) / max(float(array.max() - array.min()), 1.0)).astype(np.uint8)
                return np.stack([array] * 3, axis=-1), size
            return np.asarray(image.convert("RGB")), size
    except FileNotFoundError:
        raise DataError(
            "image file not found", where=str(path), hint="run 'cvtrain check' to list every missing file"
        ) from None
    except PermissionError:
        raise DataError(
            "image file is not readable (permission denied)",
            where=str(path),
            hint="fix the file's permissions for the user running cvtrain",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"cannot decode image: {error}", where=str(path), hint="the file is corrupt or truncated; replace it"
        ) from None


def read_mask(path: Path, num_classes: int, ignore_index: int | None = None,
              palette: dict[int, list[int]] | None = None) -> np.ndarray:
    """Class indices ``(H, W)`` of a mask file; unscored pixels hold ``ignore_value(num_classes, ignore_index)``.

    Raises:
        DataError: a missing or undecodable file, a colour mask without a palette,
            or values that are neither classes nor ``ignore_index``.
    """
    try:
        with open_image(path, "mask") as image:
            mode = image.mode
            array = np.asarray(image.convert("RGB") if mode in ("RGBA", "CMYK", "YCbCr") else image)
            if mode in ("LA", "PA"):
                array = array[..., 0]  # the alpha channel is not a label
    except FileNotFoundError:
        raise DataError(
            "mask file not found", where=str(path), hint="run 'cvtrain check' to list every missing mask"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot decode mask: {error}", where=str(path), hint="replace the mask file") from None
    if array.ndim == 3:
        array = _colours_to_classes(array, palette, path) if (palette or np.ptp(array, axis=2).any()) else array[..., 0]
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "ui" or (array.dtype.kind == "i" and array.size and array.min() < 0):
        raise DataError(f"mask of type {array.dtype} (mode {mode}) is not an index mask", where=str(path),
                        hint="save masks as 8- or 16-bit PNG of class indices, palette PNG, or RGB with data.palette")
    fill = ignore_value(num_classes, ignore_index)
    values, counts = value_counts(array)
    unknown = [(v, c) for v, c in zip(values.tolist(), counts.tolist()) if v >= num_classes and v != fill]
    if unknown:
        shown = ", ".join(f"{v} ({c} px)" for v, c in unknown[:5])
        raise DataError(f"mask values {shown} are neither classes 0..{num_classes - 1} nor ignore_index {ignore_index}",
                        where=str(path), hint="set data.ignore_index, or add the classes to data.classes")
    return array.astype(mask_dtype(num_classes, ignore_index), copy=False)


def value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values of an integer mask and their pixel counts, ascending.

    ``np.bincount`` for 8- and 16-bit values; ``np.unique`` past them (a 32-bit mask with a value near 2**31 would
    make bincount allocate 16 GiB of counters) and for negative values (which bincount refuses).
    """
    if not array.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if int(array.max()) > MAX_MASK_VALUE or (array.dtype.kind == "i" and int(array.min()) < 0):
        return np.unique(array, return_counts=True)
    counts = np.bincount(array.ravel())
    values = np.flatnonzero(counts)
    return values, counts[values]


def _colours_to_classes(array: np.ndarray, palette: dict[int, list[int]] | None, path: Path) -> np.ndarray:
    if not palette:
        raise DataError("colour mask but no data.palette", where=str(path),
                        hint="map each colour to a class: palette: {0: [128, 128, 128], 1: [128, 0, 0], ...}")
    rgb = array[..., :3].astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = sorted(((r << 16) | (g << 8) | b, key) for key, (r, g, b) in palette.items())
    keys = np.array([code for code, _ in table])
    positions = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    unknown = keys[positions] != codes
    if unknown.any():
        code = int(codes[unknown][0])
        colour = [code >> 16, (code >> 8) & 255, code & 255]
        raise DataError(
            f"mask colour {colour} ({int((codes == code).sum())} px) is not in data.palette",
            where=str(path),
            hint="add the colour to data.palette (under ignore_index if it marks unlabelled pixels)",
        )
    return np.array([key for _, key in table])[positions]
