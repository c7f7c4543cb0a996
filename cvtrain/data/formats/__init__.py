"""One reader per annotation format, each returning a ``DatasetIndex``.

Readers are registered by name; ``data.format`` in a spec picks one. Adding a
format means one new module here, imported below, and nothing else.
"""
from __future__ import annotations

from collections.abc import Callable

READERS: dict[str, Callable] = {}


def register_reader(name: str):
    """Register ``function`` as the reader of format ``name`` (refuses duplicates)."""

    def decorate(function: Callable) -> Callable:
        """Register the decorated reader and return it unchanged."""
        if name in READERS:
            raise ValueError(f"a reader for format {name!r} is already registered")
        READERS[name] = function
        return function

    return decorate


from cvtrain.data.formats import cityscapes, coco, kitti, masks, shapes, voc, yolo  # noqa: E402,F401  (fill the registry)
