"""The LightningDataModule: splits of one index, datasets, loaders."""
from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from cvtrain.config import Config
from cvtrain.data.dataset import DetectionDataset, collate
from cvtrain.data.formats.masks import ignore_value
from cvtrain.data.index import DatasetIndex
from cvtrain.data.segmentation import SegmentationDataset
from cvtrain.data.transforms import build_eval_transform, build_train_transform
from cvtrain.errors import DataError


def build_dataset(config: Config, index: DatasetIndex, *, train: bool) -> Dataset:
    """The torch Dataset for ``config.task`` over ``index``, with the spec's transforms."""
    size = config.train.image_size
    if config.task in ("detection", "instance_segmentation"):
        transform = build_train_transform(config.augment, size) if train else build_eval_transform(config.augment, size)
        return DetectionDataset(index, transform, with_masks=config.task == "instance_segmentation")
    if config.task == "semantic_segmentation":
        fill = ignore_value(index.num_classes, index.ignore_index)  # padding is not scored
        transform = (build_train_transform(config.augment, size, with_boxes=False, mask_fill=fill) if train
                     else build_eval_transform(config.augment, size, with_boxes=False))
        return SegmentationDataset(index, transform, palette=config.data.palette, keep_original=not train)
    raise DataError(f"no dataset for task {config.task!r}")


class DataModule(pl.LightningDataModule):
    """Train and validation loaders over the splits named in ``data.train_split`` / ``data.val_split``."""

    def __init__(self, config: Config, index: DatasetIndex, *, train: bool = True):
        super().__init__()
        self.config = config
        self.index = index
        self.train_index = self._split(config.data.train_split) if train else None
        self.val_index = self._split(config.data.val_split)

    @classmethod
    def for_evaluation(cls, config: Config, index: DatasetIndex) -> "DataModule":
        """Only the split named by ``data.val_split`` is needed."""
        return cls(config, index, train=False)

    def _split(self, name: str) -> DatasetIndex:
        part = self.index.split(name)
        if not part.images:
            known = ", ".join(f"{n} ({len(self.index.split(n).images)} images)" for n in self.index.split_names) or "none"
            raise DataError(f"split '{name}' has no images; splits found: {known}", where=str(self.index.root),
                            hint="set data.splits, data.val_fraction, or data.train_split/val_split")
        return part

    def _loader(self, dataset: Dataset, *, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        workers = self.config.train.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                          persistent_workers=workers > 0, pin_memory=False, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        dataset = build_dataset(self.config, self.train_index, train=True)
        batch_size = self.config.train.batch_size
        # A last batch of one image breaks BatchNorm in DeepLabV3's image pooling; torchvision's
        # segmentation reference drops the incomplete batch too.
        drop_last = self.config.task == "semantic_segmentation" and len(dataset) > batch_size
        return self._loader(dataset, shuffle=True, batch_size=batch_size, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(build_dataset(self.config, self.val_index, train=False), shuffle=False,
                            batch_size=self.config.eval.batch_size or self.config.train.batch_size)
