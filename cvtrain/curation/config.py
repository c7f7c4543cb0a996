"""The spec's ``checks`` section: which checks run, their thresholds and severities."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from cvtrain.config import StrictModel
from cvtrain.errors import ConfigError

Override = Literal["error", "warning", "info", "off"]


class ChecksConfig(StrictModel):
    """Thresholds and policies of ``cvtrain check`` and of the checks before ``fit``.

    The defaults raise no error on clean real datasets; see ``docs/curation.md``
    for what each check code means and which key tunes it.
    """

    # what is read
    check_files: bool = True  # look at image and mask files on disk (off for annotation-only sets)
    decode_images: bool = True  # fully decode every image to find truncated files; off: header only
    workers: int | None = Field(None, ge=1)  # processes that decode images; default: all cores
    use_cache: bool = True  # reuse decode results of unchanged files (size + mtime + first 64 KiB)
    cache_file: Path | None = None  # default: ~/.cache/cvtrain/decode-cache.json
    # what happens on errors before training
    on_error: Literal["stop", "drop"] = "stop"  # drop: train without the offending annotations/images
    severity_overrides: dict[str, Override] = Field(default_factory=dict)  # code -> severity, "off" silences
    # audit.json of `cvtrain audit`: fit trains without the annotations it flags (relative paths: working directory)
    audit: Path | None = None
    audit_threshold: float = Field(0.5, gt=0.0, le=1.0)  # records scoring at least this are dropped
    # thresholds
    box_tolerance: float = Field(1.0, ge=0.0)  # pixels a box may reach past the image edge
    min_class_examples: int = Field(10, ge=0)  # fewer annotations of a class: class.rare
    max_imbalance: float = Field(10.0, ge=1.0)  # most / least frequent class in a split: class.imbalance
    conflict_iou: float = Field(0.95, gt=0.0, le=1.0)  # two classes on boxes this similar: box.class_conflict
    outlier_mads: float = Field(6.0, gt=0.0)  # robust z (median/MAD of log size or aspect) for outliers
    outlier_min_examples: int = Field(20, ge=3)  # classes with fewer boxes are not screened for outliers
    min_box_pixels: float = Field(4.0, ge=0.0)  # shorter box side at train.image_size: box.tiny_at_input_size
    area_ratio: float = Field(1.5, gt=1.0)  # 'area' more than this factor off the box/mask area
    segmentation_box_iou: float = Field(0.8, gt=0.0, le=1.0)  # box vs mask extent IoU below this
    near_duplicate_bits: int = Field(4, ge=0, le=31)  # dHash bits that may differ for split.leakage
    min_image_side: int = Field(32, ge=1)  # shorter image side below this: image.extreme_size
    max_image_side: int = Field(10000, ge=1)  # longer image side above this: image.extreme_size
    max_image_aspect: float = Field(5.0, ge=1.0)  # long side / short side above this: image.extreme_aspect
    # report size
    max_findings_per_code: int = Field(1000, ge=1)  # warnings/info listed per code (all are counted)
    crops: int = Field(24, ge=0)  # flagged annotations drawn in report.html

    @field_validator("severity_overrides", mode="before")
    @classmethod
    def _off_is_not_false(cls, value):
        # YAML 1.1 reads a bare `off` as False; in this mapping it can only mean "off"
        if isinstance(value, dict):
            return {code: "off" if severity is False else severity for code, severity in value.items()}
        return value

    @field_validator("severity_overrides")
    @classmethod
    def _known_codes(cls, value: dict[str, str]) -> dict[str, str]:
        from cvtrain.curation.codes import CODES

        for code in value:
            if code not in CODES:
                close = difflib.get_close_matches(code, list(CODES), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known codes: {', '.join(sorted(CODES))}"
                raise ValueError(f"unknown check code {code!r}{hint}")
        return value


def explain_validation(error: ValidationError, section: str, *, where: str | None = None,
                       hint: str | None = None) -> ConfigError:
    """The first problem of a pydantic error as one line: ``'checks.box_tolerance': ...``."""
    first = error.errors()[0]
    key = ".".join([section, *(str(part) for part in first["loc"])])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return ConfigError(f"'{key}': {message}", where=where, hint=hint)
