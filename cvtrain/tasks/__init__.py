"""LightningModules by task. Each takes its split indexes through ``prepare``; checkpoints are read by the engine."""
from __future__ import annotations

import pytorch_lightning as pl

from cvtrain.tasks.detection import DetectionTask
from cvtrain.tasks.instance import InstanceSegmentationTask
from cvtrain.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[pl.LightningModule]] = {
    "detection": DetectionTask,
    "instance_segmentation": InstanceSegmentationTask,
    "semantic_segmentation": SegmentationTask,
}
