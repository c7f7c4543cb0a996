"""The Python API: everything the CLI does, callable from a notebook.

Each function takes a spec (path, dict or ``Config``), the same ``key=value``
overrides as the CLI, and the CLI flags as keyword arguments, and returns a
result object that shows as a table in a notebook.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pydantic import ValidationError

from cvtrain.atomic import write_json
from cvtrain.audit.apply import drop_flagged, read_audit
from cvtrain.config import Config, TrainConfig, load_config, load_data_description, parse_override, save_config
from cvtrain.config.explain import explain
from cvtrain.config.schema import ChecksConfig
from cvtrain.data.index import DatasetIndex
from cvtrain.data.loading import build_index
from cvtrain.data.module import DataModule, check_splits
from cvtrain.data.workers import worker_context
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
from cvtrain.engine.rundir import (
    SKIPPED_FILE,
    choose_run_dir,
    has_checkpoint,
    inherited_run_dir,
    is_rank_zero,
    output_dir,
    read_run_info,
    release_if_empty,
    requeued_run,
    shared_with_workers,
    slurm_job_id,
    write_run_info,
)
from cvtrain.engine.stopping import StopAtSafePoint, StopSignals, wait_for_parent
from cvtrain.engine.trainer import build_trainer, launched_externally
from cvtrain.errors import ConfigError, CvtrainError
from cvtrain.quiet import quiet_libraries
from cvtrain.results import EvaluateResult, FitResult, PredictResult
from cvtrain.tasks import TASKS

quiet_libraries(configure_logging=False)  # a notebook sees what the CLI shows, not Lightning's banners

log = logging.getLogger("cvtrain")
Spec = str | os.PathLike | Mapping[str, Any] | Config
AUDIT_DIR_ENV = "CVTRAIN_AUDIT_DIR"  # lets the processes of a distributed fold model find rank 0's audit folder
Overrides = Iterable[str] | Mapping[str, Any] | None


# --------------------------------------------------------------------------- fit
def fit(spec: Spec, overrides: Overrides = None, *, data: str | os.PathLike | None = None, resume: str | None = None,
        overwrite: bool = False, skip_checks: bool = False, callbacks: list[pl.Callback] | None = None,
        index: DatasetIndex | None = None, **arguments: Any) -> FitResult:
    """Train the model a spec describes and evaluate it every epoch.

    Args:
        spec: YAML spec path, dict or ``Config``.
        overrides: ``["train.max_epochs=3", ...]`` or a dict of dotted keys.
        data: dataset description YAML replacing the spec's ``data`` section.
        resume: ``"auto"`` (the run directory's newest valid checkpoint: last, periodic or best) or a
            checkpoint path. Model, optimizer, schedule, epoch, step, RNG states and data order continue.
        overwrite: replace the run in ``run_dir``: it is moved aside (out of reach of ``resume``) and deleted once
            the new run has written its first checkpoint.
        skip_checks: train without checking the dataset first (see ``check``; the spec's ``checks``
            section tunes the checks and ``checks.on_error: drop`` trains without what is broken).
        callbacks: more Lightning callbacks for the trainer, run after cvtrain's own (``cvtrain sweep`` adds its
            pruning callback; ``scripts/bench_fit.py`` times steps with one).
        index: the dataset to train on, with its splits, instead of reading ``data`` (``audit``'s folds).
        **arguments: CLI flags by name: ``amp``, ``gpus``, ``accelerator``, ``devices``, ``num_nodes``,
            ``seed``, ``max_epochs``, ``max_steps``, ``fast_dev_run``, ``run_dir``. ``fast_dev_run=True`` without
            ``run_dir`` runs one training and one validation batch in a temporary folder that is removed at the end:
            nothing is written where it runs (with ``run_dir`` its files stay there, still without checkpoints).

    Returns:
        ``FitResult`` with the run directory, checkpoints and best validation metrics (``run_dir`` and the
        checkpoints are None after a fast dev run that kept nothing).

    Raises:
        CvtrainError: a spec, dataset, checkpoint or flag the user must fix (one line; ``DatasetCheckError`` when
            the checks found errors, ``DivergenceError`` when training diverged).
        RunInterrupted: a signal of ``trainer.stop_signals`` (Ctrl-C, SIGTERM, SIGUSR1) stopped the run; ``.line``
            names the checkpoint written and the command that continues the run (docs/reliability.md).

    A spec is checked before anything is written (a real run: ``cvtrain.fit("configs/detection/quickstart.yaml")``):

    >>> import cvtrain
    >>> cvtrain.fit({"task": "detection", "model": {"name": "ssdlite320_mobilenet_v3_large"}})
    Traceback (most recent call last):
    cvtrain.errors.ConfigError: <dict>: missing required key 'data' (see configs/ for complete specs)
    """
    started = time.time()
    config = load_config(spec, overrides, data=data, **arguments)
    with StopSignals(config.trainer.stop_signals) as signals:
        return _fit(config, signals, started, resume=resume, overwrite=overwrite, skip_checks=skip_checks,
                    callbacks=callbacks, index=index)


def _fit(config: Config, signals: StopSignals, started: float, *, resume: str | None, overwrite: bool,
         skip_checks: bool, callbacks: list[pl.Callback] | None, index: DatasetIndex | None) -> FitResult:
    """``fit`` inside its signal handlers: a stop by a signal leaves as ``RunInterrupted``."""
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    name, requested = config.name or "run", config.run_dir
    requeued = requeued_run(requested, name) if resume is None and not overwrite else None
    if requeued is not None:  # SLURM requeued this job after a stop: its run continues (or starts again in place)
        continuing = has_checkpoint(requeued)
        requested, resume, overwrite = requeued, "auto" if continuing else None, not continuing
        if is_rank_zero():
            print(f"SLURM job {slurm_job_id()} was requeued: continuing the run in {requeued}")
    _preflight(config)  # cheap checks of the machine and the spec's files, before any folder or dataset work
    scratch = None
    if (config.trainer.fast_dev_run and requested is None and resume is None and not overwrite and is_rank_zero()
            and inherited_run_dir() is None):
        # A smoke run without --run-dir keeps nothing: it runs in a temporary folder, removed at the end.
        scratch = Path(tempfile.mkdtemp(prefix="cvtrain-fast-dev-run-"))
        requested = scratch / name
    run_dir = choose_run_dir(requested, name, resume=resume is not None, overwrite=overwrite)
    signals.describe(run_dir, ("--skip-checks",) if skip_checks else ())
    try:
        return _fit_in(run_dir, config, signals, started, resume=resume, skip_checks=skip_checks, callbacks=callbacks,
                       index=index, kept=scratch is None)
    except BaseException as error:
        stopped = signals.interruption(error)
        if is_rank_zero() and scratch is None:
            release_if_empty(run_dir)  # a claimed folder nothing was written into does not stay behind
        if stopped is None:
            raise
        if stopped.quiet and not launched_externally():
            wait_for_parent(signals.parent)  # Lightning's launcher must print its line first (see wait_for_parent)
        raise stopped from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _preflight(config: Config) -> None:
    """What can fail in a second, checked before the dataset is read and before a run directory exists: the
    devices asked for (``--gpus``, ``--accelerator``) are there, and the pretrained weights are a file that
    exists or a torchvision download that is cached or can be made now (``pretrained_file``, which
    ``load_pretrained`` calls again later: the file is then at hand).

    Raises:
        ConfigError: too many GPUs, no GPU for ``--accelerator gpu``, an unknown weights name, a failed download.
        CheckpointError: a ``model.weights`` file that does not exist.
    """
    from cvtrain.engine.trainer import device_arguments
    from cvtrain.models import MODELS
    from cvtrain.models.weights import pretrained_file

    device_arguments(config)
    if config.model.weights:
        pretrained_file(config.model.name, MODELS[config.model.name].builder, config.model.weights)


def _fit_in(run_dir: Path, config: Config, signals: StopSignals, started: float, *, resume: str | None,
            skip_checks: bool, callbacks: list[pl.Callback] | None, index: DatasetIndex | None,
            kept: bool = True) -> FitResult:
    """The run in ``run_dir``; ``kept=False``: a fast dev run in a temporary folder that the caller removes, so
    nothing names a path in it."""
    resume_from = _resume_from(resume, run_dir)
    signals.describe(run_dir, signals.flags, resume_from)
    if config.train.num_workers != 0:
        worker_context()  # the workers' fork server imports torch meanwhile, ready (and deaf to Ctrl-C) when needed
    audit_file = read_audit(config.checks.audit) if config.checks.audit is not None else None
    index = build_index(config.data, images_needed=True) if index is None else index
    if resume_from is not None:
        check_checkpoint_fits(
            resume_from.hyper_parameters, config.task, index.task, index.class_names, resume_from.path
        )
    check_splits(config, index)  # both splits hold images, enough for BatchNorm: before anything is written
    # One run, one id: a resumed run keeps the id of the run in its folder; checkpoints carry it (RunIdentity).
    run_id = read_run_info(run_dir).get("run_id") if resume_from is not None else None
    run_id = run_id or uuid.uuid4().hex
    if is_rank_zero():
        save_config(config, run_dir / "config.yaml")
        write_run_info(run_dir, config=config, fingerprint=index.fingerprint(), dataset=index.summary(),
                       run_id=run_id, resumed_from=str(resume_from.path) if resume_from else None)
        if kept:
            print(f"run directory: {run_dir}")
            print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")
        else:
            print("fast dev run: one training and one validation batch in a temporary folder, removed at the end "
                  "(give --run-dir to keep its files)")
        if resume_from is not None:
            print(f"resuming from {resume_from.path} (epoch {resume_from.epoch}, step {resume_from.global_step})")
    if not skip_checks:
        index = _check_before_fit(index, config, run_dir, keep_report=kept)
    if audit_file is not None:
        index, dropped = drop_flagged(index, audit_file, config.checks.audit_threshold, run_dir, write=is_rank_zero())
        if is_rank_zero():
            print(f"audit: trained without {dropped.annotations} annotation(s) and {dropped.images} image(s) flagged "
                  f"at score >= {dropped.threshold:g} in {audit_file.path} (listed in {dropped.listing})")
    datamodule = DataModule(config, index)
    datamodule.unreadable_log = run_dir / SKIPPED_FILE
    task = TASKS[config.task](config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    if resume_from is None:
        load_pretrained(task.model, config.model)  # a resumed run's weights come from its checkpoint
    task.prepare(train_index=datamodule.train_index, val_index=datamodule.val_index)
    metrics_file = MetricsFile(run_dir / "metrics.json")
    extra = list(callbacks or [])  # e.g. the sweep's pruning callback
    callbacks = [metrics_file, *fit_callbacks(config, run_dir, run_id), StopAtSafePoint(signals, run_dir), *extra]
    trainer = build_trainer(config, run_dir, callbacks=callbacks, monitor=task.monitor)
    check_splits(config, index, trainer.world_size)  # what the checks kept, over every process
    signals.defer()  # from here a signal stops at the next safe point, with a checkpoint
    with shared_with_workers(run_dir), warnings.catch_warnings():  # DDP processes started by Lightning inherit it
        if resume_from is not None:  # a resumed run's folder holds checkpoints, of course
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume_from.path) if resume_from else None)
    run_dir = metrics_file.run_dir  # rank 0's choice, on every rank (under torchrun each rank chose its own)
    best = metrics_file.best or {}
    checkpoints = run_dir / "checkpoints"
    result = FitResult(
        run_dir=run_dir if kept else None,
        best_checkpoint=checkpoints / "best.ckpt" if kept and (checkpoints / "best.ckpt").exists() else None,
        last_checkpoint=checkpoints / "last.ckpt" if kept and (checkpoints / "last.ckpt").exists() else None,
        metrics={k: v for k, v in best.items() if k != "per_class"},
        per_class=best.get("per_class", {}),
        seconds=time.time() - started,
    )
    if config.task != "semantic_segmentation" and is_rank_zero() and result.metrics:
        from cvtrain.evaluation.baselines import detection_baseline  # semantic: baseline_mIoU is in the metrics

        baseline = detection_baseline(datamodule.train_index, datamodule.val_index)
        if baseline is not None:
            result.metrics["baseline_mAP"] = baseline["mAP"]
            write_json(run_dir / "baseline.json", baseline)
    return result


def _check_before_fit(index, config: Config, run_dir: Path, *, keep_report: bool = True):
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
        listing = run_dir / "dropped.json" if keep_report else "not kept (fast dev run)"
        written = run_dir / "report.html" if keep_report else "not kept (fast dev run)"
        dropped = f"; trained without them (listed in {listing})" if report.count("error") else ""
        print(f"dataset check: {report.count('error')} errors{dropped}, {report.count('warning')} warnings, "
              f"{report.count('info')} infos; report: {written}")
    return kept


def check(spec: Spec | None = None, overrides: Overrides = None, *, data: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None, overwrite: bool = False):
    """Check a dataset the way ``cvtrain check`` does: label sanity, class balance, leakage, files.

    Args:
        spec: a spec (path, dict or ``Config``) whose dataset and ``checks`` section to use; or None with ``data``.
        overrides: ``checks.*`` keys tune the checks; other keys change the spec (or, with only
            ``data``, the dataset description: ``data.*`` keys).
        data: a dataset description YAML (with or without a spec), or a whole spec's YAML.
        out: a folder for ``report.json`` and ``report.html`` (none written without it): a new or empty folder
            (``overwrite`` replaces what it holds), or ``"auto"`` for the next free ``runs/check-<name>[-N]``.
        overwrite: replace the contents of a non-empty ``out``.

    Returns:
        The ``Report``: ``.findings``, ``.summary_table()``, ``.error_lines()``, ``.to_json()``, ``.write(folder)``,
        and a table in a notebook. ``.exit_code`` is 0 clean, 1 with errors, 2 unreadable (a dataset that cannot
        be read gives a report whose one finding says where). ``.name`` names the dataset (the default folder of
        ``cvtrain check`` is ``runs/check-<name>``).

    Raises:
        ConfigError: the spec, the dataset description or a ``checks.*`` override is invalid, or neither a spec
            nor a dataset was given.
        CvtrainError: ``out`` is not empty and ``overwrite`` is not set.

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
    if out is not None:  # the folder is claimed once the report exists: a check that fails leaves none
        with output_dir(None if out == "auto" else Path(out), f"check-{name}", overwrite=overwrite) as folder:
            report.write(folder)
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
        tree = {**trained, "data": given["data"], "eval": given["eval"], "tests": given["tests"],
                "slices": given["slices"]}
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
             corruptions: Iterable[str] | str | None = None, severities: Iterable[int] | None = None,
             compare: str | os.PathLike | None = None, resamples: int = 1000, seed: int = 0,
             progress: bool = True, model: str | os.PathLike | None = None, **arguments: Any) -> EvaluateResult:
    """Score a checkpoint on a split with pycocotools and write ``metrics.json``.

    Besides the scores: 95 % bootstrap intervals over images (``"<metric>_ci95"``), the no-model baseline
    (detection: prior boxes; semantic segmentation: the majority class), and per-slice scores
    (``docs/testing-models.md``).

    Args:
        spec: spec whose dataset (and ``eval`` section) to use; default: the one the checkpoint was trained on.
        checkpoint: a ``.ckpt`` written by ``fit``.
        overrides: ``key=value`` strings or a dict of dotted keys applied to the checkpoint's config.
        data: a dataset description YAML replacing the dataset.
        split: split to score; default ``data.val_split``.
        out: folder for ``metrics.json``; default ``<run>/evaluate-<split>`` (``evaluate-<model>-<split>``
            beside an exported model).
        corruptions: also score the split under these corruptions (names or families, ``"all"``); writes
            ``robustness.json``, ``robustness.html`` and TensorBoard scalars into ``out``.
        severities: corruption severities (default 1 to 5).
        compare: a second checkpoint, scored on the same images; the paired bootstrap difference
            (second - first) goes to ``result.comparison`` and ``compare.json``.
        resamples: bootstrap resamples (0: no intervals).
        seed: the seed of the resamples and of the corruption noise.
        progress: show progress bars.
        model: an ``.onnx`` file written by ``export``, run by onnxruntime, instead of ``checkpoint``.
        **arguments: ``accelerator``, ``devices``, ``gpus``, ``amp``, ``num_nodes``, as for ``fit``
            (default: one device of this machine, FP32).

    Returns:
        ``EvaluateResult`` with the summary metrics, 95 % intervals, the baseline, slices, robustness or the
        comparison, per-class scores, the output folder and the image count.

    Raises:
        CheckpointError: the checkpoint is unreadable, or was trained for another task or other classes.
        CvtrainError: the spec, dataset or flags are invalid, or an unknown corruption.

    >>> import cvtrain
    >>> cvtrain.evaluate(checkpoint="nowhere.ckpt")
    Traceback (most recent call last):
    cvtrain.errors.CheckpointError: nowhere.ckpt: checkpoint not found (give a .ckpt from <run>/checkpoints/)
    """
    if compare is not None:
        return _evaluate_pair(spec, checkpoint, compare, overrides, data=data, split=split, out=out,
                              resamples=resamples, seed=seed, progress=progress, **arguments)
    if corruptions is not None:  # cheap checks before the expensive pass
        from cvtrain.evaluation.corruptions import corruption_names

        try:
            corruptions = corruption_names(corruptions if isinstance(corruptions, str) else list(corruptions))
        except ValueError as error:
            raise CvtrainError(
                str(error), hint="e.g. --corruptions noise fog, or --corruptions alone for all 15"
            ) from None
        if severities is not None and any(s not in (1, 2, 3, 4, 5) for s in severities):
            raise CvtrainError(f"severities are 1 to 5, got {list(severities)}", hint="e.g. --severities 1-5")
    task = None
    if model is not None:  # an exported file: onnxruntime in place of the network, the rest as for a checkpoint
        from cvtrain.export.runtime import load_onnx_task

        checkpoint = Path(model)
        payload, task = load_onnx_task(checkpoint, device=arguments.get("accelerator"))
    else:
        checkpoint = Path(checkpoint)
        payload = read_checkpoint(checkpoint)
    config = _config_for_checkpoint(payload, spec, overrides, data, arguments)
    if split:
        config.data.val_split = split
    index = build_index(config.data, images_needed=True)
    check_checkpoint_fits(payload["hyper_parameters"], config.task, index.task, index.class_names, checkpoint)
    task = load_task(checkpoint, payload) if task is None else task
    default_out = (checkpoint.resolve().parent.parent / f"evaluate-{config.data.val_split}" if model is None
                   else checkpoint.resolve().parent / f"evaluate-{checkpoint.stem}-{config.data.val_split}")
    out_dir = Path(out) if out else default_out
    datamodule = DataModule.for_evaluation(config, index)
    task.prepare(val_index=datamodule.val_index)
    from cvtrain.evaluation.analysis import analyse
    from cvtrain.evaluation.inference import PredictionCollector

    collector = PredictionCollector()
    trainer = build_trainer(config, out_dir, monitor=task.monitor, logger=False, checkpoints=False,
                            callbacks=[collector])
    started = time.perf_counter()
    trainer.validate(task, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - started
    metrics = task.last_metrics
    analysis = analyse(task, config, index, datamodule.val_index, collector, resamples=resamples, seed=seed)
    scalars = dict(metrics.get("scalars", {}))
    if analysis.baseline is not None:
        scalars["baseline_mAP"] = analysis.baseline["mAP"]
    result = EvaluateResult(metrics=scalars, per_class=metrics.get("per_class", {}), out_dir=out_dir,
                            num_images=metrics.get("num_images", 0), intervals=analysis.intervals,
                            baseline=analysis.baseline, slices=analysis.slices, analysis=analysis, config=config,
                            runtime="PyTorch" if model is None else "onnxruntime",
                            images_per_second=metrics.get("num_images", 0) / max(seconds, 1e-9))
    if corruptions is not None and is_rank_zero():
        from cvtrain.evaluation.robustness import run_robustness

        result.robustness = run_robustness(task, config, datamodule.val_index, corruptions=corruptions,
                                           severities=severities, clean=metrics, seed=seed, progress=progress)
        result.robustness.write(out_dir)
    if is_rank_zero():
        write_json(out_dir / "metrics.json", {"checkpoint" if model is None else "model": str(checkpoint),
                                              "runtime": result.runtime, "split": config.data.val_split,
                                              "num_images": result.num_images,
                                              **{k: v for k, v in metrics.items() if k != "summary"},
                                              "scalars": scalars, **analysis.to_json()})
    return result


def _evaluate_pair(spec: Spec | None, first: str | os.PathLike, second: str | os.PathLike, overrides: Overrides, *,
                   out: str | os.PathLike | None, resamples: int, seed: int, **options: Any) -> EvaluateResult:
    """``evaluate`` of ``first``, then of ``second`` on the same data, and their paired bootstrap difference."""
    from cvtrain.evaluation.analysis import compare

    if resamples <= 0:
        raise CvtrainError("a comparison needs bootstrap resamples", hint="give --resamples 1000 (the default)")
    for path in (first, second):
        read_checkpoint(path)  # both readable before either is scored
    base = Path(out) if out else None
    one = evaluate(spec, first, overrides, out=base / "first" if base else None, resamples=resamples, seed=seed,
                   **options)
    options.pop("data", None)  # the second checkpoint is scored on the first one's resolved data
    two = evaluate(one.config, second, overrides, out=base / "second" if base else None, resamples=resamples,
                   seed=seed, **options)
    one.comparison = compare(one.analysis, two.analysis, one.metrics, two.metrics)
    one.comparison.update({"first": {"checkpoint": str(first), "metrics": one.metrics, "intervals": one.intervals},
                           "second": {"checkpoint": str(second), "metrics": two.metrics, "intervals": two.intervals}})
    if is_rank_zero():
        write_json((base or one.out_dir) / "compare.json", one.comparison)
    return one


# -------------------------------------------------------------------------- test
def test(spec: Spec | None = None, checkpoint: str | os.PathLike = "", overrides: Overrides = None, *,
         data: str | os.PathLike | None = None, split: str | None = None, out: str | os.PathLike | None = None,
         progress: bool = True, **arguments: Any):
    """Run the spec's model tests (``tests`` section: flip, brightness, background, removal, corruption, slices).

    Args:
        spec: spec whose ``tests``, dataset and evaluation sections to use; default: the checkpoint's own.
        checkpoint: a ``.ckpt`` written by ``fit``.
        split: split to test on; default ``data.val_split``.
        out: folder for ``tests.json``, ``junit.xml`` and ``tests.html``; default ``<run>/test-<split>``.

    Returns:
        ``TestReport``: ``.outcomes``, ``.passed``, ``.exit_code`` (1 when a test failed), a table in a notebook.

    Raises:
        CvtrainError: no tests declared, a test that does not apply to the task, unreadable checkpoint.
    """
    from cvtrain.evaluation.model_tests import run_model_tests

    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    config = _config_for_checkpoint(payload, spec, overrides, data, arguments)
    if split:
        config.data.val_split = split
    if not config.tests.enabled():
        raise CvtrainError("the spec declares no model tests", where="tests",
                           hint="add e.g. 'tests: {flip: {}, brightness: {}}' (see docs/testing-models.md)")
    index = build_index(config.data, images_needed=True)
    check_checkpoint_fits(payload["hyper_parameters"], config.task, index.task, index.class_names, checkpoint)
    task = load_task(checkpoint, payload)
    val = DataModule.for_evaluation(config, index).val_index
    report = run_model_tests(task, config, index, val, progress=progress, checkpoint=str(checkpoint))
    report.write(Path(out) if out else checkpoint.resolve().parent.parent / f"test-{config.data.val_split}")
    return report


# ----------------------------------------------------------------------- predict
def predict(spec: Spec | None = None, checkpoint: str | os.PathLike = "", source: str | os.PathLike = "",
            out: str | os.PathLike | None = None, overrides: Overrides = None, *, overwrite: bool = False,
            score_threshold: float | None = None, model: str | os.PathLike | None = None,
            **arguments: Any) -> PredictResult:
    """Run a checkpoint on an image or a folder; write predictions JSON and drawn images.

    Args:
        spec: a spec whose ``eval`` section to use; default: the checkpoint's.
        checkpoint: a ``.ckpt`` written by ``fit``.
        source: an image file or a folder of images.
        out: output folder (new or empty unless ``overwrite``); default: the next free ``runs/predict[-N]``. A
            prediction that fails leaves no folder behind.
        overrides: ``key=value`` strings or a dict of dotted keys applied to the checkpoint's config.
        overwrite: replace what a non-empty ``out`` holds (the old contents are deleted once predict succeeds).
        score_threshold: lowest score drawn on the images (all detections go to the JSON).
        model: an ``.onnx`` file written by ``export``, run by onnxruntime, instead of ``checkpoint``.
        **arguments: ``accelerator`` (``cpu`` or ``gpu``; default: a GPU when there is one).

    Returns:
        ``PredictResult`` naming the output folder, the predictions file and the counts.

    Raises:
        CheckpointError: the checkpoint is unreadable.
        DataError: the source is missing or holds no images.
        CvtrainError: ``out`` is not empty and ``overwrite`` is not set.
    """
    from cvtrain.prediction import list_images, run_prediction

    task = None
    if model is not None:  # an exported file: onnxruntime in place of the network, the rest as for a checkpoint
        from cvtrain.export.runtime import load_onnx_task

        payload, task = load_onnx_task(model, device=arguments.get("accelerator"))
    else:
        checkpoint = Path(checkpoint)
        payload = read_checkpoint(checkpoint)
    config = _config_for_checkpoint(payload, None, overrides, None, {})
    if spec is not None:
        config = _config_for_checkpoint(payload, spec, overrides, None, {})
    if score_threshold is not None:
        config.eval.score_threshold = score_threshold
    task = load_task(checkpoint, payload) if task is None else task
    task.config.eval.score_threshold = config.eval.score_threshold  # the task draws with its own config
    list_images(Path(source))  # a missing source fails before any folder is made
    with output_dir(Path(out) if out else None, "predict", overwrite=overwrite) as out_dir:
        started = time.perf_counter()
        result = run_prediction(task, config, Path(source), out_dir, device=arguments.get("accelerator"))
    result.runtime = "PyTorch" if model is None else "onnxruntime"
    result.images_per_second = result.num_images / max(time.perf_counter() - started, 1e-9)
    return result


# ------------------------------------------------------------------------ export
def export(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *, format: str = "onnx",
           opset: int | None = None, image_size: tuple[int, int] | list[int] | None = None, dynamic_size: bool = False,
           batch: int | None = None, images: str | os.PathLike | None = None, verify: str | os.PathLike | None = None,
           overwrite: bool = False):
    """Export a checkpoint to ONNX and prove with onnxruntime that it answers as PyTorch does (docs/export.md).

    Args:
        checkpoint: a ``.ckpt`` written by ``fit``.
        out: the file to write; default ``<run>/export/<checkpoint name>.onnx``.
        format: ``onnx``.
        opset: ONNX opset, 11 to 20; default 17.
        image_size: ``(height, width)`` to fix the input size; default: height and width are dynamic.
        dynamic_size: say explicitly that height and width are dynamic (the default).
        batch: fix the batch; default 1 for detection and instance models, dynamic for semantic ones.
        images: an image file or folder for the parity check; default: the checkpoint's validation images.
        verify: an existing ``.onnx`` file to check against the checkpoint instead of exporting.
        overwrite: replace an existing file.

    Returns:
        ``ExportResult``: the file, its input shape, and the ``ParityReport`` (worst differences, images/s).

    Raises:
        ParityError: onnxruntime and PyTorch disagree; the file is kept as ``<out>.unverified`` (exit code 1).
    """
    from cvtrain.export.workflow import export_checkpoint, verify_export

    if verify is not None:
        return verify_export(checkpoint, verify, images=images)
    return export_checkpoint(checkpoint, out, export_format=format, opset=opset, image_size=image_size,
                             dynamic_size=dynamic_size, batch=batch, images=images, overwrite=overwrite)


# ----------------------------------------------------------------------- convert
def convert(data: str | os.PathLike | Mapping[str, Any] | Any, to: str, out: str | os.PathLike,
            overrides: Overrides = None, *, images: str = "copy", segments: bool = False):
    """Read a dataset in any format cvtrain reads and write it as COCO, VOC, YOLO or KITTI.

    Args:
        data: a dataset description YAML (or a spec whose ``data`` section to use), a dict, or a ``DataConfig``.
        to: ``coco``, ``voc``, ``yolo`` or ``kitti``.
        out: a new or empty folder; it receives the files and a ``dataset.yaml`` that reads them.
        overrides: ``data.*`` keys, as for ``check``.
        images: ``copy`` (default), ``link`` (hard links where possible), ``symlink`` or ``none``.
        segments: YOLO: write polygons as segmentation lines instead of boxes.

    Returns:
        A ``WriteResult``: ``.lost`` lists what the target format could not carry, with counts.

    Raises:
        CvtrainError: an unknown target, an output folder that is not empty, a dataset that cannot be read,
            or semantic masks (no boxes to write).
    """
    from cvtrain.config import DataConfig
    from cvtrain.data.writers import IMAGE_MODES, WRITERS, check_output

    if to not in WRITERS:
        raise ConfigError(f"cannot write format {to!r}", hint=f"choose one of {', '.join(sorted(WRITERS))}")
    if images not in IMAGE_MODES:
        raise ConfigError(f"images={images!r}", hint=f"choose one of {', '.join(IMAGE_MODES)}")
    out = Path(out)
    check_output(out)
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides or []]
    if isinstance(data, (str, os.PathLike)):
        data = load_data_description(Path(data), pairs)
    elif isinstance(data, Mapping):
        data = DataConfig.model_validate(dict(data))
    if isinstance(data, Config):
        data = data.data
    if not data.splits and "val_fraction" not in data.model_fields_set:
        data = data.model_copy(update={"val_fraction": 0.0})  # convert what is there; invent no split
    index = build_index(data)
    if index.task == "semantic_segmentation" or (not index.annotations and any(i.mask_file for i in index.images)):
        raise CvtrainError(f"semantic masks cannot be written as {to}: there are no boxes to carry over",
                           where=str(data.root), hint="convert detection or instance datasets")
    return WRITERS[to](index, out, images=images, segments=segments)


