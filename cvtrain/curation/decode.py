"""Looking at image and mask files: decoding in a process pool, with a cache.

Each file is opened by ``inspect_file`` in a worker process. With decoding on,
the pixels are really decoded (``Image.load()``), which is what finds
truncated JPEGs; the worker also returns a content hash and a 64-bit
difference hash (dHash) for duplicate and leakage checks, and for masks the
count of every pixel value. Results are cached per file under a key made of
the file size, its mtime and a hash of its first 64 KiB, so an unchanged
dataset is not decoded twice.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvtrain.atomic import write_text
from cvtrain.data.files import HIGH_BIT_MODES, open_image, value_counts
from cvtrain.data.workers import ignore_stop_signals, signals_held, worker_context
from cvtrain.errors import DataError

CACHE_VERSION = 2  # 2: images carry their EXIF orientation
HEADER_BYTES = 64 * 1024
DEFAULT_CACHE = Path("~/.cache/cvtrain/decode-cache.json")


def file_key(path: str) -> str:
    """``size:mtime_ns:sha1(first 64 KiB)``; changes whenever the file plausibly changed."""
    stat = os.stat(path)
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    return f"{stat.st_size}:{stat.st_mtime_ns}:{hashlib.sha1(head).hexdigest()}"


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9x8 grey thumbnail brighter than its right neighbour."""
    if image.mode in HIGH_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1.0)
        image = Image.fromarray((255 * (array - array.min()) / span).astype(np.uint8))
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def inspect_file(task: tuple[str, str, bool, dict | None]) -> dict[str, Any]:
    """Open one file in a worker: ``(path, kind, decode, cached_entry)`` -> result dict.

    ``kind`` is ``"image"`` or ``"mask"``. The result has ``missing`` or
    ``error``, else ``width``, ``height``, ``mode`` and, when decoded,
    ``sha1`` and ``dhash`` (images) or ``values`` (masks: value -> pixel count).
    """
    path, kind, decode, cached = task
    try:
        key = file_key(path) if decode else None
    except FileNotFoundError:
        return {"missing": True}
    except OSError as error:
        return {"error": f"cannot read: {error.strerror or error}"}
    if cached is not None and key is not None and cached.get("key") == key:
        return dict(cached["result"], cached=True)
    try:
        # The same opener as training (data.files), so what is refused here is what training cannot read.
        if not decode:
            with open_image(path, kind) as image:
                return {"width": image.width, "height": image.height, "mode": image.mode}
        data = Path(path).read_bytes()
        with open_image(io.BytesIO(data), kind, name=path) as image:
            image.load()
            result: dict[str, Any] = {"width": image.width, "height": image.height, "mode": image.mode}
            if kind == "image":
                orientation = image.getexif().get(0x0112) if image.format in ("JPEG", "TIFF", "WEBP", "PNG") else None
                if isinstance(orientation, int) and orientation != 1:
                    result["orientation"] = orientation
                result["sha1"] = hashlib.sha1(data).hexdigest()
                result["dhash"] = dhash(image)
            else:
                result.update(_mask_values(image))
    except FileNotFoundError:
        return {"missing": True}
    except DataError as error:  # a decompression bomb
        result = {"error": error.message}
    except Exception as error:  # noqa: BLE001 - PIL raises many types for a bad file; all mean "cannot decode"
        # PIL names the in-memory buffer (<_io.BytesIO object at 0x...>); the finding names the file already
        text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        result = {"error": f"{type(error).__name__}: {text}"}
    result["key"] = key
    return result


def _mask_values(image: Image.Image) -> dict[str, Any]:
    array = np.asarray(image)
    if array.ndim != 2:
        return {"channels": int(array.shape[2])}
    if array.dtype.kind not in "ui":
        return {"channels": 1}
    values, counts = value_counts(array)  # no bincount over 2**31 counters for a 32-bit mask
    return {"values": {str(int(v)): int(c) for v, c in zip(values, counts)}}


class DecodeCache:
    """Decode results by absolute path, stored as one JSON file."""

    def __init__(self, path: Path | None, enabled: bool = True):
        self.path = (path or DEFAULT_CACHE).expanduser()
        self.enabled = enabled
        self.entries: dict[str, dict] = {}
        self.changed = False
        if enabled and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == CACHE_VERSION:
                    self.entries = data.get("entries", {})
            except (OSError, ValueError, AttributeError):
                self.entries = {}  # a broken cache is only a slower run

    def get(self, path: str, kind: str) -> dict | None:
        """The cached entry of ``path`` (None when absent or the cache is off)."""
        entry = self.entries.get(path) if self.enabled else None
        return entry if entry is not None and entry.get("kind") == kind else None

    def put(self, path: str, kind: str, result: dict) -> None:
        """Remember ``result`` for ``path`` under ``key``."""
        if self.enabled and result.get("key") and not result.get("cached"):
            stored = {k: v for k, v in result.items() if k not in ("key", "cached")}
            self.entries[path] = {"kind": kind, "key": result["key"], "result": stored}
            self.changed = True

    def save(self) -> None:
        """Write the cache atomically if anything changed."""
        if not (self.enabled and self.changed):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries}))
        except OSError:
            pass  # a read-only home directory must not fail the check


def inspect_files(tasks: list[tuple[str, str]], *, decode: bool, cache: DecodeCache, workers: int | None,
                  progress: bool) -> list[dict[str, Any]]:
    """Run ``inspect_file`` over ``(path, kind)`` pairs in parallel, in order, with a progress bar."""
    from tqdm import tqdm

    jobs = [(path, kind, decode, cache.get(path, kind) if decode else None) for path, kind in tasks]
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(jobs), desc="checking files" if not decode else "decoding images", unit="file",
               disable=not progress, leave=False)
    if workers == 1 or len(jobs) < 32:
        with tqdm(map(inspect_file, jobs), **bar) as shown:  # closed (and cleared) on an error or a Ctrl-C too
            results = list(shown)
    else:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        # The pool's processes ignore Ctrl-C and SIGTERM (they reach the whole process group): the main process stops.
        context = worker_context()
        with ProcessPoolExecutor(max_workers=workers, initializer=ignore_stop_signals, mp_context=context) as pool:
            with signals_held():  # processes start inside map(); none gets a signal before it ignores it
                mapped = pool.map(inspect_file, jobs, chunksize=chunk)
            with tqdm(mapped, **bar) as shown:
                results = list(shown)
    for (path, kind), result in zip(tasks, results):
        cache.put(path, kind, result)
    cache.save()
    return results

