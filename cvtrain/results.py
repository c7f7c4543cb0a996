"""What the API's verbs return: plain dataclasses that print as tables in a notebook, as the CLI prints them."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

# The summary scalars in the order the CLI prints them.
METRIC_ORDER = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "segm_AP", "mIoU", "baseline_mIoU",
                "pixel_accuracy", "baseline_mAP")


def metric_text(value: Any) -> str:
    """A metric as the CLI prints it: 4 decimals, and ``n/a`` for pycocotools' -1 (no ground truth in that range).

    >>> metric_text(0.53251), metric_text(-1.0), metric_text(None)
    ('0.5325', 'n/a', 'n/a')
    """
    if value is None or (isinstance(value, (int, float)) and value < 0):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The summary scalars of ``metrics`` in print order (epoch, step and per-class tables left out).

    >>> summary_metrics({"epoch": 3, "step": 80, "AP50": 0.7, "mAP": 0.4, "per_class": {}})
    {'mAP': 0.4, 'AP50': 0.7}
    """
    return {key: metrics[key] for key in METRIC_ORDER if key in metrics}


def per_class_lines(per_class: Mapping[str, Any]) -> list[str]:
    """One line per kind of score (``bbox``, ``segm``, ``IoU``): each class's value; ``absent`` where None (a class in
    neither the ground truth nor the predictions), ``n/a`` for pycocotools' -1 (no ground truth of that class).

    >>> per_class_lines({"bbox": {"square": 0.4031, "disc": -1.0}, "IoU": {"road": 0.9, "sky": None}})
    ['per-class bbox: square 0.403, disc n/a', 'per-class IoU: road 0.900, sky absent']
    """
    lines = []
    for kind, classes in per_class.items():
        if isinstance(classes, dict) and classes:
            lines.append(f"per-class {kind}: " + ", ".join(
                f"{name} {_class_score(value, 3)}" for name, value in classes.items()))
    return lines


def _class_score(value: Any, decimals: int) -> str:
    if value is None:
        return "absent"
    return "n/a" if value < 0 else f"{value:.{decimals}f}"


_SCORE_NAMES = {"bbox": "AP (bbox)", "segm": "AP (segm)", "IoU": "IoU"}


def _html(title: str, facts: Mapping[str, Any], metrics: Mapping[str, Any],
          per_class: Mapping[str, Any] | None = None) -> str:
    """A notebook table: ``facts`` as written (None as ``-``), then the metric rows as the CLI prints them (``n/a``
    for -1), then a per-class table with one column per kind of score."""
    def row(key: str, text: str, kind: str) -> str:
        return f"<tr class='{kind}'><th style='text-align:left'>{escape(key)}</th><td>{escape(text)}</td></tr>"

    body = "".join(row(str(key), "-" if value is None else str(value), "fact") for key, value in facts.items())
    body += "".join(row(str(key), metric_text(value) if isinstance(value, (int, float)) else str(value), "metric")
                    for key, value in metrics.items())
    kinds = [kind for kind, classes in (per_class or {}).items() if isinstance(classes, dict) and classes]
    table = ""
    if kinds:
        names = list(dict.fromkeys(name for kind in kinds for name in per_class[kind]))
        head = "".join(f"<th>{escape(_SCORE_NAMES.get(kind, kind))}</th>" for kind in kinds)
        rows = "".join(f"<tr><th style='text-align:left'>{escape(str(name))}</th>" + "".join(
            f"<td>{escape(_class_score(per_class[kind].get(name), 4) if name in per_class[kind] else '-')}</td>"
            for kind in kinds) + "</tr>" for name in names)
        table = f"<table class='per-class'><tr><th style='text-align:left'>class</th>{head}</tr>{rows}</table>"
    return f"<b>{escape(title)}</b><table>{body}</table>{table}"