def _fresh_dir(requested: Path | None, name: str, overwrite: bool) -> Path:
    if requested is None:
        return choose_run_dir(None, name)
    if requested.exists() and any(requested.iterdir()) and not overwrite:
        raise CvtrainError("output folder is not empty", where=str(requested),
                           hint="give a new --out folder, or --overwrite to write into it")
    return requested


# ------------------------------------------------------------------------- audit
def audit(spec: Spec | None = None, overrides: Overrides = None, *, data: str | os.PathLike | None = None,
          checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          suggest: str | os.PathLike | None = None, folds: int | None = None, max_epochs: int | None = None,
          resume: bool = False, overwrite: bool = False, skip_checks: bool = False, **arguments: Any):
    """Find label errors with a model: K fold models predict the images they did not train on, and every
    annotation gets a score and a kind (swapped, badly located, spurious), as do objects nobody annotated (missing).

    Args:
        spec: YAML spec path, dict or ``Config``; its ``audit`` section sets folds, schedule and thresholds.
            Optional with ``checkpoint`` (the checkpoint's spec and dataset are used).
        overrides: ``key=value`` spec overrides, as for ``fit`` (``audit.folds=5``, ``audit.max_epochs=6``).
        data: dataset description YAML replacing the spec's ``data`` section.
        checkpoint: score with this model instead of training folds. Where it trained on the images the
            scores are in-sample and under-report errors (``audit.json`` says so).
        out: folder for the reports (must be new or empty unless ``resume``/``overwrite``);
            default ``runs/audit-<name>[-N]``.
        suggest: write a corrected COCO copy here for review (never over an existing file unless ``overwrite``).
        folds, max_epochs: ``audit.folds`` and ``audit.max_epochs``.
        resume: write into a used ``out``, keeping fold models that finished on the same images and schedule.
        overwrite: write into a used ``out`` and train every fold model again.
        skip_checks: audit without running the dataset checks first.
        **arguments: runtime flags for the fold models: ``amp``, ``gpus``, ``accelerator``, ``devices``,
            ``num_nodes``, ``seed``.

    Returns:
        ``AuditResult``: the files written (``audit.json``, ``audit.csv``, ``audit.html``), counts by kind and
        the worst records; it shows as a table in a notebook.

    Raises:
        CvtrainError: a bad spec, dataset, checkpoint or output path, before anything trains.
    """
    if spec is None and not checkpoint:
        raise CvtrainError("nothing to audit", hint="give a spec (-c spec.yaml), a --checkpoint, or both")
    checkpoint_path = Path(checkpoint) if checkpoint else None
    payload = read_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if payload is not None:
        config = _config_for_checkpoint(payload, spec, overrides, data, arguments)
        if spec is not None:  # the audit section is the given spec's, not the one the model trained with
            config.audit = load_config(spec, overrides, data=data).audit
    else:
        config = load_config(spec, overrides, data=data, **arguments)
    if folds is not None:
        config.audit.folds = folds
    if max_epochs is not None:
        config.audit.max_epochs = max_epochs
    suggest_path = Path(suggest) if suggest else None
    if suggest_path is not None and suggest_path.exists() and not overwrite:
        raise CvtrainError("suggestion file exists", where=str(suggest_path),
                           hint="give a new --suggest path, or --overwrite to replace it")
    # The processes a distributed fold model starts re-run this command: they take rank 0's folder.
    inherited = os.environ.get(AUDIT_DIR_ENV)
    out_dir = Path(inherited) if inherited else _fresh_dir(Path(out) if out else None,
                                                           f"audit-{config.name or 'run'}", overwrite or resume)
    os.environ[AUDIT_DIR_ENV] = str(out_dir)
    try:
        return _audit_into(out_dir, config, payload, checkpoint_path, suggest_path, overwrite, skip_checks, arguments)
    finally:
        if not inherited:
            os.environ.pop(AUDIT_DIR_ENV, None)


def _audit_into(out_dir: Path, config: Config, payload, checkpoint_path, suggest_path, overwrite: bool,
                skip_checks: bool, arguments: dict[str, Any]):
    from cvtrain.audit.runner import run_audit

    index = build_index(config.data, images_needed=True)
    if payload is not None:
        check_checkpoint_fits(payload["hyper_parameters"], config.task, index.task, index.class_names, checkpoint_path)
    rank_zero = is_rank_zero()
    if rank_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        print(f"audit directory: {out_dir}")
    if not skip_checks:
        index = _check_before_fit(index, config, out_dir)
    runtime = {key: value for key, value in arguments.items()
               if key in ("amp", "gpus", "accelerator", "devices", "num_nodes", "seed")}
    return run_audit(
        config,
        index,
        out_dir,
        fit=fit,
        checkpoint=checkpoint_path,
        suggest=suggest_path,
        arguments=runtime,
        reuse=not overwrite,
        log=print if rank_zero else (lambda *_: None),
    )
