"""``cvtrain test``: invariance and counterfactual tests declared in the spec's ``tests`` section.

Each test changes the validation images in one way and says what must hold (``cvtrain.config.testing``):

- ``flip``: mirrored left to right. Detection: the share of images whose set of predicted classes (score >=
  the threshold) is unchanged; semantic segmentation: the share of pixels whose class is unchanged once the
  prediction is mirrored back. At least ``min_agreement``.
- ``brightness``: intensities times each factor. The score (mAP or mIoU) may fall at most ``max_drop``.
- ``background``: each image's objects (boxes, or instance masks) pasted in place onto another validation
  image, resized to fit, whose own objects are blotted out with its median colour. Of the objects found in
  place (same class, IoU >= ``match_iou``), at least ``min_kept`` must still be found. Semantic segmentation
  pastes the pixels of ``classes`` and compares the pasted pixels' accuracy after and before.
- ``removal``: one object at a time painted out (OpenCV's Telea inpainting over its box or mask). Of the
  objects found before, at least ``min_removed`` must lose their detection, and at least ``min_kept`` of the
  image's other found objects (those not overlapping it) must keep theirs.
- ``corruption``: rPC over the given corruptions and severities at least ``min_relative``.
- ``slices``: the worst slice (``slices`` section) at most ``max_gap`` below the whole set.

A test with nothing to judge (no object found in place) fails: a model that finds nothing proves nothing.
"""
from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvtrain.atomic import write_json
from cvtrain.data.files import inside_root, read_image
from cvtrain.data.index import Annotation, DatasetIndex, ImageRecord
from cvtrain.errors import ConfigError
from cvtrain.evaluation.inference import Item, Predictions, is_semantic, predict, primary_metric, score


# ----------------------------------------------------------------------------------------- alterations
class Flip:
    """Mirror left to right."""

    def __call__(self, image: np.ndarray, record: ImageRecord) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])


