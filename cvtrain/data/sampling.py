"""The training order and each item's augmentation as functions of ``(train.seed, epoch)``.

``EpochSampler`` yields ``(position, item_seed)`` pairs and ``SeededItems``
reseeds the augmentation per item, so the batches are the same in any worker,
under DDP, and after a resume mid-epoch (the sampler starts where the
checkpoint left off). ``SeededItems`` also implements
``data.on_unreadable: skip``.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from cvtrain.errors import DataError

log = logging.getLogger("cvtrain")


def mix_seed(*numbers: int) -> int:
    """A well-spread 63-bit seed from integers, so (seed, epoch, ...) tuples give unrelated streams."""
    return int(np.random.SeedSequence([n % 2**64 for n in numbers]).generate_state(1, np.uint64)[0] >> 1)


class EpochSampler(DistributedSampler):
    """Shuffled positions paired with per-item augmentation seeds, both a function of ``(seed, epoch)``.

    Yields ``(position, item_seed)`` for ``SeededItems``. It is a
    ``DistributedSampler`` so Lightning keeps it under DDP (each rank takes its
    share of the same permutation). After a resume mid-epoch, the first epoch
    starts where the checkpoint left off instead of at its first batch.
    """

    def __init__(self, dataset: Dataset, *, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 resume: dict[str, int] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.resume = dict(resume) if resume else None
        if self.resume:
            self.epoch = self.resume["epoch"]
        # DataLoader workers are seeded from this generator: per epoch, not per process history.
        self.generator = torch.Generator().manual_seed(mix_seed(seed, self.epoch, 1))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(mix_seed(self.seed, epoch, 1))

    def __iter__(self):
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()
        pairs = list(zip(order, seeds))
        pairs += pairs[: self.total_size - count]  # pad as DistributedSampler does, so ranks get equal shares
        mine = pairs[self.rank: self.total_size: self.num_replicas]
        start = 0
        if self.resume is not None:
            if self.resume["epoch"] == self.epoch:
                start = self.resume["skip"]
            self.resume = None
        return iter(mine[start:])

    def progress(self, trainer: Any) -> dict[str, int]:
        """Which epoch's order is in use and how many of its items training has consumed (the ``resume`` argument)."""
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return {"epoch": self.epoch + 1, "skip": 0}
        return {"epoch": self.epoch, "skip": done * self.batch_size}


class SeededItems(Dataset):
    """Items fetched by ``(position, seed)``: the augmentation is reseeded per item, so it is the same in any worker.

    With ``on_unreadable="skip"`` an item whose file cannot be read (``DataError``)
    is replaced by the next readable one and recorded in ``record`` (JSON lines).
    """

    def __init__(self, dataset: Dataset, *, on_unreadable: str = "stop", record: Path | None = None):
        self.dataset = dataset
        self.on_unreadable = on_unreadable
        self.record = record

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        position, seed = key
        transform = getattr(self.dataset, "transform", None)
        for attempt in range(len(self.dataset)):
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)
            try:
                return self.dataset[(position + attempt) % len(self.dataset)]
            except DataError as error:
                if self.on_unreadable != "skip":
                    raise
                self._skipped(error)
        raise DataError("every training item is unreadable", where=str(self.record) if self.record else None,
                        hint="the dataset's files are gone or broken")

    def _skipped(self, error: DataError) -> None:
        log.warning(f"skipped unreadable item: {error.one_line()}")
        if self.record is not None:
            entry = {"file": error.where, "error": error.message, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with open(self.record, "a", encoding="utf-8") as handle:  # append: workers may write at once
                handle.write(json.dumps(entry) + "\n")


def replicas(trainer: Any) -> dict[str, int]:
    """``num_replicas`` and ``rank`` for ``EpochSampler`` (one process outside a trainer)."""
    if trainer is None:
        return {"num_replicas": 1, "rank": 0}
    return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}


def quiet_resume_warning() -> None:
    """Lightning warns that a mid-epoch resume repeats data unless the loader is stateful; ours resumes in place."""
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
