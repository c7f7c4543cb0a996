"""What every task shares: optimizer and schedule from the spec, gathering predictions under DDP."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from cvtrain.config import Config

log = logging.getLogger("cvtrain")


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: Config, world_size: int, *,
                    verbose: bool = False) -> torch.optim.Optimizer:
    """The optimizer named in ``train.optimizer``.

    With ``scale_lr_with_batch`` the linear scaling rule applies:
    ``lr * (batch_size * world_size * accumulate_grad_batches) / base_batch_size``
    (Goyal et al., 2017); without it the lr is used as given whatever the global batch.
    """
    spec = config.train.optimizer
    lr = spec.lr
    if spec.scale_lr_with_batch:
        global_batch = config.train.batch_size * world_size * config.train.accumulate_grad_batches
        lr = lr * global_batch / spec.base_batch_size
        if verbose:
            log.info(f"lr {spec.lr:g} scaled to {lr:g} for a global batch of {global_batch} "
                     f"(train.optimizer.base_batch_size {spec.base_batch_size})")
    parameters = [p for p in parameters if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=spec.weight_decay)


def lr_factor(step: int, total_steps: int, schedule) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear warmup, then the named decay."""
    total = max(total_steps, 1)
    warmup = min(schedule.warmup_steps, total // 2)
    factor = 1.0
    if step < warmup:
        alpha = step / warmup
        factor = schedule.warmup_factor * (1 - alpha) + alpha
    progress = min(step / total, 1.0)
    if schedule.name == "cosine":
        shape = schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.name == "multistep":
        shape = schedule.gamma ** sum(progress >= milestone for milestone in schedule.milestones)
    else:
        shape = 1.0
    return factor * shape


def configure_optimization(module: pl.LightningModule, config: Config) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` for every task: the spec's optimizer, stepped per batch by the schedule."""
    optimizer = build_optimizer(module.parameters(), config, module.trainer.world_size,
                                verbose=module.trainer.is_global_zero)
    total = int(module.trainer.estimated_stepping_batches)
    schedule = config.train.scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, schedule))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def gather_by_image(items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Collect ``(image_id, payload)`` pairs from every rank, each image exactly once.

    The distributed sampler pads the dataset so every rank gets the same number
    of batches; the padding repeats images, which must not count twice.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[tuple[int, Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, items)
        items = [item for part in gathered for item in (part or [])]
    seen: dict[int, Any] = {}
    for image_id, payload in items:
        seen.setdefault(image_id, payload)
    return sorted(seen.items(), key=lambda pair: pair[0])
