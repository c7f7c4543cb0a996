"""What every task shares: optimizer and schedule from the spec, gradient clipping, the step's losses kept for
logging, gathering predictions under DDP."""
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

    The optimizer is PyTorch's fused implementation where the parameters' device has one (CUDA, CPU): one kernel
    per step, and it takes ``found_inf`` (a device flag set by ``GradScaler`` or ``engine.callbacks.DivergenceGuard``)
    and skips the update on the device when it is set, so that no step has to wait for the GPU to learn whether
    its gradients were finite.
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
    fused = fused_supported(parameters)
    if spec.name == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                                    fused=fused)
        if fused and spec.momentum:
            # Fused SGD makes its momentum buffers with empty_like at the first step and fills them in the
            # kernel, which a skipped first step (found_inf) never runs: the second step would read garbage.
            # Zeros are what the first step would have started from (buffer = gradient either way).
            for parameter in parameters:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
        return optimizer
    if spec.name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=spec.weight_decay, fused=fused)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=spec.weight_decay, fused=fused)


def fused_supported(parameters: list[torch.nn.Parameter]) -> bool | None:
    """True when every parameter is a floating-point tensor on a device with fused optimizer kernels."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch without the list: the default implementation
        return None
    if parameters and all(p.device.type in devices and p.is_floating_point() for p in parameters):
        return True
    return None


def clip_gradients(module: pl.LightningModule, optimizer: torch.optim.Optimizer,
                   gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None) -> None:
    """Lightning's ``configure_gradient_clipping`` hook, for fused optimizers too.

    Under AMP Lightning refuses to clip for an optimizer that unscales in its own step (a fused one), since the
    gradients it would clip are still multiplied by the loss scale. Here they are unscaled first, as PyTorch's
    AMP recipe does (``scaler.unscale_(optimizer)``, then clip, then ``scaler.step``), and clipped by norm; the
    scaler's ``found_inf`` then still reaches the fused step. Other optimizers go through Lightning.
    """
    if not gradient_clip_val:
        return
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        return
    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)


def keep_step_losses(module: pl.LightningModule, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
    """Keep this step's loss and its terms on the device for ``engine``'s training log.

    Nothing is read here: ``self.log`` would read every value with its own ``.item()`` when it is logged and the
    progress bar shown, each a wait for the GPU. The training log reads all of them, with the loss scale and the
    divergence flags, in one transfer on the steps that log (``trainer.log_every_n_steps``).
    """
    module.step_losses = {"train/loss": loss.detach(), **{f"train/{name}": value.detach()
                                                          for name, value in terms.items()}}


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
