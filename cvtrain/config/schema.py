"""The typed sections of a spec: what every key means, its type, range and default.

``Config`` is a whole spec; each section is a ``StrictModel`` that refuses
unknown keys, NaN and infinity. Reading YAML and applying overrides is
``cvtrain.config.load``; turning a validation error into one line is
``cvtrain.config.explain``.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, field_validator, model_validator

from cvtrain.config.audit import AuditConfig
from cvtrain.config.base import StrictModel
from cvtrain.config.sweep import SweepConfig
from cvtrain.config.testing import SlicesConfig, TestsConfig
from cvtrain.errors import shown

Task = Literal["detection", "instance_segmentation", "semantic_segmentation"]


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
            raise ValueError(f"unknown format {shown(value)}; known formats: {', '.join(sorted(READERS))}")
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
            raise ValueError(f"unknown model {shown(value)}{hint} known models: {', '.join(sorted(MODELS))}")
        return value


class OptimizerConfig(StrictModel):
    """The optimizer and its learning rate (``train.optimizer``)."""

    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    scale_lr_with_batch: bool = False  # linear scaling rule: lr * global_batch / base_batch_size
    base_batch_size: int = Field(16, gt=0)  # the global batch the lr above was tuned for


class SchedulerConfig(StrictModel):
    """The learning-rate schedule, stepped per optimizer step (``train.scheduler``)."""

    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)  # linear warmup from lr * warmup_factor
    warmup_factor: float = Field(0.001, gt=0.0, le=1.0)
    milestones: list[float] = Field(default_factory=lambda: [0.67, 0.89])  # multistep: fractions of training
    gamma: float = Field(0.1, gt=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine: final lr as a fraction of lr


def _worker_count(value: Any) -> int | str:
    # One validator rather than a union, so that an error names the key itself.
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("expected 'auto' or a number of workers >= 0")


class TrainConfig(StrictModel):
    """How long and on what batches training runs, and how it is checkpointed."""

    max_epochs: int = Field(12, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: no limit
    batch_size: int = Field(4, gt=0)  # per device
    image_size: int = Field(512, ge=32, le=4096)  # longest side fed to the model
    # data-loader worker processes per training process; auto: the cores each process gets less one, at most 8
    num_workers: Annotated[int | Literal["auto"], PlainValidator(_worker_count)] = "auto"
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
    # convolutions in channels-last memory order (faster on tensor cores); auto: on CUDA under --amp for
    # semantic segmentation models (detection stays off until measured faster on a GPU)
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile the model (semantic segmentation only: detectors have data-dependent shapes); the first
    # steps are slow while it compiles
    compile: bool = False


class AugmentConfig(StrictModel):
    """Training augmentation; validation only resizes."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability
    vflip: float = Field(0.0, ge=0.0, le=1.0)
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)  # brightness/contrast/saturation strength; 0 disables
    hue: float = Field(0.02, ge=0.0, le=0.5)
    scale: tuple[float, float] = (0.75, 1.25)  # random scale jitter range, (1, 1) disables
    min_visibility: float = Field(0.3, ge=0.0, le=1.0)  # drop boxes that keep less than this after cropping

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        low, high = self.scale
        if not (0 < low <= high):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        return self


class EvalConfig(StrictModel):
    """Validation, ``evaluate`` and ``predict``: drawing and batch size."""

    score_threshold: float = Field(0.3, ge=0.0, le=1.0)  # boxes drawn by predict and TensorBoard
    # COCO metrics: pycocotools (the reference), faster-coco-eval (same 12 stats, about 10x faster; the
    # fast-eval extra), or auto: faster-coco-eval when it is installed
    backend: Literal["auto", "pycocotools", "faster"] = "auto"
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
    # optimizer steps between training logs (losses, loss scale, step time); as Lightning's default, and the
    # only steps where training waits for the GPU to read them
    log_every_n_steps: int = Field(50, gt=0)
    # signals that stop fit gracefully: the step ends, last.ckpt is written, one line, exit 128 + signal number
    # (docs/reliability.md); a second one stops at once. Others keep their default action.
    stop_signals: list[Literal["SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"]] = Field(
        default_factory=lambda: ["SIGINT", "SIGTERM", "SIGUSR1"])
    # on SLURM, Lightning's SLURMEnvironment requeues the job after a stop on its requeue signal (SIGUSR1)
    slurm_requeue: bool = True


Override = Literal["error", "warning", "info", "off"]


