"""The spec's ``tests`` and ``slices`` sections: what ``cvtrain test`` checks, and how slices are flagged.

```yaml
tests:                        # cvtrain test -c spec --checkpoint ckpt: exit 1 when one fails
  flip: {min_agreement: 0.95}
  brightness: {factors: [0.8, 1.2], max_drop: 0.02}
  background: {min_kept: 0.8}
  removal: {min_removed: 0.8, min_kept: 0.8}
  corruption: {corruptions: [noise, blur], severities: [3], min_relative: 0.5}
  slices: {}                  # the worst slice's gap must stay within slices.max_gap
slices:
  attributes: slices.csv      # optional: file_name + one column per image attribute, beside the dataset
  max_gap: 0.1
```
A test that is absent (or ``null``) does not run; ``{}`` runs it with its defaults.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cvtrain.config.base import StrictModel

BuiltInSlice = Literal["object_size", "object_count", "brightness", "image_size"]


class FlipTest(StrictModel):
    """Horizontal flip must not change which classes the model sees in an image."""

    min_agreement: float = Field(0.95, ge=0.0, le=1.0)  # share of images whose predicted classes stay the same


class BrightnessTest(StrictModel):
    """Darker and brighter images (intensities times each factor, clipped) must score about the same."""

    factors: list[float] = Field(default_factory=lambda: [0.8, 1.2], min_length=1)  # e.g. 0.8: 20 % darker
    max_drop: float = Field(0.02, ge=0.0)  # most the score (mAP or mIoU) may fall below clean: 0.02 = 2 points

    @field_validator("factors")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(factor <= 0 for factor in value):
            raise ValueError("brightness factors must be positive")
        return value


class BackgroundTest(StrictModel):
    """Counterfactual: the objects pasted, in place, onto another validation image's background (its own
    objects blotted out) must still be found; the model must not depend on the background."""

    min_kept: float = Field(0.8, ge=0.0, le=1.0)  # share of objects found in place that are found after pasting
    classes: list[str] | None = None  # semantic segmentation: the object classes to paste (required there)
    max_images: int = Field(200, gt=0)  # counterfactual images made at most


class RemovalTest(StrictModel):
    """Counterfactual: an object painted out (OpenCV inpainting over its box or mask) must lose its
    detection, and only its detection (detection and instance segmentation)."""

    min_removed: float = Field(0.8, ge=0.0, le=1.0)  # share of removed objects whose detection disappears
    min_kept: float = Field(0.8, ge=0.0, le=1.0)  # share of the other objects' detections that stay
    max_images: int = Field(200, gt=0)  # objects removed at most (one image each)


class CorruptionTest(StrictModel):
    """Common corruptions (Hendrycks & Dietterich) must keep a share of the clean score (rPC)."""

    corruptions: list[str] = Field(default_factory=lambda: ["all"])  # names or families: noise, blur, weather, digital
    severities: list[int] = Field(default_factory=lambda: [3])  # 1 to 5
    min_relative: float = Field(0.5, ge=0.0)  # mean corrupted score / clean score (rPC) at least

    @field_validator("corruptions")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from cvtrain.evaluation.corruptions import corruption_names

        corruption_names(value)  # raises ValueError naming the unknown one
        return value

    @field_validator("severities")
    @classmethod
    def _severities(cls, value: list[int]) -> list[int]:
        if not value or any(s not in (1, 2, 3, 4, 5) for s in value):
            raise ValueError("severities are 1 to 5")
        return value


class SliceTest(StrictModel):
    """No slice of the validation images may score far below the whole set."""

    max_gap: float | None = Field(None, ge=0.0)  # default: slices.max_gap


class TestsConfig(StrictModel):
    """``cvtrain test``: invariance and counterfactual tests a model must pass, each with its tolerance."""

    score_threshold: float | None = Field(None, ge=0.0, le=1.0)  # detections at or above count; default eval's
    match_iou: float = Field(0.5, gt=0.0, le=1.0)  # a detection is "the same object" at this IoU or more
    seed: int = 0  # which background each image gets, corruption noise
    flip: FlipTest | None = None
    brightness: BrightnessTest | None = None
    background: BackgroundTest | None = None
    removal: RemovalTest | None = None
    corruption: CorruptionTest | None = None
    slices: SliceTest | None = None

    def enabled(self) -> list[str]:
        """Names of the tests that run, in a fixed order."""
        return [name for name in ("flip", "brightness", "background", "removal", "corruption", "slices")
                if getattr(self, name) is not None]


class SlicesConfig(StrictModel):
    """Per-slice scores in ``cvtrain evaluate``: the worst slice and its gap to the whole set."""

    attributes: str | None = None  # CSV relative to data.root: a file_name column, one column per attribute
    built_in: list[BuiltInSlice] = Field(
        default_factory=lambda: ["object_size", "object_count", "brightness", "image_size"])
    min_images: int = Field(5, ge=1)  # smaller slices are listed, never flagged
    max_gap: float = Field(0.1, ge=0.0)  # flag a slice scoring more than this below the whole set (0.1: 10 points)