@dataclass
class FitResult:
    """What ``fit`` produced.

    Attributes:
        run_dir: the run directory (None after a fast dev run without ``run_dir``: nothing was kept).
        best_checkpoint: ``checkpoints/best.ckpt`` (None when no validation ran, or nothing was kept).
        last_checkpoint: ``checkpoints/last.ckpt`` (None when nothing was kept).
        metrics: the best validation's scalars (``mAP``, ``AP50``, … or ``mIoU``, …, with ``epoch`` and ``step``).
        per_class: per-class AP (``bbox``/``segm``) or IoU of the best validation.
        seconds: wall time of the whole call.
    """

    run_dir: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def _repr_html_(self) -> str:
        kept = self.run_dir is not None
        facts = {"run_dir": self.run_dir if kept else "not kept (fast dev run)",
                 "best_checkpoint": self.best_checkpoint if kept else "not kept (fast dev run)",
                 "seconds": round(self.seconds, 1)}
        if "epoch" in self.metrics:  # the epoch of the best validation, labelled as such, not among the scores
            facts["best epoch"] = self.metrics["epoch"]
        return _html("cvtrain fit", facts, summary_metrics(self.metrics), self.per_class)


@dataclass
class EvaluateResult:
    """What ``evaluate`` scored.

    Attributes:
        metrics: the summary scalars (COCO stats or mIoU and its baseline).
        per_class: per-class AP or IoU.
        out_dir: where ``metrics.json`` was written.
        num_images: images scored.
        runtime: ``PyTorch``, or ``onnxruntime`` for an exported model.
        images_per_second: end to end: loading, the model, scoring.
        intervals: ``"<metric>_ci95": [low, high]``, bootstrap over images.
        baseline: the no-model detection baseline (prior boxes), beside mAP.
        slices: per-slice scores and the worst slice (``SliceReport``).
        robustness: scores under corruptions (``RobustnessResult``), with ``--corruptions``.
        comparison: the paired difference of two checkpoints, with ``--compare``.
        analysis: per-resample statistics, for comparisons.
        config: the config that was scored.
    """

    metrics: dict[str, Any]
    per_class: dict[str, Any]
    out_dir: Path | None
    num_images: int = 0
    runtime: str = "PyTorch"
    images_per_second: float = 0.0
    intervals: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    slices: Any = None
    robustness: Any = None
    comparison: dict[str, Any] | None = None
    analysis: Any = field(default=None, repr=False)
    config: Any = field(default=None, repr=False)

    def _repr_html_(self) -> str:
        facts = {"images": self.num_images, "runtime": self.runtime, "images/s": round(self.images_per_second, 1)}
        intervals = {k: f"[{v[0]:.4f}, {v[1]:.4f}]" for k, v in self.intervals.items() if v}
        return _html("cvtrain evaluate", facts, {**summary_metrics(self.metrics), **intervals}, self.per_class)


@dataclass
class PredictResult:
    """What ``predict`` wrote.

    Attributes:
        out_dir: the output folder.
        predictions_file: ``predictions.json`` (COCO results with ``file_name``; one record per image for masks).
        num_images: images predicted.
        num_detections: records written (detections; for semantic segmentation, one per image).
        task: the checkpoint's task.
        num_drawn: detections at or above ``score_threshold``, the ones drawn on the images.
        score_threshold: ``eval.score_threshold`` (or ``--score-threshold``).
        skipped: images that could not be read (listed with their errors in ``skipped.json``).
        runtime: ``PyTorch``, or ``onnxruntime`` for an exported model.
        images_per_second: end to end: reading, the model, writing.
    """

    out_dir: Path
    predictions_file: Path
    num_images: int
    num_detections: int
    task: str = "detection"
    runtime: str = "PyTorch"
    images_per_second: float = 0.0
    num_drawn: int = 0
    score_threshold: float = 0.0
    skipped: list = field(default_factory=list)

    def _repr_html_(self) -> str:
        return _html("cvtrain predict", {"out_dir": self.out_dir, "images": self.num_images,
                                         "detections": self.num_detections}, {})
