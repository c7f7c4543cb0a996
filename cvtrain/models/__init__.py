"""Model builders over torchvision, chosen by name.

``MODELS`` is a plain dict filled by ``register_model``; an unknown name lists
the known ones (``ModelConfig`` validates it at load time). Pretrained weights
come from a torchvision weights name (downloaded once into the torch hub cache)
or a local file; offline, a clear error says where to put the file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from cvtrain.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str  # detection | instance_segmentation | semantic_segmentation
    builder: Callable[..., nn.Module]
    fixed_size: bool = False  # SSD-style models that resize to a square


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, task: str, builder: Callable[..., nn.Module], **options: Any) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = ModelEntry(name, task, builder, **options)


_detection = torchvision.models.detection
for _name in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
              "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
              "fcos_resnet50_fpn"):
    register_model(_name, "detection", getattr(_detection, _name))
register_model("ssd300_vgg16", "detection", _detection.ssd300_vgg16, fixed_size=True)
register_model("ssdlite320_mobilenet_v3_large", "detection", _detection.ssdlite320_mobilenet_v3_large, fixed_size=True)
for _name in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
    register_model(_name, "instance_segmentation", getattr(_detection, _name))
_segmentation = torchvision.models.segmentation
for _name in ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "fcn_resnet50",
              "fcn_resnet101", "lraspp_mobilenet_v3_large"):
    register_model(_name, "semantic_segmentation", getattr(_segmentation, _name))


def build_model(model_config, num_classes: int, image_size: int) -> nn.Module:
    """Build the model named in ``model_config`` for ``num_classes`` foreground classes.

    Detection models get ``num_classes + 1`` outputs (background is 0); their
    internal resize is set so the longest side is ``image_size``.
    """
    entry = MODELS[model_config.name]
    kwargs: dict[str, Any] = dict(model_config.options)
    kwargs["weights_backbone"] = _backbone_weights(entry, model_config.backbone_weights)
    if entry.task == "semantic_segmentation":
        kwargs["num_classes"] = num_classes
    else:
        kwargs["num_classes"] = num_classes + 1
        if model_config.trainable_backbone_layers is not None and model_config.backbone_weights:
            # torchvision applies it with backbone weights; with full-model weights freeze_backbone does.
            kwargs["trainable_backbone_layers"] = model_config.trainable_backbone_layers
        if not entry.fixed_size:
            kwargs.setdefault("min_size", image_size)
            kwargs.setdefault("max_size", image_size)
    try:
        model = entry.builder(weights=None, **kwargs)
    except TypeError as error:
        raise ConfigError(f"model.options rejected by {entry.name}: {error}", hint="remove or rename that option") from None
    if entry.fixed_size:
        model.transform.min_size = (image_size,)
        model.transform.max_size = image_size
        model.transform.fixed_size = (image_size, image_size)
    if model_config.weights:
        load_pretrained(model, entry, model_config.weights)
        if entry.task != "semantic_segmentation":
            freeze_backbone(model, model_config.trainable_backbone_layers)
    return model


def freeze_backbone(model: nn.Module, trainable_layers: int | None) -> None:
    """Prepare a pretrained detector for fine-tuning the way torchvision's builders do.

    Models are built without weights (so nothing is downloaded) and loaded
    afterwards, which skips torchvision's own preparation: BatchNorm statistics
    of the backbone are frozen (small detection batches would ruin them) and
    only the last ``trainable_layers`` stages train (default 3, as torchvision).
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
        stages = [0] + [i for i, (_, child) in enumerate(children) if getattr(child, "_is_cn", False)] + [len(children) - 1]
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


def _weights_enum(builder: Callable, name: str, what: str):
    try:
        enum = torchvision.models.get_model_weights(builder)
    except (ValueError, KeyError):
        return None
    if name not in enum.__members__:
        raise ConfigError(f"unknown {what} {name!r}", hint=f"torchvision names: {', '.join(enum.__members__)}; or give a local file path")
    return enum[name]


def _backbone_weights(entry: ModelEntry, value: str | None):
    if value is None:
        return None
    if Path(value).suffix in (".pth", ".pt", ".ckpt"):
        raise ConfigError(f"model.backbone_weights={value!r}: local backbone files are read from the torch hub cache",
                          hint=f"copy the file to {Path(torch.hub.get_dir()) / 'checkpoints'} under its torchvision file name "
                               "and give the torchvision name (e.g. IMAGENET1K_V1)")
    import inspect

    annotation = inspect.signature(entry.builder).parameters["weights_backbone"].annotation
    enum = next((arg for arg in getattr(annotation, "__args__", (annotation,)) if hasattr(arg, "__members__")), None)
    if enum is None or value not in enum.__members__:
        raise ConfigError(f"unknown backbone weights {value!r} for {entry.name}",
                          hint=f"choose one of: {', '.join(enum.__members__) if enum else 'none'}")
    weights = enum[value]
    _ensure_cached(weights.url, "model.backbone_weights")
    return weights


def _ensure_cached(url: str, key: str) -> Path:
    """Download ``url`` into the torch hub cache unless it is there; offline, say how to supply it."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as error:  # offline machines fail with URLError, proxies with others
        raise ConfigError(
            f"{key}: cannot download {url} ({type(error).__name__})",
            hint=f"on a machine with internet, download it and copy it to {target}, or set {key} to a local .pth file",
        ) from None
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A model state dict from a ``.pth`` or a Lightning ``.ckpt``; never executes code from the file."""
    if not path.is_file():
        raise CheckpointError("weights file not found", where=str(path), hint="check model.weights")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot load weights safely: {str(error).splitlines()[0][:200]}", where=str(path),
                              hint="give a state dict saved with torch.save(model.state_dict()) or a cvtrain checkpoint") from None
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()}
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError("not a state dict of tensors", where=str(path), hint="save with torch.save(model.state_dict())")
    return payload


def load_pretrained(model: nn.Module, entry: ModelEntry, weights: str) -> None:
    """Load weights into ``model``, skipping tensors whose shape differs (e.g. a class head for COCO's 91 classes)."""
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".ckpt") or path.exists():
        state = read_state_dict(path)
    else:
        enum_value = _weights_enum(entry.builder, weights, "model.weights")
        state = torch.load(_ensure_cached(enum_value.url, "model.weights"), map_location="cpu", weights_only=True)
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(compatible))
    if not compatible:
        raise CheckpointError(f"no tensor of {weights} fits {entry.name}", where=str(weights),
                              hint="the file belongs to another architecture")
    model.load_state_dict(compatible, strict=False)
    missing = sorted(set(own) - set(compatible))
    log.info("loaded %d tensors from %s; %d re-initialised (e.g. %s)", len(compatible), weights, len(missing),
             ", ".join(missing[:3]) or "none")
    if skipped:
        log.info("skipped %d tensors of another shape (class heads): %s", len(skipped), ", ".join(skipped[:4]))
