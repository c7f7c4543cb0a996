"""Writers: a ``DatasetIndex`` out to COCO, VOC, YOLO or KITTI files (``cvtrain convert``).

Each writer puts the annotation files (and, unless told not to, the images) in a new folder, writes a
``dataset.yaml`` there that ``cvtrain check --data`` and specs can use as it is, and returns a
``WriteResult`` whose ``lost`` lines say what the target format could not carry (with counts). Every file is
written atomically (a temporary file in the same folder, then a rename); nothing that exists is replaced.
"""
from __future__ import annotations

import os
import posixpath
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cvtrain.data.index import DatasetIndex, ImageRecord
from cvtrain.errors import CvtrainError, DataError

WRITERS: dict[str, Callable[..., WriteResult]] = {}
IMAGE_MODES = ("copy", "link", "symlink", "none")
PROGRESS_FROM = 2000  # images: a progress bar from this many on


def register_writer(name: str):
    """Register ``function`` as the writer of format ``name``."""

    def decorate(function: Callable) -> Callable:
        if name in WRITERS:
            raise ValueError(f"a writer for format {name!r} is already registered")
        WRITERS[name] = function
        return function

    return decorate


@dataclass
class WriteResult:
    """What a writer wrote and what it could not carry over."""

    out: Path
    format: str
    dataset_file: Path  # the cvtrain dataset description of the output
    images: int = 0  # image records written
    annotations: int = 0  # annotations written (objects, lines, records)
    lost: list[str] = field(default_factory=list)  # one line per kind of loss, with its count

    def _repr_html_(self) -> str:
        import html

        lost = "".join(f"<li>{html.escape(line)}</li>" for line in self.lost) or "<li>nothing</li>"
        return (f"<b>cvtrain convert to {html.escape(self.format)}</b>: {self.images} images, {self.annotations} "
                f"annotations in {html.escape(str(self.out))}<br>not carried over:<ul>{lost}</ul>")


class Losses:
    """Counts what is dropped or changed while writing, worded once per kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, what: str, count: int = 1) -> None:
        if count:
            self.counts[what] += count

    def lines(self) -> list[str]:
        return [f"{what}: {count}" for what, count in self.counts.items()]


# ------------------------------------------------------------------ files
def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically; refuses to replace a file that exists."""
    if path.exists():
        raise CvtrainError("refusing to overwrite", where=str(path), hint="write into a new or empty --out folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically; refuses to replace a file that exists."""
    if path.exists():
        raise CvtrainError("refusing to overwrite", where=str(path), hint="write into a new or empty --out folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_dataset_file(out: Path, description: dict[str, Any]) -> Path:
    """``out/dataset.yaml``: the ``data`` section that reads the output (root ``.`` is the folder itself)."""
    path = out / "dataset.yaml"
    header = "# written by cvtrain convert; use with: cvtrain check --data dataset.yaml\n"
    write_text(path, header + yaml.safe_dump({"root": ".", **description}, sort_keys=False, allow_unicode=True))
    return path


def place_image(index: DatasetIndex, image: ImageRecord, target: Path, mode: str) -> None:
    """Put the image file at ``target``: ``copy``, ``link`` (hard link, else copy), ``symlink`` or ``none``."""
    if mode == "none":
        return
    source = index.image_path(image)
    if not source.is_file():
        raise DataError("image file not found", where=str(source),
                        hint="run 'cvtrain check' first, or convert with --images none")
    if target.exists():
        raise CvtrainError("refusing to overwrite", where=str(target), hint="write into a new or empty --out folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        target.symlink_to(source.resolve())
        return
    if mode == "link":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def check_output(out: Path) -> None:
    """``out`` must be new or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CvtrainError("output folder is not empty", where=str(out),
                           hint="give a new --out folder; convert never writes over existing files")


# ------------------------------------------------------------------ names
def relative_names(images: list[ImageRecord]) -> dict[int, str]:
    """Image id -> its path below the deepest folder all images share (``JPEGImages/a.jpg`` -> ``a.jpg``)."""
    paths = [PurePosixPath(posixpath.normpath(image.file_name)) for image in images]
    common = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    names = {}
    for image, path in zip(images, paths):
        text = str(path)
        names[image.id] = text[len(common) + 1:] if common not in ("", ".") else text
    return names


def flat_names(images: list[ImageRecord]) -> dict[int, str]:
    """Image id -> a file name without folders, unique among the images (for formats that pair by stem)."""
    relative = relative_names(images)
    base = {image_id: PurePosixPath(name).name for image_id, name in relative.items()}
    stems = Counter(PurePosixPath(name).stem for name in base.values())
    names, used = {}, set()
    for image_id, name in base.items():
        if stems[PurePosixPath(name).stem] > 1:
            name = relative[image_id].replace("/", "__")
        if PurePosixPath(name).stem in used:
            name = f"{PurePosixPath(name).stem}__{image_id}{PurePosixPath(name).suffix}"
        used.add(PurePosixPath(name).stem)
        names[image_id] = name
    return names


def split_of(image: ImageRecord) -> str:
    """The split folder an image is written into (``train`` when the index names none)."""
    return image.split or "train"


def image_size(index: DatasetIndex, image: ImageRecord) -> tuple[int | None, int | None]:
    """The image's width and height, from the index or else from the file's header."""
    if image.width and image.height:
        return image.width, image.height
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(index.image_path(image)) as opened:
            return opened.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None, None


def progress(images: list[ImageRecord], what: str):
    """``images`` with a progress bar (rate and ETA) when there are many."""
    from tqdm import tqdm

    return tqdm(images, desc=what, unit="image", disable=len(images) < PROGRESS_FROM)


def number_text(value: float) -> str:
    """The shortest text that reads back as ``value`` (``3`` for 3.0, ``12.25``, ``0.1``)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


from cvtrain.data.writers import coco, kitti, voc, yolo  # noqa: E402,F401  (fill the registry)
