"""Typed, validated specs.

A spec is YAML on disk and a ``Config`` in memory. Precedence, lowest first:
schema defaults < spec file < ``--data`` dataset file < ``key=value`` overrides
< explicit API/CLI arguments. YAML is read with ``yaml.safe_load`` only, and an
unknown or ill-typed key fails at load time naming the file, the line, the key
and the closest valid key.

Relative paths inside a file (``data.root``) are resolved against that file's
folder, so a spec works from any working directory; relative paths given as
overrides are resolved against the working directory.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

from cvtrain.errors import ConfigError

Task = Literal["detection", "instance_segmentation", "semantic_segmentation"]


class StrictModel(BaseModel):
    # NaN and inf are refused everywhere: a NaN learning rate is never what anyone meant.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class SplitConfig(StrictModel):
    """Where one split's annotations and images are; paths relative to ``data.root``."""

    annotations: str | None = None  # COCO JSON file, or VOC XML folder
    images: str | None = None  # image folder (defaults to data.images)
    masks: str | None = None  # mask folder for semantic segmentation
    list: str | None = None  # text file of image names (one per line) or CSV with a 'filename' column


class DataConfig(StrictModel):
    """A dataset: its format, where it lives, its classes and how it is split."""

    format: str
    root: Path
    annotations: str | None = None  # annotations of the whole dataset, when splits do not name their own
    images: str | None = None  # image folder relative to root
    masks: str | None = None  # mask folder relative to root (semantic segmentation)
    classes: list[str] | None = None  # class names in label order (VOC/masks: required order; COCO: read from file)
    splits: dict[str, SplitConfig] = Field(default_factory=dict)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # seeded ratio split when no split names its images
    split_seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    ignore_index: int | None = None  # semantic segmentation: mask value that is not scored
    palette: dict[int, list[int]] | None = None  # semantic segmentation: class index -> RGB colour
    options: dict[str, Any] = Field(default_factory=dict)  # reader-specific options
    # an image or mask that vanishes or breaks during training: end the run naming it, or skip it
    # (replaced by the next item and recorded in <run>/skipped.jsonl)
    on_unreadable: Literal["stop", "skip"] = "stop"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from cvtrain.data.formats import READERS

        if value not in READERS:
            raise ValueError(f"unknown format {value!r}; known formats: {', '.join(sorted(READERS))}")
        return value


