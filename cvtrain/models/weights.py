"""Where pretrained weights come from: torchvision weights names, the torch hub cache, local files.

Downloads go into the torch hub cache once; offline, the error says which file
to copy where, or to set the key to a local file or to ``null``. Reading the
files is ``engine.checkpoints``'s job.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from cvtrain.errors import CheckpointError, ConfigError


def _weights_enum(builder: Callable, name: str, what: str):
    """The torchvision weights enum member ``name`` of ``builder`` (None when it has no weights enum)."""
    try:
        enum = torchvision.models.get_model_weights(builder)
    except (ValueError, KeyError):
        return None
    if name not in enum.__members__:
        raise ConfigError(f"unknown {what} {name!r}",
                          hint=f"torchvision names: {', '.join(enum.__members__)}; or give a local file path")
    return enum[name]


def backbone_weights(name: str, builder: Callable, value: str | None):
    """The torchvision enum of ``model.backbone_weights`` for model ``name``, downloaded into the hub cache.

    Raises:
        ConfigError: a local file (the builders read only the cache), an unknown name, or a failed download.
    """
    if value is None:
        return None
    if Path(value).suffix in (".pth", ".pt", ".ckpt"):
        raise ConfigError(f"model.backbone_weights={value!r}: local backbone files are read from the torch hub cache",
                          hint=f"copy the file to {Path(torch.hub.get_dir()) / 'checkpoints'} under its torchvision "
                               "file name and give the torchvision name (e.g. IMAGENET1K_V1)")
    import inspect

    annotation = inspect.signature(builder).parameters["weights_backbone"].annotation
    enum = next((arg for arg in getattr(annotation, "__args__", (annotation,)) if hasattr(arg, "__members__")), None)
    if enum is None or value not in enum.__members__:
        raise ConfigError(f"unknown backbone weights {value!r} for {name}",
                          hint=f"choose one of: {', '.join(enum.__members__) if enum else 'none'}")
    weights = enum[value]
    ensure_cached(weights.url, "model.backbone_weights")
    return weights


def ensure_cached(url: str, key: str) -> Path:
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
            hint=f"on a machine with internet, download it and copy it to {target}, set {key} to a local .pth file, "
                 f"or set {key}=null to train without it",
        ) from None
    return target


def pretrained_file(model_name: str, builder: Callable, weights: str) -> Path:
    """The file behind ``model.weights``: a local path as given, or torchvision's file in the hub cache.

    Args:
        model_name: the registered model's name (for messages).
        builder: its torchvision builder, which knows its weights names.
        weights: a torchvision weights name (``DEFAULT``, ``COCO_V1``) or a path.

    Raises:
        ConfigError: an unknown weights name, or a download that failed.
        CheckpointError: a local weights file (``.pth``, ``.pt``, ``.ckpt``) that does not exist.
    """
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".ckpt") or path.exists():
        if not path.is_file():
            raise CheckpointError("weights file not found", where=str(path),
                                  hint="check model.weights, or set model.weights=null to train from scratch")
        return path
    enum_value = _weights_enum(builder, weights, "model.weights")
    if enum_value is None:
        raise ConfigError(f"model.weights={weights!r}: {model_name} has no torchvision weights",
                          hint="give a local .pth/.ckpt file, or model.weights=null to train from scratch")
    return ensure_cached(enum_value.url, "model.weights")
