"""K-fold training for the audit: each fold model trains on the other folds' images through ``cvtrain.api.fit``
(handed in by the API).

The folds are a seeded shuffle of the images (sorted by file name first, so the same files give the same folds on
every machine), dealt round-robin. Fold ``i`` trains in ``<out>/folds/fold-<i>`` with the spec's model, augmentation
and optimiser, the short schedule of the spec's ``audit`` section, and validates once, at its end, on the images it
will predict. ``fold.json`` there lists its images: with the run's ``config.yaml`` it says exactly what was trained.
A fold whose ``fold.json`` says it finished on the same images and schedule is not trained again.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cvtrain.data.index import DatasetIndex

FOLD_FILE = "fold.json"


@dataclass
class FoldRun:
    """One fold model: the images it holds out, where it trained, how it scored on them."""

    fold: int
    image_ids: list[int]
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


def assign_folds(index: DatasetIndex, folds: int, seed: int) -> dict[int, int]:
    """Image id -> fold ``0..folds-1``: a seeded shuffle dealt round-robin (fold sizes differ by at most one)."""
    order = sorted(index.images, key=lambda image: (image.file_name, image.id))
    random.Random(seed).shuffle(order)
    return {image.id: position % folds for position, image in enumerate(order)}


def fold_index(index: DatasetIndex, fold_of: dict[int, int], fold: int, train_split: str,
               val_split: str) -> DatasetIndex:
    """A copy of ``index`` whose fold ``fold`` is the validation split and every other image the training split."""
    images = [replace(image, split=val_split if fold_of[image.id] == fold else train_split) for image in index.images]
    return replace(index, images=images)


def fold_overrides(config) -> dict[str, Any]:
    """The spec keys a fold model trains with: the audit's short schedule, one validation at the end."""
    audit = config.audit
    epochs = audit.max_epochs or config.train.max_epochs
    # the fold models train on the labels as they are: an earlier audit's drops (checks.audit) stay out
    overrides: dict[str, Any] = {"train.max_epochs": epochs, "train.val_every_n_epochs": epochs,
                                 "eval.num_log_images": 0, "checks.audit": None}
    if audit.max_steps:
        overrides["train.max_steps"] = audit.max_steps
    overrides.update(audit.overrides)
    return overrides


def train_folds(config, index: DatasetIndex, out_dir: Path, *, fit: Any, arguments: dict[str, Any] | None = None,
                reuse: bool = True, log=print) -> list[FoldRun]:
    """Train ``config.audit.folds`` models, each without one fold of ``index``.

    Args:
        config: the resolved spec (``Config``).
        index: the whole dataset to audit (every split).
        out_dir: the audit's folder; fold runs go into ``folds/fold-<i>``.
        arguments: ``fit``'s runtime arguments (``amp``, ``gpus``, ``accelerator``, ``devices``, ``num_nodes``).
        reuse: keep fold models that finished on the same images and schedule (``fold.json``).
        log: where the one-line progress notes go.

    Returns:
        One ``FoldRun`` per fold, with the checkpoint that predicts its held-out images.
    """
    from cvtrain.atomic import write_json
    from cvtrain.engine.rundir import is_rank_zero

    folds = config.audit.folds
    fold_of = assign_folds(index, folds, config.audit.fold_seed)
    overrides = fold_overrides(config)
    spec = config.model_dump(mode="json")
    runs = []
    for fold in range(folds):
        held_out = sorted(image_id for image_id, f in fold_of.items() if f == fold)
        run_dir = out_dir / "folds" / f"fold-{fold}"
        description = {"fold": fold, "folds": folds, "fold_seed": config.audit.fold_seed, "overrides": overrides,
                       "held_out": held_out, "fingerprint": index.fingerprint()}
        previous = _finished(run_dir, description) if reuse else None
        if previous is not None:
            log(f"fold {fold + 1}/{folds}: already trained in {run_dir}, reused")
            runs.append(FoldRun(fold, held_out, run_dir, run_dir / "checkpoints" / "last.ckpt",
                                previous.get("metrics", {}), previous.get("per_class", {}), reused=True))
            continue
        log(f"fold {fold + 1}/{folds}: training on {len(index.images) - len(held_out)} images, "
            f"holding out {len(held_out)}")
        part = fold_index(index, fold_of, fold, config.data.train_split, config.data.val_split)
        result = fit(spec, overrides, index=part, run_dir=run_dir, overwrite=True, skip_checks=True,
                     **(arguments or {}))
        checkpoint = result.last_checkpoint or result.best_checkpoint
        run = FoldRun(fold, held_out, result.run_dir, checkpoint, result.metrics, result.per_class)
        if is_rank_zero():
            write_json(result.run_dir / FOLD_FILE, {**description, "finished": True, "metrics": result.metrics,
                                                    "per_class": result.per_class})
        runs.append(run)
    return runs


def _finished(run_dir: Path, description: dict[str, Any]) -> dict[str, Any] | None:
    import json

    path = run_dir / FOLD_FILE
    if not path.is_file() or not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = saved.get("finished") and all(saved.get(key) == value for key, value in description.items())
    return saved if same else None