class ModelConfig(StrictModel):
    """Which torchvision model, and how it starts."""

    name: str
    weights: str | None = None  # torchvision weights name ("DEFAULT", "COCO_V1") or a local .pth/.ckpt file
    backbone_weights: str | None = None  # ImageNet weights name or local file for the backbone only
    trainable_backbone_layers: int | None = Field(None, ge=0, le=6)
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments for the torchvision builder

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from cvtrain.models import MODELS

        if value not in MODELS:
            close = difflib.get_close_matches(value, list(MODELS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown model {value!r}{hint} known models: {', '.join(sorted(MODELS))}")
        return value


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    scale_lr_with_batch: bool = False  # linear scaling rule: lr * global_batch / base_batch_size
    base_batch_size: int = Field(16, gt=0)  # the global batch the lr above was tuned for


class SchedulerConfig(StrictModel):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)  # linear warmup from lr * warmup_factor
    warmup_factor: float = Field(0.001, gt=0.0, le=1.0)
    milestones: list[float] = Field(default_factory=lambda: [0.67, 0.89])  # multistep: fractions of training
    gamma: float = Field(0.1, gt=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine: final lr as a fraction of lr


class TrainConfig(StrictModel):
    max_epochs: int = Field(12, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: no limit
    batch_size: int = Field(4, gt=0)  # per device
    image_size: int = Field(512, ge=32, le=4096)  # longest side fed to the model
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    gradient_clip_val: float | None = Field(None, gt=0.0)
    accumulate_grad_batches: int = Field(1, gt=0)
    sync_batchnorm: bool = False
    deterministic: bool = False
    val_every_n_epochs: int = Field(1, gt=0)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    # also save checkpoints/step-N.ckpt every N optimizer steps (the newest two are kept), so a kill
    # mid-epoch loses at most N steps; resume picks the newest valid checkpoint
    checkpoint_every_n_steps: int | None = Field(None, gt=0)
    # semantic segmentation: cross-entropy class weights from the training masks' pixel frequencies
    class_weights: Literal["none", "inverse", "median_frequency"] = "none"


class AugmentConfig(StrictModel):
    """Training augmentation; validation only resizes."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability
    vflip: float = Field(0.0, ge=0.0, le=1.0)
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)  # brightness/contrast/saturation strength; 0 disables
    hue: float = Field(0.02, ge=0.0, le=0.5)
    scale: tuple[float, float] = (0.75, 1.25)  # random scale jitter range, (1, 1) disables
    min_visibility: float = Field(0.3, ge=0.0, le=1.0)  # drop boxes that keep less than this after cropping

    @model_validator(mode="after")
    def _scale_order(self) -> "AugmentConfig":
        low, high = self.scale
        if not (0 < low <= high):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        return self


class EvalConfig(StrictModel):
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)  # boxes drawn by predict and TensorBoard
    num_log_images: int = Field(4, ge=0)  # validation images drawn in TensorBoard each epoch
    batch_size: int | None = Field(None, gt=0)  # defaults to train.batch_size


class TrainerConfig(StrictModel):
    """Where and how the loop runs; the CLI flags land here."""

    accelerator: str = "auto"  # auto, cpu, gpu, cuda, mps
    devices: int | str = "auto"
    gpus: int | None = Field(None, ge=0)  # shorthand: accelerator=gpu, devices=N, DDP when N > 1
    num_nodes: int = Field(1, gt=0)
    amp: Literal["off", "auto", "fp16", "bf16"] = "off"
    # --amp fp16: warn (suggesting bf16) after this many consecutive steps skipped for inf/NaN gradients,
    # or once the loss scale falls below min_loss_scale
    max_bad_steps: int = Field(10, gt=0)
    min_loss_scale: float = Field(1.0, gt=0.0)
    fast_dev_run: bool = False
    strategy: str = "auto"
    log_every_n_steps: int = Field(10, gt=0)


from cvtrain.audit.config import AuditConfig  # noqa: E402  (it builds on StrictModel above)
from cvtrain.curation.config import ChecksConfig  # noqa: E402  (it builds on StrictModel above)


class Config(StrictModel):
    """A whole spec."""

    task: Task = "detection"
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)  # dataset checks before training (cvtrain check)
    audit: AuditConfig = Field(default_factory=AuditConfig)  # label-error audit with fold models (cvtrain audit)
    run_dir: Path | None = None  # default: runs/<spec name>[-N]
    name: str | None = None  # run name; default: the spec file's stem

    @model_validator(mode="after")
    def _model_fits_task(self) -> "Config":
        from cvtrain.models import MODELS

        kind = MODELS[self.model.name].task
        if kind != self.task:
            raise ValueError(f"model {self.model.name!r} is a {kind} model but task is {self.task!r}")
        return self


# ---------------------------------------------------------------------- loading
API_KEYS = {  # API/CLI argument -> config path
    "seed": "train.seed",
    "max_epochs": "train.max_epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "amp": "trainer.amp",
    "gpus": "trainer.gpus",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "fast_dev_run": "trainer.fast_dev_run",
    "run_dir": "run_dir",
}


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` a file; errors name the file, line and column."""
    if not path.is_file():
        raise ConfigError("file not found", where=str(path), hint="check the path given to -c/--config or --data")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", where=str(path), hint="save the spec as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        raise ConfigError(f"refused YAML tag: {error.problem}", where=f"{path}:{mark.line + 1}:{mark.column + 1}",
                          hint="specs are plain data; python/object tags are never executed") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", where=where, hint="fix the syntax at that position") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=0.01'`` -> ``('train.lr', 0.01)``; the value goes through ``yaml.safe_load``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not key=value", hint="write e.g. train.max_epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # a plain string that is not valid YAML
    return key, value


def set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section", hint="check the key")
        node = child
    node[parts[-1]] = value


def _resolve_root(data: Any, base: Path) -> None:
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        root = Path(os.path.expandvars(os.path.expanduser(data["root"])))
        data["root"] = str(root if root.is_absolute() else (base / root).resolve())


def load_config(
    spec: str | os.PathLike | Mapping[str, Any] | Config,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    data: str | os.PathLike | None = None,
    **arguments: Any,
) -> Config:
    """Build a validated ``Config``.

    Args:
        spec: a YAML spec path, a dict, or a ``Config``.
        overrides: ``["train.lr=0.01", ...]`` or ``{"train.lr": 0.01}``.
        data: a dataset description YAML that replaces the spec's ``data`` section.
        **arguments: the CLI flags by name (``seed``, ``max_epochs``, ``amp``, ``gpus``, ...).

    Raises:
        ConfigError: one line naming the file, line, key and closest valid key.
    """
    origin: dict[str, str] = {}  # dotted key -> where it was set, for error messages
    source = "<dict>"
    text_lines: tuple[Path, str] | None = None
    if isinstance(spec, Config):
        tree = spec.model_dump(mode="json")
    elif isinstance(spec, Mapping):
        tree = copy.deepcopy(dict(spec))  # overrides must not reach into the caller's dict
    else:
        path = Path(spec)
        tree = read_yaml(path)
        source = str(path)
        if tree is None:
            raise ConfigError("spec is empty", where=source, hint="see configs/detection/ for examples")
        if not isinstance(tree, dict):
            raise ConfigError(f"spec is a {type(tree).__name__}, expected a mapping of sections", where=source,
                              hint="see configs/detection/ for examples")
        _resolve_root(tree.get("data"), path.parent.resolve())
        tree.setdefault("name", path.stem)
        text_lines = (path, path.read_text(encoding="utf-8"))
    if data is not None:
        data_path = Path(data)
        section = read_yaml(data_path)
        if not isinstance(section, dict):
            raise ConfigError("dataset file must be a mapping (format, root, splits, classes)", where=str(data_path),
                              hint="see 'Your own data' in README.md")
        _resolve_root(section, data_path.parent.resolve())
        tree["data"] = section
        origin["data"] = str(data_path)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides or ())
    for key, value in items:
        if key in ("data.root",) and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())
        set_path(tree, key, value)
        origin[key] = f"override '{key}={value}'"
    for name, value in arguments.items():
        if value is None:
            continue
        if name not in API_KEYS:
            close = difflib.get_close_matches(name, list(API_KEYS), n=1)
            raise ConfigError(f"unknown argument {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                              hint=f"arguments: {', '.join(API_KEYS)}")
        set_path(tree, API_KEYS[name], str(value) if isinstance(value, Path) else value)
        origin[API_KEYS[name]] = f"argument {name}={value!r}"
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise _explain(error, source, origin, text_lines) from None


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config; ``load_config(path)`` gives it back unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


# ----------------------------------------------------------------- error text
def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the last key of ``loc``."""
    model: Any = Config
    parts = list(loc[:-1])
    while parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        if get_origin(field.annotation) is dict and parts:
            parts.pop(0)  # the free-form key of a dict section, e.g. a split name
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is dict:
        value = get_args(annotation)[1]
        return _inner_model(value) if isinstance(value, type) and issubclass(value, BaseModel) else None
    if origin is Union or str(origin) == "types.UnionType":
        for arg in get_args(annotation):
            inner = _inner_model(arg)
            if inner is not None:
                return inner
    return None


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        inner = _inner_model(field.annotation)
        if inner is not None and get_origin(field.annotation) is not dict:
            keys.extend(_all_keys(inner, prefix + name + "."))
    return keys


def _yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the key ``loc`` in YAML ``text`` (or of its closest parent)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return line


def _explain(error: ValidationError, source: str, origin: dict[str, str], text: tuple[Path, str] | None) -> ConfigError:
    first = error.errors()[0]
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and part.startswith(("function-", "tagged-union"))))
    dotted = ".".join(str(part) for part in loc)
    where = source
    for key, label in origin.items():
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + ".") and first["type"] == "missing":
            where = label
            break
    else:
        if text is not None and loc:
            line = _yaml_line(text[1], loc)
            if line:
                where = f"{source}:{line}"
    hint = None
    if first["type"] == "extra_forbidden":
        holder = _model_at(loc)
        candidates = list(holder.model_fields) if holder else []
        close = difflib.get_close_matches(str(loc[-1]), candidates, n=1, cutoff=0.6)
        parent = ".".join(str(p) for p in loc[:-1])
        if close:
            hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
        else:
            anywhere = difflib.get_close_matches(str(loc[-1]), [k.split(".")[-1] for k in _all_keys()], n=1, cutoff=0.75)
            full = [k for k in _all_keys() if anywhere and k.endswith("." + anywhere[0]) or k == (anywhere or [None])[0]]
            if full:
                hint = f"did you mean '{full[0]}'?"
            elif candidates:
                hint = f"valid keys here: {', '.join(candidates)}"
        message = f"unknown key '{dotted}'"
    elif first["type"] == "missing":
        message = f"missing required key '{dotted}'"
        hint = "see configs/ for complete specs"
    else:
        value = first.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
        message = f"'{dotted}' = {shown}: {first['msg'].removeprefix('Value error, ')}" if dotted else first["msg"].removeprefix("Value error, ")
        holder = _model_at(loc) if loc else None
        field = holder.model_fields.get(str(loc[-1])) if holder else None
        default = field.default if field is not None else None
        hint = f"the default is {default!r}" if default not in (None, PydanticUndefined) else "see configs/ for complete specs"
    return ConfigError(message, where=where, hint=hint)
