"""The Python API: everything the CLI does, callable from a notebook.

Each function takes a spec (path, dict or ``Config``), the same ``key=value``
overrides as the CLI, and the CLI flags as keyword arguments, and returns a
result object that shows as a table in a notebook.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pydantic import ValidationError

from cvtrain.atomic import write_json
from cvtrain.config import Config, TrainConfig, load_config, load_data_description, parse_override, save_config
from cvtrain.config.explain import explain
from cvtrain.config.schema import ChecksConfig
from cvtrain.data.loading import build_index
from cvtrain.data.module import DataModule
from cvtrain.engine.callbacks import MetricsFile, fit_callbacks
from cvtrain.engine.checkpoints import (
    CheckpointInfo,
    check_checkpoint_fits,
    find_resume_checkpoint,
    inspect_checkpoint,
    load_pretrained,
    load_task,
    read_checkpoint,
)
from cvtrain.engine.rundir import SKIPPED_FILE, choose_run_dir, is_rank_zero, shared_with_workers, write_run_info
from cvtrain.engine.trainer import build_trainer
from cvtrain.errors import ConfigError, CvtrainError
from cvtrain.results import EvaluateResult, FitResult, PredictResult
from cvtrain.tasks import TASKS

log = logging.getLogger("cvtrain")
Spec = str | os.PathLike | Mapping[str, Any] | Config
Overrides = Iterable[str] | Mapping[str, Any] | None


# --------------------------------------------------------------------------- fit
def fit(spec: Spec, overrides: Overrides = None, *, data: str | os.PathLike | None = None, resume: str | None = None,
        overwrite: bool = False, skip_checks: bool = False, callbacks: Iterable[pl.Callback] = (),
        **arguments: Any) -> FitResult:
    """Train the model a spec describes and evaluate it every epoch.

    Args:
        spec: YAML spec path, dict or ``Config``.
        overrides: ``["train.max_epochs=3", ...]`` or a dict of dotted keys.
        data: dataset description YAML replacing the spec's ``data`` section.
        resume: ``"auto"`` (the run directory's newest valid checkpoint: last, periodic or best) or a
            checkpoint path. Model, optimizer, schedule, epoch, step, RNG states and data order continue.
        overwrite: replace an existing run directory instead of starting a new one.
        skip_checks: train without checking the dataset first (see ``check``; the spec's ``checks``
            section tunes the checks and ``checks.on_error: drop`` trains without what is broken).
        callbacks: more Lightning callbacks, run after cvtrain's own (``scripts/bench_fit.py`` times steps with one).
        **arguments: CLI flags by name: ``amp``, ``gpus``, ``accelerator``, ``devices``, ``num_nodes``,
            ``seed``, ``max_epochs``, ``max_steps``, ``fast_dev_run``, ``run_dir``.

    Returns:
        ``FitResult`` with the run directory, checkpoints and best validation metrics.

    Raises:
        CvtrainError: a spec, dataset, checkpoint or flag the user must fix (one line; ``DatasetCheckError`` when
            the checks found errors, ``DivergenceError`` when training diverged).
    """
    started = time.time()
    config = load_config(spec, overrides, data=data, **arguments)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    run_dir = choose_run_dir(config.run_dir, config.name or "run", resume=resume is not None, overwrite=overwrite)
    resume_from = _resume_from(resume, run_dir)
    index = build_index(config.data)
    if resume_from is not None:
        check_checkpoint_fits(
            resume_from.hyper_parameters, config.task, index.task, index.class_names, resume_from.path
        )
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        write_run_info(run_dir, config=config, fingerprint=index.fingerprint(), dataset=index.summary(),
                       resumed_from=str(resume_from.path) if resume_from else None)
        print(f"run directory: {run_dir}")
        print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")
        if resume_from is not None:
            print(f"resuming from {resume_from.path} (epoch {resume_from.epoch}, step {resume_from.global_step})")
    if not skip_checks:
        index = _check_before_fit(index, config, run_dir)
    datamodule = DataModule(config, index)
    datamodule.unreadable_log = run_dir / SKIPPED_FILE
    task = TASKS[config.task](config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    if resume_from is None:
        load_pretrained(task.model, config.model)  # a resumed run's weights come from its checkpoint
    task.prepare(train_index=datamodule.train_index, val_index=datamodule.val_index)
    metrics_file = MetricsFile(run_dir / "metrics.json")
    trainer = build_trainer(config, run_dir, callbacks=[metrics_file, *fit_callbacks(config, run_dir), *callbacks],
                            monitor=task.monitor)
    with shared_with_workers(run_dir):  # DDP processes started by Lightning inherit it
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume_from.path) if resume_from else None)
    run_dir = metrics_file.run_dir  # rank 0's choice, on every rank (under torchrun each rank chose its own)
    best = metrics_file.best or {}
    checkpoints = run_dir / "checkpoints"
    result = FitResult(
        run_dir=run_dir,
        best_checkpoint=checkpoints / "best.ckpt" if (checkpoints / "best.ckpt").exists() else None,
        last_checkpoint=checkpoints / "last.ckpt" if (checkpoints / "last.ckpt").exists() else None,
        metrics={k: v for k, v in best.items() if k != "per_class"},
        per_class=best.get("per_class", {}),
        seconds=time.time() - started,
    )
    return result


def _check_before_fit(index, config: Config, run_dir: Path):
    """The dataset checks of ``cvtrain check``; their report goes into the run directory.

    Every rank checks (under ``on_error: drop`` all must drop the same things); rank 0 writes and prints.
    """
    from cvtrain.curation import DatasetCheckError, preflight

    rank_zero = is_rank_zero()
    try:
        kept, report = preflight(index, config.checks, config.train.image_size, run_dir, progress=rank_zero,
                                 write=rank_zero)
    except DatasetCheckError as error:
        if rank_zero:
            print(error.report.summary_table())
            for line in error.report.error_lines(limit=5):
                print(line, file=sys.stderr)
        raise
    if rank_zero:
        dropped = f"; trained without them (listed in {run_dir / 'dropped.json'})" if report.count("error") else ""
        print(f"dataset check: {report.count('error')} errors{dropped}, {report.count('warning')} warnings, "
              f"{report.count('info')} infos; report: {run_dir / 'report.html'}")
    return kept


def check(spec: Spec | None = None, overrides: Overrides = None, *, data: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None):
    """Check a dataset the way ``cvtrain check`` does: label sanity, class balance, leakage, files.

    Args:
        spec: a spec (path, dict or ``Config``) whose dataset and ``checks`` section to use; or None with ``data``.
        overrides: ``checks.*`` keys tune the checks; other keys change the spec (or, with only
            ``data``, the dataset description: ``data.*`` keys).
        data: a dataset description YAML (with or without a spec), or a whole spec's YAML.
        out: a folder for ``report.json`` and ``report.html`` (none written without it).

    Returns:
        The ``Report``: ``.findings``, ``.summary_table()``, ``.error_lines()``, ``.to_json()``, ``.write(folder)``,
        and a table in a notebook. ``.exit_code`` is 0 clean, 1 with errors, 2 unreadable (a dataset that cannot
        be read gives a report whose one finding says where). ``.name`` names the dataset (the default folder of
        ``cvtrain check`` is ``runs/check-<name>``).

    Raises:
        ConfigError: the spec, the dataset description or a ``checks.*`` override is invalid, or neither a spec
            nor a dataset was given.

    >>> import cvtrain
    >>> cvtrain.check()
    Traceback (most recent call last):
    cvtrain.errors.ConfigError: nothing to check (give a spec with -c/--config or a dataset file with --data)
    """
    from cvtrain.curation import check_dataset

    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides or []]
    checks = {key.removeprefix("checks."): value for key, value in pairs if key.startswith("checks.")}
    others = [(key, value) for key, value in pairs if not key.startswith("checks.")]
    base: ChecksConfig | None = None
    image_size = TrainConfig.model_fields["image_size"].default
    if spec is not None:
        config = load_config(spec, dict(others), data=data)
        stem = Path(spec).stem if isinstance(spec, (str, os.PathLike)) else "spec"
        base, name, image_size, dataset = config.checks, config.name or stem, config.train.image_size, config.data
    elif data is not None:
        name = Path(data).stem
        dataset = load_data_description(Path(data), others)
        if isinstance(dataset, Config):  # --data named a whole spec
            base, image_size, dataset = dataset.checks, dataset.train.image_size, dataset.data
    else:
        raise ConfigError("nothing to check", hint="give a spec with -c/--config or a dataset file with --data")
    tree = {**(base or ChecksConfig()).model_dump(), **checks}
    try:
        checks_config = ChecksConfig.model_validate(tree)
    except ValidationError as error:
        raise explain(error, source="override", section="checks") from None
    report = check_dataset(dataset, checks_config, image_size)
    report.name = name
    if out is not None:
        report.write(out)
    return report


def _resume_from(resume: str | None, run_dir: Path) -> CheckpointInfo | None:
    """``auto``: the run directory's newest valid checkpoint; a path: that checkpoint, checked now, not deep in
    Lightning."""
    if resume is None:
        return None
    if resume == "auto":
        return find_resume_checkpoint(run_dir, quiet=not is_rank_zero())
    return inspect_checkpoint(Path(resume))


# ---------------------------------------------------------------------- evaluate
def _config_for_checkpoint(payload: dict[str, Any], spec: Spec | None, overrides: Overrides, data, arguments) -> Config:
    """The checkpoint's config, with the spec's dataset and evaluation sections when a spec is given."""
    trained = payload["hyper_parameters"]["config"]
    if spec is not None:
        given = load_config(spec, data=data).model_dump(mode="json")
        tree = {**trained, "data": given["data"], "eval": given["eval"]}
        data = None
    else:
        tree = dict(trained)
    # Where the model trained (4 GPUs, 2 nodes, FP16) says nothing about where it is scored: one device of
    # whatever this machine has, FP32, unless the flags (applied after this) say otherwise.
    tree["trainer"] = {**tree.get("trainer", {}), "fast_dev_run": False, "accelerator": "auto", "devices": 1,
                       "gpus": None, "num_nodes": 1, "strategy": "auto", "amp": "off"}
    return load_config(tree, overrides, data=data, **arguments)


def evaluate(spec: Spec | None = None, checkpoint: str | os.PathLike = "", overrides: Overrides = None, *,
             data: str | os.PathLike | None = None, split: str | None = None, out: str | os.PathLike | None = None,
             **arguments: Any) -> EvaluateResult:
    """Score a checkpoint on a split (COCO stats by pycocotools, or mIoU) and write ``metrics.json``.

    Args:
        spec: spec whose dataset (and ``eval`` section) to use; default: the one the checkpoint was trained on.
        checkpoint: a ``.ckpt`` written by ``fit``.
        overrides: ``key=value`` strings or a dict of dotted keys applied to the checkpoint's config.
        data: a dataset description YAML replacing the dataset.
        split: split to score; default ``data.val_split``.
        out: folder for ``metrics.json``; default ``<run>/evaluate-<split>``.
        **arguments: ``accelerator``, ``devices``, ``gpus``, ``amp``, ``num_nodes``, as for ``fit``
            (default: one device of this machine, FP32).

    Returns:
        ``EvaluateResult`` with the summary metrics, per-class scores, the output folder and the image count.

    Raises:
        CheckpointError: the checkpoint is unreadable, or was trained for another task or other classes.
        CvtrainError: the spec, dataset or flags are invalid.
    """
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    config = _config_for_checkpoint(payload, spec, overrides, data, arguments)
    if split:
        config.data.val_split = split
    index = build_index(config.data)
    check_checkpoint_fits(payload["hyper_parameters"], config.task, index.task, index.class_names, checkpoint)
    task = load_task(checkpoint, payload)
    out_dir = Path(out) if out else checkpoint.resolve().parent.parent / f"evaluate-{config.data.val_split}"
    datamodule = DataModule.for_evaluation(config, index)
    task.prepare(val_index=datamodule.val_index)
    trainer = build_trainer(config, out_dir, monitor=task.monitor, logger=False, checkpoints=False)
    trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = task.last_metrics
    result = EvaluateResult(metrics=metrics.get("scalars", {}), per_class=metrics.get("per_class", {}),
                            out_dir=out_dir, num_images=metrics.get("num_images", 0))
    if is_rank_zero():
        write_json(
            out_dir / "metrics.json",
            {
                "checkpoint": str(checkpoint),
                "split": config.data.val_split,
                "num_images": result.num_images,
                **{k: v for k, v in metrics.items() if k != "summary"},
            },
        )
    return result


# ----------------------------------------------------------------------- predict
def predict(spec: Spec | None = None, checkpoint: str | os.PathLike = "", source: str | os.PathLike = "",
            out: str | os.PathLike | None = None, overrides: Overrides = None, *, overwrite: bool = False,
            score_threshold: float | None = None, **arguments: Any) -> PredictResult:
    """Run a checkpoint on an image or a folder; write predictions JSON and drawn images.

    Args:
        spec: a spec whose ``eval`` section to use; default: the checkpoint's.
        checkpoint: a ``.ckpt`` written by ``fit``.
        source: an image file or a folder of images.
        out: output folder (must be new or empty unless ``overwrite``); default ``runs/predict[-N]``.
        overrides: ``key=value`` strings or a dict of dotted keys applied to the checkpoint's config.
        overwrite: write into a non-empty ``out``.
        score_threshold: lowest score drawn on the images (all detections go to the JSON).
        **arguments: ``accelerator`` (``cpu`` or ``gpu``; default: a GPU when there is one).

    Returns:
        ``PredictResult`` naming the output folder, the predictions file and the counts.

    Raises:
        CheckpointError: the checkpoint is unreadable.
        DataError: the source is missing or holds no images.
        CvtrainError: ``out`` is not empty and ``overwrite`` is not set.
    """
    from cvtrain.prediction import run_prediction

    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    config = _config_for_checkpoint(payload, None, overrides, None, {})
    if spec is not None:
        config = _config_for_checkpoint(payload, spec, overrides, None, {})
    if score_threshold is not None:
        config.eval.score_threshold = score_threshold
    task = load_task(checkpoint, payload)
    task.config.eval.score_threshold = config.eval.score_threshold  # the task draws with its own config
    out_dir = _fresh_dir(Path(out) if out else None, "predict", overwrite)
    return run_prediction(task, config, Path(source), out_dir, device=arguments.get("accelerator"))


def _fresh_dir(requested: Path | None, name: str, overwrite: bool) -> Path:
    if requested is None:
        return choose_run_dir(None, name)
    if requested.exists() and any(requested.iterdir()) and not overwrite:
        raise CvtrainError("output folder is not empty", where=str(requested),
                           hint="give a new --out folder, or --overwrite to write into it")
    return requested