class Scale:
    """Intensities times ``factor``, clipped to 0..255."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, image: np.ndarray, record: ImageRecord) -> np.ndarray:
        return np.clip(image.astype(np.float32) * self.factor, 0, 255).astype(np.uint8)


def _region_mask(height: int, width: int, annotation: Annotation, grow: int = 0) -> np.ndarray:
    """A boolean mask of an annotation: its polygon/RLE when it has one, else its box (grown by ``grow`` px)."""
    mask = np.zeros((height, width), dtype=bool)
    segmentation = annotation.segmentation
    if segmentation:
        from pycocotools import mask as mask_utils

        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)) if polygons else None
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        if rle is not None and list(rle["size"]) == [height, width]:
            mask = mask_utils.decode(rle).astype(bool)
    if not mask.any():
        x, y, w, h = annotation.bbox
        mask[max(int(math.floor(y)), 0):int(math.ceil(y + h)), max(int(math.floor(x)), 0):int(math.ceil(x + w))] = True
    if grow:
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)
    return mask


class Paste:
    """The image's objects pasted in place onto another image (resized to fit, its own objects blotted out)."""

    def __init__(self, root: Path, background: ImageRecord, background_objects: list[Annotation],
                 objects: list[Annotation] | None = None, class_mask: Any = None, classes: tuple[int, ...] = ()):
        self.root, self.background, self.background_objects = root, background, background_objects
        self.objects, self.class_mask, self.classes = objects or [], class_mask, classes

    def __call__(self, image: np.ndarray, record: ImageRecord) -> np.ndarray:
        height, width = image.shape[:2]
        other = read_image(inside_root(self.root, self.background.file_name))
        other_h, other_w = other.shape[:2]
        blot = np.zeros((other_h, other_w), dtype=bool)
        for annotation in self.background_objects:
            blot |= _region_mask(other_h, other_w, annotation, grow=2)
        if blot.any():
            other = other.copy()
            other[blot] = np.median(other[~blot], axis=0) if (~blot).any() else 0
        canvas = cv2.resize(other, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.class_mask is not None:  # semantic segmentation: the pixels of the chosen classes
            truth = self.class_mask(record)
            keep = np.isin(truth, self.classes)
        else:
            keep = np.zeros((height, width), dtype=bool)
            for annotation in self.objects:
                keep |= _region_mask(height, width, annotation)
        canvas[keep] = image[keep]
        return canvas


class Remove:
    """One object painted out: OpenCV inpainting (Telea) over its mask or box, grown by 3 px."""

    def __init__(self, annotation: Annotation):
        self.annotation = annotation

    def __call__(self, image: np.ndarray, record: ImageRecord) -> np.ndarray:
        height, width = image.shape[:2]
        mask = _region_mask(height, width, self.annotation, grow=3).astype(np.uint8)
        return cv2.inpaint(np.ascontiguousarray(image), mask, 5, cv2.INPAINT_TELEA)


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Outcome:
    """One test's verdict: the measured ``value`` against ``requirement``."""

    name: str
    passed: bool
    value: float | None
    requirement: str
    detail: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TestReport:
    """All outcomes of ``cvtrain test``; ``exit_code`` 0 when every test passed, 1 otherwise."""

    __test__ = False  # not a pytest class

    outcomes: list[Outcome]
    checkpoint: str = ""
    split: str = ""
    num_images: int = 0
    metric: str = ""
    clean: float | None = None
    seconds: float = 0.0
    out_dir: Path | None = None

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary_table(self) -> str:
        width = max([len(o.name) for o in self.outcomes] + [4])
        lines = [f"{'test':<{width}}  result  {'value':>8}  must hold                      detail"]
        for o in self.outcomes:
            value = f"{o.value:8.4f}" if o.value is not None and math.isfinite(o.value) else f"{'-':>8}"
            lines.append(f"{o.name:<{width}}  {'pass' if o.passed else 'FAIL':<6}  {value}  {o.requirement:<30} "
                         f"{o.detail}")
        failed = sum(not o.passed for o in self.outcomes)
        lines.append(f"{len(self.outcomes) - failed} passed, {failed} failed on {self.num_images} images "
                     f"(clean {self.metric} {self.clean:.4f}) in {self.seconds:.0f} s" if self.clean is not None
                     else f"{len(self.outcomes) - failed} passed, {failed} failed")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checkpoint": self.checkpoint, "split": self.split,
                "num_images": self.num_images, "metric": self.metric, "clean": self.clean,
                "seconds": round(self.seconds, 1), "tests": [o.__dict__ for o in self.outcomes]}

    def junit_xml(self) -> str:
        """JUnit XML (one testsuite, one testcase per test) for CI systems."""
        failures = sum(not o.passed for o in self.outcomes)
        suites = ElementTree.Element("testsuites", name="cvtrain test", tests=str(len(self.outcomes)),
                                     failures=str(failures), time=f"{self.seconds:.3f}")
        suite = ElementTree.SubElement(suites, "testsuite", name=f"cvtrain test {self.checkpoint}",
                                       tests=str(len(self.outcomes)), failures=str(failures), errors="0",
                                       time=f"{self.seconds:.3f}")
        for o in self.outcomes:
            case = ElementTree.SubElement(suite, "testcase", classname="cvtrain.model_tests", name=o.name,
                                          time=f"{o.seconds:.3f}")
            text = f"value {o.value}; must hold: {o.requirement}; {o.detail}"
            if not o.passed:
                ElementTree.SubElement(case, "failure", message=f"{o.name}: {o.requirement}").text = text
            else:
                ElementTree.SubElement(case, "system-out").text = text
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"

    def _repr_html_(self) -> str:
        from cvtrain.evaluation.report import outcomes_html

        return outcomes_html(f"cvtrain test: {'passed' if self.passed else 'failed'}",
                             [o.__dict__ for o in self.outcomes])

    def write(self, out_dir: Path) -> None:
        """``tests.json``, ``junit.xml`` and ``tests.html`` in ``out_dir`` (each written atomically)."""
        from cvtrain.evaluation.report import STYLE, write_text

        out_dir = Path(out_dir)
        self.out_dir = out_dir
        write_json(out_dir / "tests.json", self.to_json())
        write_text(out_dir / "junit.xml", self.junit_xml())
        write_text(out_dir / "tests.html", f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cvtrain test"
                                           f"</title><style>{STYLE}</style></head><body>{self._repr_html_()}"
                                           f"</body></html>")


