"""Model builders over torchvision, chosen by name.

``MODELS`` is a plain dict filled by ``register_model``, which refuses a
duplicate name; an unknown name lists the known ones (``ModelConfig`` validates
it at load time). ``build_model`` makes the model a spec names, with the layers
that fine-tuning freezes already frozen; ``engine.checkpoints.load_pretrained``
then fills it with pretrained weights.
"""
from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvtrain.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, task, torchvision builder, and whether it resizes to a fixed square."""

    name: str
    task: str  # detection | instance_segmentation | semantic_segmentation
    source: Callable[..., nn.Module] | str  # the builder, or "module:function", imported when first used
    fixed_size: bool = False  # SSD-style models that resize to a square
    # BatchNorm on 1x1 maps (SSDlite's extra layers, DeepLabV3's image pooling) needs two images per batch in training
    min_batch: int = 1
    # SSD300's last layers are unpadded 3x3 convolutions: below 268 px their input is smaller than the kernel
    min_image_size: int = 32

    @property
    def builder(self) -> Callable[..., nn.Module]:
        """The builder function (importing its module: names and tasks are known without torchvision)."""
        return self.source if callable(self.source) else pkgutil.resolve_name(self.source)


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, task: str, builder: Callable[..., nn.Module] | str, **options: Any) -> None:
    """Add a model under ``name`` for ``task`` (``detection``, ``instance_segmentation``, ``semantic_segmentation``).

    ``builder`` is a function taking ``weights=None, num_classes=...`` and returning the model, or its
    ``"module:function"`` name, imported when the model is first built.

    Raises:
        ValueError: ``name`` is already registered.
    """
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = ModelEntry(name, task, builder, **options)


# By name, so that validating a spec imports no torchvision (``cvtrain --help`` and config errors answer at once).
_detection = "torchvision.models.detection:"
for _name in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
              "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
              "fcos_resnet50_fpn"):
    register_model(_name, "detection", _detection + _name)
register_model("ssd300_vgg16", "detection", _detection + "ssd300_vgg16", fixed_size=True, min_image_size=268)
register_model("ssdlite320_mobilenet_v3_large", "detection", _detection + "ssdlite320_mobilenet_v3_large",
               fixed_size=True, min_batch=2)
for _name in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
    register_model(_name, "instance_segmentation", _detection + _name)
_segmentation = "torchvision.models.segmentation:"
for _name in ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"):
    register_model(_name, "semantic_segmentation", _segmentation + _name, min_batch=2)
for _name in ("fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large"):
    register_model(_name, "semantic_segmentation", _segmentation + _name)


def build_model(model_config: Any, num_classes: int, image_size: int) -> nn.Module:
    """Build the model named in ``model_config`` (the spec's ``model`` section) for ``num_classes`` classes.

    Detection models get ``num_classes + 1`` outputs (background is 0); their
    internal resize is set so the longest side is ``image_size``. With
    ``model_config.weights`` set, a detector's backbone is prepared for
    fine-tuning (``freeze_backbone``); the weights themselves are loaded by
    ``engine.checkpoints.load_pretrained``, so nothing is downloaded here except
    ``backbone_weights``, which torchvision's builder loads itself.

    Returns:
        The ``nn.Module``, randomly initialised except for backbone weights.

    Raises:
        ConfigError: ``model.options`` that the torchvision builder rejects, or unknown backbone weights.
    """
    from cvtrain.models.freezing import freeze_backbone
    from cvtrain.models.weights import backbone_weights

    entry = MODELS[model_config.name]
    kwargs: dict[str, Any] = dict(model_config.options)
    kwargs["weights_backbone"] = backbone_weights(entry.name, entry.builder, model_config.backbone_weights)
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
        raise ConfigError(f"model.options rejected by {entry.name}: {error}",
                          hint="remove or rename that option") from None
    if entry.fixed_size:
        model.transform.min_size = (image_size,)
        model.transform.max_size = image_size
        model.transform.fixed_size = (image_size, image_size)
    if model_config.weights and entry.task != "semantic_segmentation":
        freeze_backbone(model, model_config.trainable_backbone_layers)
    return model


