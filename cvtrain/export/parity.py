"""Does the exported file give the answers PyTorch gives? onnxruntime against the checkpoint, image by image.

The rule is torchvision's for its own ONNX tests: every number within ``rtol 1e-3`` and ``atol 1e-5`` of
PyTorch's (``|onnx - torch| <= atol + rtol * |torch|``), the same labels, and masks that agree (IoU of the
masks thresholded at 0.5 at least 0.99; for semantic models the per-class IoU of the two argmax maps). A box
coordinate's ``|torch|`` is the larger of its box's two coordinates on that axis (``_box_excess`` says why).

Detections are compared after matching, not row by row: two detections whose scores differ in the 7th digit
may come out in either order. Matching pairs each PyTorch detection with an onnxruntime detection of the same
label (Hungarian assignment on the larger of the box and score differences, in units of the tolerance); a
pair within tolerance is a match. A detection left without a match fails the check, unless its score ties with
another detection of its own output (equal to 1e-6: the same number, computed the same way) or lies within
tolerance of the model's score threshold: where several detections have one score and a cut keeps only some
(top-k, detections per image), which survive is arbitrary in both runtimes, and a score at the threshold may
fall on either side of it. Those are counted and reported as ``tied``.

A few detections may still differ where PyTorch's own answer hangs on a near-tie: two overlapping candidates
whose scores agree to the 7th digit (non-maximum suppression keeps one, and which one is decided by rounding), or
a proposal at the IoU threshold of the region proposal network. The rounding of the two runtimes differs, so they
may decide differently. When an image fails only by such a handful (unmatched detections of both runtimes
together at most 2, or ``UNSTABLE_SHARE`` of PyTorch's detections where that is more: one flip is 2), PyTorch
runs again on up to ``UNSTABLE_TRIES`` copies of the image moved by seeded noise of at most ``UNSTABLE_NOISE``
(1/400 of one grey level); if the file's answer passes the same rules against one of those, the image holds
and its differing detections are counted as ``unstable``: the file disagrees with PyTorch no more than PyTorch
disagrees with itself. A file with changed weights or a wrong graph differs on most detections and is never
retried.
"""
from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

RTOL = 1e-3
ATOL = 1e-5
MASK_IOU = 0.99
MASK_THRESHOLD = 0.5  # as InstanceSegmentationTask scores masks
TIE = 1e-6  # relative and absolute: scores one runtime computed equal (the two runtimes differ by ~1e-7)
UNSTABLE_NOISE = 1e-5  # largest change of a pixel (images in [0, 1]) in the retries of a near-tie
UNSTABLE_TRIES = 8
UNSTABLE_SHARE = 0.05  # unmatched (both sides) above 2 and above this share of the detections: not retried
_NO_MATCH = 1e12  # cost of pairing detections of different labels


