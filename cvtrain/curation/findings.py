"""Findings and the collector that checks write them into.

Checks hand the collector arrays of annotation or image rows; the collector
counts every row, applies severity overrides, and builds ``Finding`` objects
for all errors but only the first ``max_findings_per_code`` warnings or infos
of a code, so a dataset with 100,000 tiny boxes still gives a readable report.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvtrain.config.schema import ChecksConfig
from cvtrain.curation.codes import CODES
from cvtrain.curation.columns import NO_IMAGE, AnnotationColumns, ImageColumns
from cvtrain.data.index import DatasetIndex

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a check found, with where it is and how to fix it."""

    severity: str
    code: str
    message: str
    hint: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    image: str | None = None  # image file name, relative to the dataset root
    image_id: int | None = None
    annotation_id: int | None = None
    split: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    # rows in the index, for ``on_error: drop``; not part of the JSON schema
    image_row: int | None = None
    annotation_row: int | None = None

    def location(self) -> str:
        """``file:line:col``, or the image and annotation the finding is about."""
        parts = []
        if self.file:
            parts.append(self.file + (f":{self.line}" if self.line is not None else "")
                         + (f":{self.column}" if self.line is not None and self.column is not None else ""))
        if self.image:
            parts.append(f"image {self.image}" + (f" (id {self.image_id})" if self.image_id is not None else ""))
        elif self.image_id is not None:
            parts.append(f"image id {self.image_id}")
        if self.annotation_id is not None:
            parts.append(f"annotation {self.annotation_id}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON data."""
        location = {"file": self.file, "line": self.line, "column": self.column, "image": self.image,
                    "image_id": self.image_id, "annotation_id": self.annotation_id, "split": self.split}
        return {"severity": self.severity, "code": self.code, "message": self.message, "hint": self.hint,
                "location": location, "bbox": list(self.bbox) if self.bbox is not None else None}


# one text for all rows, one text per row, or a function of the listed rows
Messages = str | Sequence[str] | Callable[[np.ndarray], Iterable[str]]


class Collector:
    """Gathers findings from the checks of one run."""

    def __init__(self, config: ChecksConfig, index: DatasetIndex | None = None,
                 images: ImageColumns | None = None, annotations: AnnotationColumns | None = None):
        self.config = config
        self.index = index
        self.images = images
        self.annotations = annotations
        self.findings: list[Finding] = []
        self.counts: Counter[str] = Counter()  # every occurrence
        self.listed: Counter[str] = Counter()  # occurrences with a Finding object

    def severity(self, code: str) -> str:
        """The severity of ``code`` after overrides; ``"off"`` when silenced."""
        return self.config.severity_overrides.get(code, CODES[code].severity)

    def enabled(self, code: str) -> bool:
        """False when ``checks.severity_overrides`` turns ``code`` off."""
        return self.severity(code) != "off"

    def _room(self, code: str, severity: str) -> int:
        if severity == "error":
            return 1 << 62
        return max(self.config.max_findings_per_code - self.listed[code], 0)

    def add(self, code: str, message: str, *, hint: str | None = None, **location: Any) -> None:
        """One finding at an explicit location (file, line, column, image, ...)."""
        severity = self.severity(code)
        if severity == "off":
            return
        if self._room(code, severity):
            self.findings.append(Finding(severity, code, message, hint or CODES[code].hint, **location))
            self.listed[code] += 1
        self.counts[code] += 1

    def add_annotations(self, code: str, rows: np.ndarray, messages: Messages) -> None:
        """Findings about annotation ``rows`` (positions in ``index.annotations``)."""
        self._add_rows(code, rows, messages, self._annotation_location)

    def add_images(self, code: str, rows: np.ndarray, messages: Messages) -> None:
        """Findings about image ``rows`` (positions in ``index.images``)."""
        self._add_rows(code, rows, messages, self._image_location)

    def _add_rows(self, code: str, rows: np.ndarray, messages: Messages, locate: Callable[[int], dict]) -> None:
        severity = self.severity(code)
        rows = np.asarray(rows, dtype=np.int64)
        if severity == "off" or len(rows) == 0:
            return
        shown = rows[: self._room(code, severity)]
        if isinstance(messages, str):
            texts: Sequence[str] = [messages] * len(shown)
        elif callable(messages):
            texts = list(messages(shown))
        else:
            texts = messages
        hint = CODES[code].hint
        for row, text in zip(shown.tolist(), texts):
            self.findings.append(Finding(severity, code, text, hint, **locate(row)))
        self.listed[code] += len(shown)
        self.counts[code] += len(rows)

    def _image_location(self, row: int) -> dict[str, Any]:
        image = self.index.images[row]
        return {"file": image.source.file if image.source else None, "image": image.file_name,
                "image_id": image.id, "split": image.split, "image_row": row}

    def _annotation_location(self, row: int) -> dict[str, Any]:
        annotation = self.index.annotations[row]
        image_row = int(self.annotations.image_row[row])
        location = {"file": None, "annotation_id": annotation.id, "image_id": annotation.image_id,
                    "bbox": tuple(float(v) for v in annotation.bbox), "annotation_row": row}
        if image_row != NO_IMAGE:
            image = self.index.images[image_row]
            location.update(image=image.file_name, split=image.split, image_row=image_row)
        source = annotation.source
        if source is not None:
            location.update(file=source.file, line=source.line, column=source.column)
        return location

    def sorted_findings(self) -> list[Finding]:
        """Every finding kept, errors first, then by code and location."""
        return sorted(self.findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.code))
