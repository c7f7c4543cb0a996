"""The spec's ``audit`` section: how ``cvtrain audit`` trains its fold models and judges the labels."""
from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from cvtrain.config.base import StrictModel


class AuditConfig(StrictModel):
    """Folds, the short schedule of the fold models, and the thresholds of the label-error scores.

    Scores are in [0, 1]; ``docs/audit.md`` explains each kind and which key tunes it.
    """

    # the fold models
    folds: int = Field(4, ge=2, le=20)  # K: each image is predicted by the model trained on the other K-1 folds
    fold_seed: int = 0  # seeds the assignment of images to folds
    max_epochs: int | None = Field(None, gt=0)  # short schedule of each fold model (default: train.max_epochs)
    max_steps: int | None = Field(None, gt=0)  # optimizer steps per fold model (default: no limit)
    # more spec keys for the fold models, e.g. {"train.optimizer.lr": 0.01}
    overrides: dict[str, Any] = Field(default_factory=dict)
    # predictions
    min_score: float = Field(0.05, ge=0.0, lt=1.0)  # predictions scoring less are not used (nor written)
    batch_size: int = Field(8, gt=0)  # images per prediction batch
    # matching predictions to annotations (box IoU; mask IoU for instance segmentation)
    match_iou: float = Field(0.5, gt=0.0, le=1.0)  # a prediction this close supports (or contradicts) the class
    near_iou: float = Field(0.1, gt=0.0, le=1.0)  # a same-class prediction this close means 'badly located'
    missing_iou: float = Field(0.3, gt=0.0, le=1.0)  # a prediction overlapping no annotation this much: 'missing'
    # calibration: a model less sure than this of a class where it is annotated has not learned the class
    min_threshold: float = Field(0.2, gt=0.0, le=1.0)  # per-class thresholds t_c are at least this
    # the report
    flag_threshold: float = Field(0.5, gt=0.0, le=1.0)  # records scoring at least this are flagged
    top: int = Field(48, ge=0)  # images drawn in audit.html's gallery
    min_region_pixels: int = Field(64, ge=1)  # semantic segmentation: smaller connected regions are not scored

    @model_validator(mode="after")
    def _ordered_ious(self) -> AuditConfig:
        if self.near_iou >= self.match_iou:
            raise ValueError(f"near_iou ({self.near_iou}) must be below match_iou ({self.match_iou})")
        return self
