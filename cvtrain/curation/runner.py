"""Running every check over one index: ``run_checks`` and ``check_dataset``."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.config.schema import ChecksConfig
from cvtrain.curation.boxes import check_box_warnings
from cvtrain.curation.classes import category_labels, class_statistics, split_labels
from cvtrain.curation.columns import AnnotationColumns, ImageColumns
from cvtrain.curation.files import check_files, check_image_shapes
from cvtrain.curation.findings import Collector
from cvtrain.curation.report import Report
from cvtrain.curation.structure import check_boxes, check_ids, check_segmentations
from cvtrain.data.index import DatasetIndex
from cvtrain.errors import ConfigError, DataError

PLOT_SAMPLE = 50_000  # boxes per split kept for the report's histograms
_WHERE = re.compile(r"^(?P<file>.*?):(?P<line>\d+)(?::(?P<column>\d+))?$")


def run_checks(index: DatasetIndex | None, config: ChecksConfig | None = None, *, image_size: int | None = None,
               progress: bool = True, parse_error: DataError | None = None) -> Report:
    """Check a dataset index and return the report. Nothing on disk is changed.

    Args:
        index: the dataset, as any reader returns it; None when it could not be read.
        config: thresholds, severities and what to read (``ChecksConfig()`` when None).
        image_size: the longest side fed to the model (``train.image_size``); enables
            ``box.tiny_at_input_size``.
        progress: show a progress bar while image files are decoded.
        parse_error: the error that stopped reading, reported as a finding with its location.

    Returns:
        A ``Report``; ``report.exit_code`` is 0 without errors, 1 with errors, 2 when
        the dataset could not be read at all.
    """
    config = config or ChecksConfig()
    if index is None:
        out = Collector(config)
        if parse_error is not None:
            add_read_error(out, parse_error)
        return _report(out, config, image_size, usable=False)
    images = ImageColumns.of(index)
    annotations = AnnotationColumns.of(index, images)
    out = Collector(config, index, images, annotations)
    if parse_error is not None:
        add_read_error(out, parse_error)
    width, height = images.width.copy(), images.height.copy()
    mask_values: dict[int, dict[int, int]] = {}
    if config.check_files:
        facts = check_files(out, progress=progress)
        read = ~np.isnan(facts.width)
        width[read], height[read] = facts.width[read], facts.height[read]
        mask_values = facts.mask_values
    # Sizes and coordinates come from the user's file: a zero, negative, infinite or NaN one makes NaNs and
    # infinities that the checks report (or skip); numpy's warnings about them would only print noise.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        check_ids(out)
        usable = check_boxes(out, width, height)
        geometry = check_segmentations(out, width, height)
        labels = category_labels(out)
        statistics = class_statistics(out, usable, mask_values)
        check_box_warnings(out, usable, labels, width, height, geometry, image_size)
        check_image_shapes(out, width, height)
        report = _report(out, config, image_size, usable=True)
        report.statistics = statistics
        report.statistics["totals"] = {"images": len(index.images), "annotations": len(index.annotations),
                                       "classes": index.num_classes}
        report.plots = _box_samples(out, usable & (labels >= 0))
        report.statistics["boxes"] = {split: _quantiles(sample) for split, sample in report.plots["box_size"].items()}
    # no index.fingerprint() here: it costs seconds at COCO scale, and fit records it in the run directory
    report.dataset = {"root": str(index.root), "format": index.format, "task": index.task,
                      "sources": list(index.sources)}
    return report


def add_read_error(out: Collector, error: DataError) -> None:
    """A reader's ``DataError`` as a finding: ``file.unparseable`` when it has a line, else ``dataset.unreadable``."""
    where = error.where or ""
    match = _WHERE.match(where)
    if match:
        column = match.group("column")
        out.add("file.unparseable", error.message, hint=error.hint, file=match.group("file"),
                line=int(match.group("line")), column=int(column) if column else None)
    else:
        code = (
            "file.unparseable" if error.message.startswith(("invalid", "not UTF-8", "JSON")) else "dataset.unreadable"
        )
        out.add(code, error.message, hint=error.hint, file=where or None)


def _report(out: Collector, config: ChecksConfig, image_size: int | None, *, usable: bool) -> Report:
    return Report(findings=out.sorted_findings(), counts=dict(out.counts),
                  severities={code: out.severity(code) for code in out.counts},
                  config=config.model_dump(mode="json"), image_size=image_size, usable=usable)


def _box_samples(out: Collector, rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    names, image_split = split_labels(out)
    boxes = out.annotations.bbox
    split = np.where(rows, image_split[np.maximum(out.annotations.image_row, 0)], -1)
    samples: dict[str, dict[str, np.ndarray]] = {"box_size": {}, "aspect": {}}
    rng = np.random.default_rng(0)
    for position, name in enumerate(names):
        members = np.flatnonzero(split == position)
        if len(members) > PLOT_SAMPLE:
            members = np.sort(rng.choice(members, PLOT_SAMPLE, replace=False))
        samples["box_size"][name] = np.sqrt(boxes[members, 2] * boxes[members, 3])
        samples["aspect"][name] = boxes[members, 2] / boxes[members, 3]
    return samples


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"sqrt_area_min": float(q[0]), "sqrt_area_p05": float(q[1]), "sqrt_area_median": float(q[2]),
            "sqrt_area_p95": float(q[3]), "sqrt_area_max": float(q[4])}


def check_dataset(data: Any, checks_config: ChecksConfig | None = None, image_size: int | None = None, *,
                  progress: bool = True) -> Report:
    """Read a dataset and check it: the form of ``cvtrain check`` that needs only a dataset.

    Args:
        data: a ``DataConfig``, a ``Config`` (its ``data`` section, ``checks`` and
            ``train.image_size`` are used), or the path of a dataset YAML (the ``data``
            section on its own) or of a whole spec.
        checks_config: overrides the spec's ``checks`` section.
        image_size: overrides the spec's ``train.image_size``.
        progress: show a progress bar while decoding.

    Returns:
        The ``Report``. A dataset that cannot be read gives a report whose only
        finding says where (file, line, column), with ``exit_code`` 2.

    Raises:
        ConfigError: the dataset description itself is invalid.
    """
    from cvtrain.config import Config, DataConfig, load_data_description
    from cvtrain.data.loading import build_index

    if isinstance(data, (str, os.PathLike)):
        data = load_data_description(Path(data))
    if isinstance(data, Config):
        checks_config = checks_config or getattr(data, "checks", None)
        image_size = image_size if image_size is not None else data.train.image_size
        data = data.data
    if not isinstance(data, DataConfig):
        raise ConfigError(f"cannot check a {type(data).__name__}", hint="pass a DataConfig, a Config or a YAML path")
    try:
        index = build_index(data)
    except DataError as error:
        report = run_checks(None, checks_config, image_size=image_size, parse_error=error)
        report.dataset = {"root": str(data.root), "format": data.format}
        return report
    if data.ignore_index is not None and index.ignore_index is None:
        index.ignore_index = data.ignore_index
    return run_checks(index, checks_config, image_size=image_size, progress=progress)
