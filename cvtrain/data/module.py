"""The LightningDataModule: splits of one index, datasets, loaders."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from cvtrain.config import Config
from cvtrain.data.dataset import DetectionDataset, collate
from cvtrain.data.files import ignore_value
from cvtrain.data.index import DatasetIndex
from cvtrain.data.sampling import EpochSampler, SeededItems, quiet_resume_warning, replicas
from cvtrain.data.segmentation import SegmentationDataset
from cvtrain.data.transforms import build_eval_transform, build_train_transform
from cvtrain.data.workers import (
    MAX_AUTO_WORKERS,
    WorkerInit,
    WorkerLoader,
    auto_num_workers,
    available_cores,
)
from cvtrain.errors import DataError
from cvtrain.models.registry import MODELS


def check_splits(config: Config, index: DatasetIndex, processes: int = 1) -> None:
    """Refuse, before training, a spec whose training or validation split is empty, or whose training split gives
    ``processes`` processes fewer images each than the model's BatchNorm layers need per batch. Counts only: no
    split is built.

    Raises:
        DataError: one line naming the split (and the model).
    """
    counts = Counter(image.split for image in index.images)
    for name in (config.data.train_split, config.data.val_split):
        if not counts[name]:
            raise _empty_split(index, name, counts)
    need = MODELS[config.model.name].min_batch
    images = counts[config.data.train_split]
    if need > 1 and -(-images // processes) < need:
        per = f"{images} training image(s)" + (f" over {processes} processes" if processes > 1 else "")
        raise DataError(f"split '{config.data.train_split}' has {per}; {config.model.name} has BatchNorm layers that "
                        f"need at least {need} images per batch in training", where=str(index.root),
                        hint="add training images, or lower data.val_fraction")


def _empty_split(index: DatasetIndex, name: str, counts: Counter | None = None) -> DataError:
    counts = counts if counts is not None else Counter(image.split for image in index.images)
    known = ", ".join(f"{n} ({counts[n]} images)" for n in index.split_names) or "none"
    return DataError(f"split '{name}' has no images; splits found: {known}", where=str(index.root),
                     hint="set data.splits, data.val_fraction, or data.train_split/val_split")


def build_dataset(config: Config, index: DatasetIndex, *, train: bool) -> Dataset:
    """The torch Dataset for ``config.task`` over ``index``, with the spec's transforms."""
    size = config.train.image_size
    if config.task in ("detection", "instance_segmentation"):
        transform = build_train_transform(config.augment, size) if train else build_eval_transform(config.augment, size)
        return DetectionDataset(index, transform, with_masks=config.task == "instance_segmentation", decode_size=size)
    if config.task == "semantic_segmentation":
        fill = ignore_value(index.num_classes, index.ignore_index)  # padding is not scored
        transform = (build_train_transform(config.augment, size, with_boxes=False, mask_fill=fill) if train
                     else build_eval_transform(config.augment, size, with_boxes=False))
        return SegmentationDataset(index, transform, palette=config.data.palette, keep_original=not train)
    raise DataError(f"no dataset for task {config.task!r}")


class DataModule(pl.LightningDataModule):
    """Train and validation loaders over the splits named in ``data.train_split`` / ``data.val_split``.

    The training order and augmentation follow ``(train.seed, epoch)`` and the
    position within the epoch is saved in checkpoints, so a resumed run sees the
    batches an uninterrupted one would have (``cvtrain.data.sampling``).
    """

    train_sampler: EpochSampler | None = None
    resume_order: dict[str, int] | None = None  # from a checkpoint, for the next train loader
    unreadable_log: Path | None = None  # where data.on_unreadable=skip records what it skipped

    def __init__(self, config: Config, index: DatasetIndex, *, train: bool = True):
        super().__init__()
        self.config = config
        self.index = index
        self.train_index = self._split(config.data.train_split) if train else None
        self.val_index = self._split(config.data.val_split)

    @classmethod
    def for_evaluation(cls, config: Config, index: DatasetIndex) -> DataModule:
        """Only the split named by ``data.val_split`` is needed."""
        return cls(config, index, train=False)

    def _split(self, name: str) -> DatasetIndex:
        part = self.index.split(name)
        if not part.images:
            raise _empty_split(self.index, name)
        return part

    @property
    def num_workers(self) -> int:
        """``train.num_workers``, with ``auto`` resolved for the processes this trainer runs on one machine."""
        workers = self.config.train.num_workers
        if workers != "auto":
            return workers
        return auto_num_workers(self.trainer.num_devices if self.trainer is not None else 1)

    def _loader(self, dataset: Dataset, *, batch_size: int, drop_last: bool = False,
                sampler: EpochSampler | None = None) -> DataLoader:
        workers = self.num_workers
        # Workers ignore Ctrl-C, SIGTERM and SIGUSR1: the main process stops the run (engine.stopping).
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Pinned (page-locked) batches copy to a GPU asynchronously; Lightning copies with non_blocking=True.
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return WorkerLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                            persistent_workers=workers > 0, pin_memory=pin, drop_last=drop_last,
                            worker_init_fn=WorkerInit(rank) if workers else None,
                            generator=sampler.generator if sampler is not None else None)

    def describe_workers(self) -> str:
        """One line on the data loaders' workers, for the start of training."""
        workers = self.num_workers
        if self.config.train.num_workers != "auto":
            return f"data loader: {workers} worker process(es) (train.num_workers)"
        processes = self.trainer.num_devices if self.trainer is not None else 1
        return (f"data loader: {workers} worker process(es) (train.num_workers auto: {available_cores()} cores "
                f"for {processes} training process(es), one kept for each, at most {MAX_AUTO_WORKERS})")

    def train_dataloader(self) -> DataLoader:
        dataset = build_dataset(self.config, self.train_index, train=True)
        batch_size = self.config.train.batch_size
        self.train_sampler = EpochSampler(dataset, seed=self.config.train.seed, batch_size=batch_size,
                                          resume=self.resume_order, **replicas(self.trainer))
        # A last batch of one image breaks BatchNorm on 1x1 maps (DeepLabV3's image pooling, SSDlite's extra
        # layers): such a batch is dropped. torchvision's segmentation reference drops every incomplete batch.
        per_rank = len(self.train_sampler)
        drop_last = (self.config.task == "semantic_segmentation" and len(dataset) > batch_size) or (
            0 < per_rank % batch_size < MODELS[self.config.model.name].min_batch and per_rank > batch_size)
        self.resume_order = None
        dataset = SeededItems(dataset, on_unreadable=self.config.data.on_unreadable, record=self.unreadable_log)
        return self._loader(dataset, batch_size=batch_size, drop_last=drop_last, sampler=self.train_sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(build_dataset(self.config, self.val_index, train=False),
                            batch_size=self.config.eval.batch_size or self.config.train.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints by Lightning: the epoch whose order is in use and how far training got in it."""
        if self.train_sampler is None or self.trainer is None:
            return {}
        return {"train_order": self.train_sampler.progress(self.trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_order = state_dict.get("train_order")
        if self.resume_order:
            quiet_resume_warning()