# ------------------------------------------------------------------------------------------- matching
def _iou(box: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with ``(N, 4)`` xywh boxes."""
    x, y, w, h = box
    x0, y0 = np.maximum(x, boxes[:, 0]), np.maximum(y, boxes[:, 1])
    x1, y1 = np.minimum(x + w, boxes[:, 0] + boxes[:, 2]), np.minimum(y + h, boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / np.maximum(w * h + boxes[:, 2] * boxes[:, 3] - inter, 1e-12)


def found(records: list[dict[str, Any]], annotation: Annotation, threshold: float, match_iou: float) -> bool:
    """Whether a detection of the annotation's class, at or above ``threshold``, overlaps it enough."""
    boxes = np.array([r["bbox"] for r in records if r["category_id"] == annotation.category_id
                      and r["score"] >= threshold], dtype=np.float64).reshape(-1, 4)
    return bool(len(boxes) and (_iou(annotation.bbox, boxes) >= match_iou).any())


def _objects(val: DatasetIndex, image_id: int) -> list[Annotation]:
    return [a for a in val.annotations_by_image.get(image_id, []) if not a.iscrowd and a.bbox[2] > 0 and a.bbox[3] > 0]


# ---------------------------------------------------------------------------------------------- runner
def run_model_tests(task, config, index: DatasetIndex, val: DatasetIndex, *, progress: bool = True,
                    checkpoint: str = "") -> TestReport:
    """Run the tests of ``config.tests`` on ``val`` and return their outcomes.

    Raises:
        ConfigError: no test is declared, or one does not apply to the task.
    """
    started = time.time()
    tests = config.tests
    enabled = tests.enabled()
    if not enabled:
        raise ConfigError("the spec declares no model tests", where="tests",
                          hint="add e.g. 'tests: {flip: {}, brightness: {}}' to the spec (see docs/testing-models.md)")
    semantic = is_semantic(task)
    if semantic and tests.removal is not None:
        raise ConfigError("tests.removal applies to detection and instance segmentation", where="tests.removal",
                          hint="remove it from a semantic segmentation spec")
    if semantic and tests.background is not None and not tests.background.classes:
        raise ConfigError("semantic segmentation needs the object classes to paste", where="tests.background.classes",
                          hint=f"name some of: {', '.join(task.class_names)}")
    threshold = tests.score_threshold if tests.score_threshold is not None else config.eval.score_threshold
    rng = np.random.default_rng(tests.seed)
    records = list(val.images)
    items = [Item(("clean", r.id), r) for r in records]
    if tests.flip is not None:
        items += [Item(("flip", r.id), r, Flip()) for r in records]
    if tests.brightness is not None:
        items += [Item(("brightness", f, r.id), r, Scale(f)) for f in tests.brightness.factors for r in records]
    class_mask = None
    if semantic and tests.background is not None:
        from cvtrain.data.segmentation import SegmentationDataset

        class_mask = SegmentationDataset(val, palette=config.data.palette).load_mask
    if tests.background is not None and len(records) > 1:
        shift = 1 + int(rng.integers(len(records) - 1))  # every image gets another image's background
        chosen = records if semantic else [r for r in records if _objects(val, r.id)]
        position = {r.id: i for i, r in enumerate(records)}
        for record in chosen[:tests.background.max_images]:
            background = records[(position[record.id] + shift) % len(records)]
            classes = tuple(task.class_names.index(c) for c in tests.background.classes or () if c in task.class_names)
            alteration = Paste(val.root, background, [] if semantic else _objects(val, background.id),
                               _objects(val, record.id), class_mask=class_mask, classes=classes)
            items.append(Item(("background", record.id), record, alteration))
    if tests.removal is not None:
        removals = [(r, a) for r in records for a in _objects(val, r.id)][:tests.removal.max_images]
        items += [Item(("removal", a.id), r, Remove(a)) for r, a in removals]
    predictions = predict(task, config, val, items, keep_masks=semantic, progress=progress, description="tests",
                          postfix=lambda item: str(item.key[0]))
    clean_per_image = {r.id: predictions.payload[("clean", r.id)] for r in records}
    clean = score(task, val, clean_per_image)
    metric = primary_metric(task)
    clean_score = float(clean["scalars"][metric])
    context = _Context(task, config, val, predictions, records, threshold, tests.match_iou, semantic, clean_score,
                       metric, class_mask)
    outcomes = []
    for name in enabled:
        began = time.time()
        outcome = getattr(context, name)(getattr(tests, name))
        outcome.seconds = time.time() - began
        outcomes.append(outcome)
    return TestReport(outcomes=outcomes, checkpoint=checkpoint, split=config.data.val_split, num_images=len(records),
                      metric=metric, clean=clean_score, seconds=time.time() - started)


@dataclass
class _Context:
    task: Any
    config: Any
    val: DatasetIndex
    predictions: Predictions
    records: list[ImageRecord]
    threshold: float
    match_iou: float
    semantic: bool
    clean: float
    metric: str
    class_mask: Any

    def _classes(self, key) -> frozenset:
        if self.semantic:
            mask = self.predictions.masks[key]
            counts = np.bincount(mask.ravel(), minlength=len(self.task.class_names))
            return frozenset(np.flatnonzero(counts >= 0.01 * mask.size).tolist())
        return frozenset(r["category_id"] for r in self.predictions.payload[key] if r["score"] >= self.threshold)

    def flip(self, spec) -> Outcome:
        if self.semantic:
            agreement = [float(np.mean(self.predictions.masks[("clean", r.id)]
                                       == self.predictions.masks[("flip", r.id)][:, ::-1])) for r in self.records]
            value = float(np.mean(agreement))
            detail = f"pixels with the same class after flipping back, over {len(self.records)} images"
        else:
            same = [self._classes(("clean", r.id)) == self._classes(("flip", r.id)) for r in self.records]
            value = float(np.mean(same))
            detail = f"{sum(same)} of {len(same)} images keep their predicted classes"
        return Outcome("flip", value >= spec.min_agreement, value, f"agreement >= {spec.min_agreement:g}", detail)

    def brightness(self, spec) -> Outcome:
        drops = {}
        for factor in spec.factors:
            per_image = {r.id: self.predictions.payload[("brightness", factor, r.id)] for r in self.records}
            drops[factor] = self.clean - float(score(self.task, self.val, per_image)["scalars"][self.metric])
        worst = max(drops, key=drops.get)
        detail = ", ".join(f"x{f:g}: {self.metric} {self.clean - d:.4f}" for f, d in drops.items())
        return Outcome("brightness", drops[worst] <= spec.max_drop, drops[worst],
                       f"{self.metric} drop <= {spec.max_drop:g}", f"clean {self.clean:.4f}; {detail}",
                       data={"drops": {str(f): d for f, d in drops.items()}})

    def background(self, spec) -> Outcome:
        keys = [k for k in self.predictions.payload if k[0] == "background"]
        if self.semantic:
            before, after = [], []
            classes = [self.task.class_names.index(c) for c in spec.classes if c in self.task.class_names]
            for _, image_id in keys:
                record = self.val.image_by_id[image_id]
                truth = self.class_mask(record)
                pasted = np.isin(truth, classes)
                if pasted.any():
                    before.append(float(np.mean(self.predictions.masks[("clean", image_id)][pasted] == truth[pasted])))
                    after.append(float(np.mean(self.predictions.masks[("background", image_id)][pasted]
                                               == truth[pasted])))
            if not before or np.mean(before) == 0:
                return Outcome("background", False, None, f"kept >= {spec.min_kept:g}",
                               "nothing to test: no pasted pixel was right in place")
            value = float(np.mean(after) / np.mean(before))
            return Outcome("background", value >= spec.min_kept, value, f"kept >= {spec.min_kept:g}",
                           f"accuracy on pasted pixels {np.mean(after):.3f} after, {np.mean(before):.3f} in place, "
                           f"{len(before)} images")
        in_place = kept = 0
        for _, image_id in keys:
            for annotation in _objects(self.val, image_id):
                if found(self.predictions.payload[("clean", image_id)], annotation, self.threshold, self.match_iou):
                    in_place += 1
                    kept += found(self.predictions.payload[("background", image_id)], annotation, self.threshold,
                                  self.match_iou)
        if not in_place:
            return Outcome("background", False, None, f"kept >= {spec.min_kept:g}",
                           "nothing to test: no object was found in place")
        value = kept / in_place
        return Outcome("background", value >= spec.min_kept, value, f"kept >= {spec.min_kept:g}",
                       f"{kept} of {in_place} objects found in place are found on another background "
                       f"({len(keys)} images)")

    def removal(self, spec) -> Outcome:
        removed_total = removed = others_total = others_kept = 0
        by_id = {a.id: a for a in self.val.annotations}
        for key in [k for k in self.predictions.payload if k[0] == "removal"]:
            target = by_id[key[1]]
            clean = self.predictions.payload[("clean", target.image_id)]
            after = self.predictions.payload[key]
            if found(clean, target, self.threshold, self.match_iou):
                removed_total += 1
                removed += not found(after, target, self.threshold, self.match_iou)
            for other in _objects(self.val, target.image_id):
                if other.id == target.id or _iou(target.bbox, np.array([other.bbox], dtype=np.float64))[0] > 0:
                    continue  # painting out the target may have touched it
                if found(clean, other, self.threshold, self.match_iou):
                    others_total += 1
                    others_kept += found(after, other, self.threshold, self.match_iou)
        requirement = f"removed >= {spec.min_removed:g}, others kept >= {spec.min_kept:g}"
        if not removed_total:
            return Outcome("removal", False, None, requirement, "nothing to test: no object was found before removal")
        share_removed = removed / removed_total
        share_kept = others_kept / others_total if others_total else 1.0
        passed = share_removed >= spec.min_removed and share_kept >= spec.min_kept
        return Outcome("removal", passed, share_removed, requirement,
                       f"{removed} of {removed_total} removed objects lost their detection; {others_kept} of "
                       f"{others_total} other objects kept theirs", data={"kept": share_kept})

    def corruption(self, spec) -> Outcome:
        from cvtrain.evaluation.robustness import run_robustness

        clean = {"scalars": {self.metric: self.clean}}
        result = run_robustness(self.task, self.config, self.val, corruptions=spec.corruptions,
                                severities=spec.severities, clean=clean, seed=self.config.tests.seed)
        value = result.rpc if math.isfinite(result.rpc) else None
        worst = min(result.per_corruption().items(), key=lambda pair: pair[1])
        return Outcome("corruption", value is not None and value >= spec.min_relative, value,
                       f"rPC >= {spec.min_relative:g}",
                       f"mPC {result.mpc:.4f} of clean {self.clean:.4f} over {len(result.table)} corruptions x "
                       f"{len(result.severities)} severities; worst {worst[0]} {worst[1]:.4f}",
                       data=result.to_json())

    def slices(self, spec) -> Outcome:
        from cvtrain.evaluation.analysis import analyse
        from cvtrain.evaluation.inference import PredictionCollector

        collector = PredictionCollector()
        collector.predictions = {r.id: self.predictions.payload[("clean", r.id)] for r in self.records}
        collector.brightness = self.predictions.brightness
        collector.sizes = self.predictions.sizes
        report = analyse(self.task, self.config, self.val, self.val, collector, resamples=0, baseline=False).slices
        max_gap = spec.max_gap if spec.max_gap is not None else self.config.slices.max_gap
        worst = report.worst if report is not None else None
        requirement = f"worst slice gap <= {max_gap:g}"
        if worst is None:
            return Outcome("slices", False, None, requirement,
                           f"nothing to test: no slice with {self.config.slices.min_images}+ images and a score")
        return Outcome("slices", worst.gap <= max_gap, worst.gap, requirement,
                       f"{worst.attribute}={worst.value} ({worst.images} images) {self.metric} {worst.score:.4f} "
                       f"against {report.whole:.4f}", data=report.to_json())
