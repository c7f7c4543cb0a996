"""What the text-file formats (YOLO, KITTI) share: image sizes from headers, class-name files, YAML with lines."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from cvtrain.errors import DataError
from cvtrain.yamltext import safe_load

PROGRESS_FROM = 2000  # files: a progress bar from this many on
NAME_FILES = ("obj.names", "classes.txt", "classes.names", "labels.txt")


def image_sizes(paths: Sequence[Path], *, what: str = "reading image sizes") -> list[tuple[int | None, int | None]]:
    """``(width, height)`` of each image from its header (no pixels decoded); ``(None, None)`` when unreadable.

    An unreadable or missing image is not an error here: ``cvtrain check`` reports it with the others.
    """

    def size(path: Path) -> tuple[int | None, int | None]:
        try:
            with Image.open(path) as image:
                return image.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None, None

    if len(paths) < PROGRESS_FROM:
        return [size(path) for path in paths]
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=4) as pool:  # file opening overlaps; header parsing holds the GIL
        return list(tqdm(pool.map(size, paths), total=len(paths), desc=what, unit="image"))


def read_lines(path: Path) -> list[str]:
    """The lines of a text annotation file (UTF-8, a BOM ignored), as one ``DataError`` when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text (byte {error.start})", where=str(path),
                        hint="re-save the file as UTF-8") from None
    except OSError as error:
        raise DataError(f"cannot read: {error.strerror or error}", where=str(path)) from None


def read_names(path: Path) -> list[str]:
    """Class names, one per line (``obj.names``, ``classes.txt``); blank lines and ``#`` comments skipped."""
    return [line.strip() for line in read_lines(path) if line.strip() and not line.lstrip().startswith("#")]


def find_names_file(folder: Path) -> Path | None:
    """The first of ``obj.names``, ``classes.txt``, ... in ``folder``."""
    for name in NAME_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML mapping and the 1-based line of each top-level key (for errors that name the line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        tree = safe_load(text)  # a value that cannot be converted (2024-13-45) is a YAMLError too
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", where=str(path), hint="re-save the file as UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DataError(f"invalid YAML: {getattr(error, 'problem', None) or error}", where=where,
                        hint="fix the syntax at that position") from None
    if not isinstance(tree, dict):
        raise DataError("expected a mapping (path, train, val, names)", where=str(path),
                        hint="see https://docs.ultralytics.com/datasets/detect/ for data.yaml")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return tree, lines


def number(token: str, where: str, field: str) -> float:
    """``float(token)``, or a ``DataError`` naming the file, line and field."""
    try:
        return float(token)
    except ValueError:
        raise DataError(f"{field} is {token!r}, expected a number", where=where,
                        hint="fix or remove the line") from None