def within(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|candidate - reference| <= ATOL + RTOL * |reference|``, elementwise."""
    return np.abs(candidate - reference) <= ATOL + RTOL * np.abs(reference)


def _excess(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Differences in units of the tolerance: at most 1 is within it."""
    return np.abs(candidate - reference) / (ATOL + RTOL * np.abs(reference))


def _box_excess(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Box differences (``x0 y0 x1 y1`` last) in units of the tolerance, each coordinate measured against its box.

    The relative tolerance of a coordinate is taken of the larger of the box's two coordinates on its axis, not
    of the coordinate alone: a detector computes ``x0`` as ``centre - width / 2``, so ``x0`` carries the rounding
    of numbers as large as ``x1``, and a box that starts 0.02 px from the image's edge would otherwise be held to
    1e-5 px while its other edge, computed alike, is held to 1e-3 of its position. The tolerance of a box no longer
    depends on where the image's origin happens to be.
    """
    scale = np.maximum(np.abs(reference[..., [0, 1, 0, 1]]), np.abs(reference[..., [2, 3, 2, 3]]))
    return np.abs(candidate - reference) / (ATOL + RTOL * scale)


@dataclass
class ImageParity:
    """One image's comparison. Differences are the largest absolute ones over matched pairs (the unmatched ones are
    named in ``problems``); ``None`` where nothing was compared."""

    image: str
    detections: tuple[int, int] | None = None  # (PyTorch, onnxruntime) counts
    box: float | None = None  # pixels
    score: float | None = None
    mask_iou: float | None = None  # lowest over matched detections, or the semantic maps' mean IoU
    logits: float | None = None
    tied: int = 0  # detections excused as ties at a cut
    unstable: int = 0  # detections that differ where PyTorch differs from itself (see the module's docstring)
    unmatched: int = 0  # detections without a match and without an excuse (each also named in ``problems``)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_detections(name: str, reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], *,
                       score_threshold: float | None = None) -> ImageParity:
    """PyTorch's detections of one image (``reference``) against onnxruntime's (``candidate``).

    Args:
        name: the image, for the report.
        reference, candidate: ``boxes`` (xyxy), ``scores``, ``labels`` and optionally ``masks`` probabilities.
        score_threshold: the model's own threshold; a detection scored at it may be on either side of it.
    """
    ref = {k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in reference.items()}
    got = {k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in candidate.items()}
    result = ImageParity(image=name, detections=(len(ref["scores"]), len(got["scores"])))
    rows = cols = np.zeros(0, dtype=int)
    off_box = off_score = None
    if len(ref["scores"]) and len(got["scores"]):
        box = _box_excess(got["boxes"][None, :, :], ref["boxes"][:, None, :]).max(-1)
        score = _excess(got["scores"][None, :], ref["scores"][:, None])
        cost = np.maximum(box, score)
        cost[ref["labels"][:, None] != got["labels"][None, :]] = _NO_MATCH
        rows, cols = linear_sum_assignment(cost)
        same_label = cost[rows, cols] < _NO_MATCH
        rows, cols = rows[same_label], cols[same_label]
        matched = cost[rows, cols] <= 1.0
        if (~matched).any():  # how far off the closest detections of one label that do not match are
            off_box = float(np.abs(got["boxes"][cols[~matched]] - ref["boxes"][rows[~matched]]).max())
            off_score = float(np.abs(got["scores"][cols[~matched]] - ref["scores"][rows[~matched]]).max())
        rows, cols = rows[matched], cols[matched]
        if len(rows):  # the worst differences of the matched pairs: what "within tolerance" was
            result.box = float(np.abs(got["boxes"][cols] - ref["boxes"][rows]).max())
            result.score = float(np.abs(got["scores"][cols] - ref["scores"][rows]).max())
    if "masks" in ref and len(rows):
        result.mask_iou = _lowest_mask_iou(ref["masks"][rows], got["masks"][cols])
        if result.mask_iou < MASK_IOU:
            result.problems.append(f"mask IoU {result.mask_iou:.4f} < {MASK_IOU}")
    for side, scores, used in (("PyTorch", ref["scores"], rows), ("onnxruntime", got["scores"], cols)):
        alone = np.setdiff1d(np.arange(len(scores)), used)
        tied = [i for i in alone if _tied(scores, i, score_threshold)]
        result.tied += len(tied)
        unexcused = [i for i in alone if i not in set(tied)]
        result.unmatched += len(unexcused)
        if unexcused:
            shown = ", ".join(f"{scores[i]:.4f}" for i in sorted(unexcused, key=lambda i: -scores[i])[:3])
            result.problems.append(f"{len(unexcused)} {side} detections without a match within tolerance "
                                   f"(scores {shown}{', ...' if len(unexcused) > 3 else ''})")
    if result.unmatched and off_box is not None:
        result.problems.append(f"the closest unmatched pairs of one label differ by up to {off_box:.3g} px "
                               f"and {off_score:.3g} in score")
    return result


def _tied(scores: np.ndarray, index: int, threshold: float | None) -> bool:
    """Whether ``scores[index]`` equals another score of its output (to ``TIE``) or the threshold (to tolerance)."""
    others = np.delete(scores, index)
    if len(others) and (np.abs(others - scores[index]) <= TIE * (1 + abs(scores[index]))).any():
        return True
    return threshold is not None and bool(within(np.float32(scores[index]), np.float32(threshold)))


def _lowest_mask_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    first = reference.reshape(len(reference), -1) > MASK_THRESHOLD
    second = candidate.reshape(len(candidate), -1) > MASK_THRESHOLD
    union = (first | second).sum(1)
    iou = np.where(union > 0, (first & second).sum(1) / np.maximum(union, 1), 1.0)  # two empty masks agree
    return float(iou.min())


def compare_logits(name: str, reference: torch.Tensor, candidate: torch.Tensor) -> ImageParity:
    """A semantic model's ``(K, H, W)`` logits of one image: values within tolerance, argmax maps that agree.

    A logit's tolerance is ``atol + rtol x`` the largest ``|logit|`` of its pixel.
    """
    ref = reference.detach().float().cpu().numpy()
    got = candidate.detach().float().cpu().numpy()
    result = ImageParity(image=name)
    if ref.shape != got.shape:
        result.problems.append(f"logits of shape {got.shape}, PyTorch's are {ref.shape}")
        return result
    result.logits = float(np.abs(got - ref).max())
    # Each logit is measured against the largest of its pixel: a logit is a sum of terms as large as that (one near
    # 0 carries their rounding), and the argmax and the softmax depend on differences of logits only.
    scale = np.abs(ref).max(axis=0, keepdims=True)
    outside = np.abs(got - ref) > ATOL + RTOL * scale
    if outside.any():
        result.problems.append(f"{int(outside.sum())} logits outside tolerance (worst {result.logits:.3g})")
    first, second = ref.argmax(0), got.argmax(0)
    ious = []
    for label in np.union1d(np.unique(first), np.unique(second)):
        a, b = first == label, second == label
        ious.append((a & b).sum() / (a | b).sum())
    result.mask_iou = float(np.mean(ious))
    if result.mask_iou < MASK_IOU:
        result.problems.append(f"argmax maps' mean IoU {result.mask_iou:.4f} < {MASK_IOU}")
    return result


@dataclass
class ParityReport:
    """The comparison of an exported file with its checkpoint on a set of images, and the speed of both."""

    file: str
    task: str
    images: list[ImageParity]
    onnx_images_per_second: float = 0.0
    torch_images_per_second: float = 0.0
    provider: str = "CPUExecutionProvider"
    threads: int = 1

    @property
    def ok(self) -> bool:
        return bool(self.images) and all(image.ok for image in self.images)

    @property
    def speedup(self) -> float:
        return self.onnx_images_per_second / self.torch_images_per_second if self.torch_images_per_second else 0.0

    def worst(self) -> dict[str, Any]:
        """The largest difference of each kind over all images (lowest for mask IoU)."""
        worst: dict[str, Any] = {}
        for key, pick in (("box", max), ("score", max), ("logits", max), ("mask_iou", min)):
            values = [getattr(image, key) for image in self.images if getattr(image, key) is not None]
            if values:
                worst[key] = pick(values)
        worst["tied"] = sum(image.tied for image in self.images)
        worst["unstable"] = sum(image.unstable for image in self.images)
        return worst

    def summary(self) -> str:
        """One line: the verdict, the worst differences, the speed of both runtimes."""
        names = {"box": "boxes {:.3g} px", "score": "scores {:.3g}", "logits": "logits {:.3g}",
                 "mask_iou": "mask IoU {:.4f}", "tied": "{} tied detections left out",
                 "unstable": "{} detections as unstable in PyTorch itself"}
        worst = ", ".join(names[k].format(v) for k, v in self.worst().items() if k not in ("tied", "unstable") or v)
        verdict = "parity holds" if self.ok else "PARITY FAILS"
        return (f"{verdict} on {len(self.images)} images (rtol {RTOL:g}, atol {ATOL:g}, mask IoU >= {MASK_IOU}; "
                f"worst: {worst or 'nothing compared'}); onnxruntime {self.onnx_images_per_second:.1f} images/s, "
                f"PyTorch {self.torch_images_per_second:.1f} images/s ({self.speedup:.2f}x, {self.threads} threads)")

    def table(self) -> str:
        """A text table, one row per image."""
        lines = [f"{'image':<28} {'detections':>10} {'box px':>9} {'score':>9} {'logits':>9} {'mask IoU':>8}  verdict"]
        for image in self.images:
            count = f"{image.detections[0]}/{image.detections[1]}" if image.detections else "-"
            cells = [f"{v:9.2g}" if v is not None else f"{'-':>9}" for v in (image.box, image.score, image.logits)]
            iou = f"{image.mask_iou:8.4f}" if image.mask_iou is not None else f"{'-':>8}"
            verdict = "; ".join(image.problems) if not image.ok else "ok" + "".join(
                f" ({n} {what})" for n, what in ((image.tied, "tied"), (image.unstable, "unstable")) if n)
            lines.append(f"{image.image[-28:]:<28} {count:>10} {' '.join(cells)} {iou}  {verdict}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "task": self.task, "ok": self.ok, "rtol": RTOL, "atol": ATOL, "mask_iou": MASK_IOU,
                "worst": self.worst(), "onnx_images_per_second": self.onnx_images_per_second,
                "torch_images_per_second": self.torch_images_per_second, "provider": self.provider,
                "threads": self.threads, "images": [asdict(image) for image in self.images]}

    def _repr_html_(self) -> str:
        names = ("image", "detections", "box px", "score", "logits", "mask IoU", "verdict")
        head = "".join(f"<th>{name}</th>" for name in names)
        rows = []
        for image in self.images:
            cells = [image.image, f"{image.detections[0]}/{image.detections[1]}" if image.detections else "-",
                     *(f"{v:.2g}" if v is not None else "-" for v in (image.box, image.score, image.logits)),
                     f"{image.mask_iou:.4f}" if image.mask_iou is not None else "-",
                     "ok" if image.ok else "; ".join(image.problems)]
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        return f"<b>{html.escape(self.summary())}</b><table><tr>{head}</tr>{''.join(rows)}</table>"


def _timed(run: Callable[[torch.Tensor], Any], images: list[torch.Tensor], progress: Callable | None):
    """Outputs of ``run`` on each image, one image per call, and images per second (after a warm-up call)."""
    run(images[0])
    outputs, started = [], time.perf_counter()
    for image in progress(images) if progress else images:
        outputs.append(run(image))
    return outputs, len(images) / max(time.perf_counter() - started, 1e-9)


def check_parity(task, network, images: list[tuple[str, torch.Tensor]], *, file: str = "",
                 progress: Callable | None = None) -> ParityReport:
    """Run ``task`` twice on each image, with its PyTorch network and with ``network`` in its place, and compare.

    Args:
        task: the task loaded from the checkpoint, in eval mode, on the CPU.
        network: an ``OnnxNetwork`` (the exported file) to put where ``task.model`` is.
        images: ``(name, tensor)`` pairs, each image as ``cvtrain predict`` feeds the model.
        file: the exported file, for the report.
        progress: wraps an iterable in a progress bar (e.g. ``tqdm``).

    Returns:
        The ``ParityReport``; its ``ok`` is the verdict.
    """
    tensors = [tensor for _, tensor in images]
    torch_network = task.model
    with torch.inference_mode():
        expected, torch_speed = _timed(lambda image: task([image])[0], tensors, progress)
        try:
            task.model = network
            found, onnx_speed = _timed(lambda image: task([image])[0], tensors, progress)
        finally:
            task.model = torch_network
    threshold = _score_threshold(torch_network)
    compared = []
    for (name, tensor), reference, candidate in zip(images, expected, found):
        if task.config.task == "semantic_segmentation":
            compared.append(compare_logits(name, reference["logits"], candidate["logits"]))
            continue
        result = compare_detections(name, reference, candidate, score_threshold=threshold)
        if _near_tie(result):
            result = _retry_near_tie(task, tensor, candidate, result, threshold)
        compared.append(result)
    return ParityReport(file=file, task=task.config.task, images=compared, onnx_images_per_second=onnx_speed,
                        torch_images_per_second=torch_speed, provider=network.onnx.provider,
                        threads=torch.get_num_threads())


def _near_tie(result: ImageParity) -> bool:
    """Whether a failed image differs by few enough unmatched detections (and nothing else) to be retried."""
    masks_differ = result.mask_iou is not None and result.mask_iou < MASK_IOU
    if result.ok or result.unmatched == 0 or masks_differ:
        return False
    return result.unmatched <= max(2, UNSTABLE_SHARE * max(result.detections or (0,)))


def _retry_near_tie(task, tensor: torch.Tensor, candidate: dict, result: ImageParity,
                    threshold: float | None) -> ImageParity:
    """Compare the file's answer with PyTorch's on copies of the image moved by at most ``UNSTABLE_NOISE``.

    Returns ``result`` as it was when no copy's answer matches; otherwise it, passed, with its unmatched detections
    counted as ``unstable``.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(UNSTABLE_TRIES):
            noise = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * UNSTABLE_NOISE
            moved = (tensor + noise.to(tensor.device)).clamp_(0, 1)
            if compare_detections(result.image, task([moved])[0], candidate, score_threshold=threshold).ok:
                result.unstable, result.unmatched, result.problems = result.unmatched, 0, []
                return result
    return result


def _score_threshold(network) -> float | None:
    """The detector's own score cut: ``score_thresh`` (SSD, RetinaNet, FCOS) or its ROI heads' (R-CNN)."""
    for holder in (network, getattr(network, "roi_heads", None)):
        value = getattr(holder, "score_thresh", None)
        if isinstance(value, (int, float)):
            return float(value)
    return None
