"""What ``cvtrain evaluate`` adds to the scores: bootstrap intervals, the no-model baseline, slices, and the
paired comparison of two checkpoints. Everything here reuses the validation pass's per-image predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvtrain.data.index import DatasetIndex
from cvtrain.errors import CvtrainError
from cvtrain.evaluation.baselines import detection_baseline
from cvtrain.evaluation.bootstrap import (
    LEVEL,
    DetectionBootstrap,
    SegmentationBootstrap,
    intervals,
    paired_difference,
    resample_counts,
)
from cvtrain.evaluation.inference import PredictionCollector, is_semantic, primary_metric
from cvtrain.evaluation.slices import SliceReport, built_in_attributes, file_attributes, slice_report

# bootstrap statistic name -> the metric's name in metrics.json
DETECTION_NAMES = {"AP": "mAP", "AP50": "AP50", "AP75": "AP75"}


@dataclass
class Analysis:
    """Intervals (``{"mAP_ci95": [low, high], ...}``), baseline, slices; ``samples`` keeps each resample's
    statistic for a paired comparison on the same resamples."""

    metric: str
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    resamples: int = 0
    seed: int = 0
    baseline: dict[str, Any] | None = None
    slices: SliceReport | None = None
    image_ids: list[int] = field(default_factory=list)
    samples: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Top-level keys for ``metrics.json``."""
        out: dict[str, Any] = dict(self.intervals)
        out["intervals"] = {"method": "percentile bootstrap over images", "level": LEVEL,
                            "resamples": self.resamples, "seed": self.seed}
        if self.baseline is not None:
            out["baseline"] = self.baseline
        if self.slices is not None:
            out["slices"] = self.slices.to_json()
        return out


def analyse(task, config, index: DatasetIndex, val: DatasetIndex, collector: PredictionCollector, *,
            resamples: int = 1000, seed: int = 0, baseline: bool = True, slices: bool = True) -> Analysis:
    """Intervals, baseline and slices for one validation pass.

    Args:
        task: the evaluated task; config: its config (``slices`` section, ``data.train_split``).
        index: the whole dataset (the baseline's priors come from its training split).
        val: the scored split; collector: what the pass collected per image.
        resamples: bootstrap resamples (0: no intervals); seed: their seed.
    """
    metric = primary_metric(task)
    seen = sorted(collector.predictions)
    analysis = Analysis(metric=metric, resamples=resamples, seed=seed, image_ids=seen)
    if not seen:
        return analysis
    if is_semantic(task):
        boot = SegmentationBootstrap([collector.predictions[i] for i in seen], len(task.class_names))
        names = {"mIoU": "mIoU", "pixel_accuracy": "pixel_accuracy"}
        extra = []
    else:
        ground_truth = val.subset(seen).to_coco() if set(seen) != {r.id for r in val.images} else val.to_coco()
        results = [record for i in seen for record in collector.predictions[i]]
        boot = DetectionBootstrap(ground_truth, results, "bbox")
        names = DETECTION_NAMES
        extra = []
        if "segm" in getattr(task, "iou_types", ()):
            masks_only = [{k: v for k, v in record.items() if k != "bbox"} for record in results]
            extra.append(("segm_", DetectionBootstrap(ground_truth, masks_only, "segm")))
        if baseline:
            train = index.split(config.data.train_split)
            analysis.baseline = detection_baseline(train, val.subset(seen))
    if resamples > 0:
        counts = resample_counts(len(seen), resamples, seed)
        statistics = boot.statistics(counts)
        analysis.samples = {names[k]: v for k, v in statistics.items() if k in names}
        analysis.intervals = intervals(analysis.samples)
        for prefix, other in extra:
            values = other.statistics(counts)["AP"]
            analysis.samples[prefix + "AP"] = values
            analysis.intervals.update(intervals({prefix + "AP": values}))
    if slices:
        spec = config.slices
        attributes = built_in_attributes(val.subset(seen), list(spec.built_in), brightness=collector.brightness,
                                         sizes=collector.sizes, semantic=is_semantic(task))
        attributes.update(file_attributes(val.subset(seen), spec.attributes))
        statistic_name = "mIoU" if is_semantic(task) else "AP"
        whole = float(boot.statistics(np.ones((1, len(seen))))[statistic_name][0])
        analysis.slices = slice_report(boot.statistics, seen, attributes, metric=metric,
                                       statistic_name=statistic_name, whole=whole, min_images=spec.min_images,
                                       max_gap=spec.max_gap)
    return analysis


def compare(first: Analysis, second: Analysis, first_scores: dict[str, float],
            second_scores: dict[str, float]) -> dict[str, Any]:
    """The paired difference ``second - first`` of each metric with samples, on the same resamples.

    Raises:
        CvtrainError: the two evaluations did not score the same images, or had no resamples.
    """
    if first.image_ids != second.image_ids:
        raise CvtrainError(f"the two checkpoints were scored on different images ({len(first.image_ids)} and "
                           f"{len(second.image_ids)})", hint="compare them on the same split and dataset")
    if not first.samples or first.resamples != second.resamples or first.seed != second.seed:
        raise CvtrainError("no bootstrap resamples to compare", hint="give --resamples 1000 or more")
    out: dict[str, Any] = {"resamples": first.resamples, "seed": first.seed, "level": LEVEL,
                           "num_images": len(first.image_ids), "metrics": {}}
    for name in first.samples:
        if name not in second.samples:
            continue
        paired = paired_difference(first.samples[name], second.samples[name])
        a, b = first_scores.get(name), second_scores.get(name)
        out["metrics"][name] = {"first": a, "second": b,
                                "difference": (b - a) if a is not None and b is not None else None,
                                "difference_ci95": paired["interval"],
                                "share_second_better": paired["share_second_better"]}
    out["metric"] = first.metric
    return out