class ChecksConfig(StrictModel):
    """Thresholds and policies of ``cvtrain check`` and of the checks before ``fit``.

    The defaults raise no error on clean real datasets; see ``docs/curation.md``
    for what each check code means and which key tunes it.
    """

    # what is read
    check_files: bool = True  # look at image and mask files on disk (off for annotation-only sets)
    decode_images: bool = True  # fully decode every image to find truncated files; off: header only
    workers: int | None = Field(None, ge=1)  # processes that decode images; default: all cores
    use_cache: bool = True  # reuse decode results of unchanged files (size + mtime + first 64 KiB)
    cache_file: Path | None = None  # default: ~/.cache/cvtrain/decode-cache.json
    # what happens on errors before training
    on_error: Literal["stop", "drop"] = "stop"  # drop: train without the offending annotations/images
    severity_overrides: dict[str, Override] = Field(default_factory=dict)  # code -> severity, "off" silences
    # thresholds
    box_tolerance: float = Field(1.0, ge=0.0)  # pixels a box may reach past the image edge
    min_class_examples: int = Field(10, ge=0)  # fewer annotations of a class: class.rare
    max_imbalance: float = Field(10.0, ge=1.0)  # most / least frequent class in a split: class.imbalance
    conflict_iou: float = Field(0.95, gt=0.0, le=1.0)  # two classes on boxes this similar: box.class_conflict
    outlier_mads: float = Field(6.0, gt=0.0)  # robust z (median/MAD of log size or aspect) for outliers
    outlier_min_examples: int = Field(20, ge=3)  # classes with fewer boxes are not screened for outliers
    min_box_pixels: float = Field(4.0, ge=0.0)  # shorter box side at train.image_size: box.tiny_at_input_size
    area_ratio: float = Field(1.5, gt=1.0)  # 'area' more than this factor off the box/mask area
    segmentation_box_iou: float = Field(0.8, gt=0.0, le=1.0)  # box vs mask extent IoU below this
    near_duplicate_bits: int = Field(4, ge=0, le=31)  # dHash bits that may differ for split.leakage
    min_image_side: int = Field(32, ge=1)  # shorter image side below this: image.extreme_size
    max_image_side: int = Field(10000, ge=1)  # longer image side above this: image.extreme_size
    max_image_aspect: float = Field(5.0, ge=1.0)  # long side / short side above this: image.extreme_aspect
    # report size
    max_findings_per_code: int = Field(1000, ge=1)  # warnings/info listed per code (all are counted)
    crops: int = Field(24, ge=0)  # flagged annotations drawn in report.html
    # audit.json of `cvtrain audit`: fit trains without the annotations it flags (relative paths: working directory)
    audit: Path | None = None
    audit_threshold: float = Field(0.5, gt=0.0, le=1.0)  # records scoring at least this are dropped

    @field_validator("severity_overrides", mode="before")
    @classmethod
    def _off_is_not_false(cls, value):
        # YAML 1.1 reads a bare `off` as False; in this mapping it can only mean "off"
        if isinstance(value, dict):
            return {code: "off" if severity is False else severity for code, severity in value.items()}
        return value

    @field_validator("severity_overrides")
    @classmethod
    def _known_codes(cls, value: dict[str, str]) -> dict[str, str]:
        from cvtrain.curation.codes import CODES

        for code in value:
            if code not in CODES:
                close = difflib.get_close_matches(code, list(CODES), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known codes: {', '.join(sorted(CODES))}"
                raise ValueError(f"unknown check code {shown(code)}{hint}")
        return value


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # runs/<name>: a name is one path segment


# The tasks a format's annotations can train (formats not listed: every task their files carry).
FORMAT_TASKS: dict[str, tuple[str, ...]] = {
    "masks": ("semantic_segmentation",),  # class-index masks hold no instances and no boxes
    "cityscapes": ("semantic_segmentation",),
    "voc": ("detection",),  # boxes only
    "kitti": ("detection",),
}


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
    tests: TestsConfig = Field(default_factory=TestsConfig)  # model tests of cvtrain test (flip, background, ...)
    slices: SlicesConfig = Field(default_factory=SlicesConfig)  # per-slice scores of cvtrain evaluate
    audit: AuditConfig = Field(default_factory=AuditConfig)  # label-error audit with fold models (cvtrain audit)
    sweep: SweepConfig | None = None  # hyperparameter search of `cvtrain sweep` (docs/sweep.md); fit ignores it
    run_dir: Path | None = None  # default: runs/<spec name>[-N]
    name: str | None = None  # run name (runs/<name>[-N]): one path segment; default: the spec file's stem

    @field_validator("name")
    @classmethod
    def _one_path_segment(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME.fullmatch(value):
            raise ValueError(f"run name {shown(value)} is not one path segment: use letters, digits, '-', '_' and '.' "
                             "(not first)")
        return value

    @model_validator(mode="after")
    def _model_fits_task(self) -> Config:
        from cvtrain.models import MODELS

        kind = MODELS[self.model.name].task
        if kind != self.task:
            raise ValueError(f"model {self.model.name!r} is a {kind} model but task is {self.task!r}")
        need = MODELS[self.model.name].min_batch
        if self.train.batch_size < need:
            raise ValueError(f"train.batch_size {self.train.batch_size} is too small for {self.model.name!r}: its "
                             f"BatchNorm layers need at least {need} images per batch in training")
        smallest = MODELS[self.model.name].min_image_size
        if self.train.image_size < smallest:
            raise ValueError(f"train.image_size {self.train.image_size} is too small for {self.model.name!r}: its "
                             f"last layers need an input of at least {smallest} px (set train.image_size={smallest} "
                             "or more)")
        served = FORMAT_TASKS.get(self.data.format)
        if served is not None and self.task not in served:
            raise ValueError(f"format {self.data.format!r} holds {' or '.join(served)} data but task is {self.task!r}"
                             f"; a {self.task} model needs a format with "
                             f"{'boxes' if self.task == 'detection' else 'masks'} (e.g. coco)")
        if self.train.compile and kind != "semantic_segmentation":
            raise ValueError(f"train.compile supports semantic segmentation models only; {self.model.name!r} is a "
                             f"{kind} model, whose data-dependent shapes (proposals, matching) make torch.compile "
                             "recompile or fall back at every step: set train.compile=false")
        return self


