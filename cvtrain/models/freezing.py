"""Preparing a pretrained detector for fine-tuning, as torchvision's builders do when they load weights."""
from __future__ import annotations

from torch import nn


def freeze_backbone(model: nn.Module, trainable_layers: int | None) -> None:
    """Prepare a pretrained detector for fine-tuning the way torchvision's builders do.

    Models are built without weights (so nothing is downloaded) and loaded
    afterwards, which skips torchvision's own preparation: BatchNorm statistics
    of the backbone are frozen (small detection batches would ruin them) and
    only the last ``trainable_layers`` stages train (default 3, as torchvision).
    Freezing before loading gives the same model as loading first: the frozen
    layers keep the BatchNorm buffers' names, and loading fills them.
    """
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        return  # SSD-style models: torchvision trains every layer as well
    trainable = 3 if trainable_layers is None else trainable_layers
    children = list(body.named_children())
    if any(name == "layer4" for name, _ in children):  # ResNet
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable >= 5 else [])
        for name, parameter in body.named_parameters():
            if not any(name.startswith(prefix) for prefix in train):
                parameter.requires_grad_(False)
    else:  # MobileNetV3: stages end where a block changes resolution (``_is_cn``)
        stages = (
            [0] + [i for i, (_, child) in enumerate(children) if getattr(child, "_is_cn", False)] + [len(children) - 1]
        )
        trainable = min(trainable, len(stages))
        freeze_before = len(children) if trainable == 0 else stages[len(stages) - trainable]
        for _, child in children[:freeze_before]:
            child.requires_grad_(False)
    _freeze_batchnorm(body)


def _freeze_batchnorm(module: nn.Module) -> None:
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


