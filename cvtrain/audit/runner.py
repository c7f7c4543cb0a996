"""One audit from start to end: fold models (or one given checkpoint), predictions, scores, reports."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from cvtrain.audit.folds import train_folds
from cvtrain.audit.predict import predict_index
from cvtrain.audit.report import (
    build_payload,
    weak_class_note,
    write_csv,
    write_html,
    write_json_report,
    write_suggestion,
)
from cvtrain.audit.scores import score_annotations, score_regions
from cvtrain.data.index import DatasetIndex

PREDICTIONS_FILE = "predictions.json"


@dataclass
class AuditResult:
    """What ``audit`` produced: the files, the counts by kind, the worst records (``audit.json`` has them all)."""

    out_dir: Path
    audit_file: Path
    csv_file: Path
    html_file: Path
    suggest_file: Path | None
    mode: str  # out_of_fold | checkpoint
    num_images: int
    num_annotations: int
    flagged: int
    by_kind: dict[str, dict[str, int]]
    top: list[dict[str, Any]] = field(default_factory=list)  # the first 20 records (weak-class ones rank last)
    warning: str | None = None
    seconds: float = 0.0
    weak_classes: list[str] = field(default_factory=list)  # classes the model has not learned (records set aside)
    set_aside: int = 0  # records at the flag threshold that rest on a weak class, so are not flagged

    def _repr_html_(self) -> str:
        counts = "".join(f"<tr><td>{kind}</td><td>{c['records']}</td><td>{c['flagged']}</td></tr>"
                         for kind, c in self.by_kind.items() if c["records"])
        worst = "".join(
            f"<tr><td>{r['rank']}</td><td>{escape(r['kind'])}</td><td>{r['score']:.3f}</td>"
            f"<td>{escape(str(r['file_name']))}</td>"
            f"<td>{r['annotation_id'] if r['annotation_id'] is not None else '-'}</td>"
            f"<td>{escape(str((r['given'] or {}).get('category') or '-'))}</td>"
            f"<td>{escape(r['suggested']['action'])} {escape(str(r['suggested'].get('category') or ''))}</td></tr>"
            for r in self.top[:10])
        notes = [self.warning] if self.warning else []
        if self.weak_classes:
            notes.append(weak_class_note(self.weak_classes, self.set_aside))
        warning = "".join(f"<p style='color:#8a5200'>{escape(note)}</p>" for note in notes)
        return (f"<b>cvtrain audit</b> ({escape(self.mode)}): {self.num_images} images, {self.num_annotations} "
                f"annotations, {self.flagged} flagged, {self.seconds:.0f} s; report <code>{escape(str(self.html_file))}"
                f"</code>{warning}<table><tr><th>kind</th><th>records</th><th>flagged</th></tr>{counts}</table>"
                "<table><tr><th>rank</th><th>kind</th><th>score</th><th>image</th><th>annotation</th><th>given</th>"
                f"<th>suggestion</th></tr>{worst}</table>")


def run_audit(config, index: DatasetIndex, out_dir: Path, *, fit: Any = None, checkpoint: Path | None = None,
              suggest: Path | None = None, arguments: dict[str, Any] | None = None, reuse: bool = True,
              log=print) -> AuditResult:
    """Audit ``index`` with fold models trained from ``config`` (or with ``checkpoint``'s model) into ``out_dir``.

    Args:
        config: the resolved spec; its ``audit`` section sets the folds, schedule and thresholds.
        index: the whole dataset (every split).
        out_dir: receives ``audit.json``, ``audit.csv``, ``audit.html``, ``predictions.json`` and ``folds/``.
        checkpoint: score with this model instead of training folds (in-sample where it trained on the images).
        suggest: write a corrected COCO copy there.
        arguments: ``fit``'s runtime arguments for the fold models.
        reuse: keep fold models already trained in ``out_dir`` on the same images and schedule.

    Returns:
        ``AuditResult``.
    """
    from cvtrain.atomic import write_json
    from cvtrain.engine.checkpoints import load_task
    from cvtrain.engine.rundir import is_rank_zero
    from cvtrain.prediction import pick_device

    started = time.time()
    audit = config.audit
    semantic = config.task == "semantic_segmentation"
    device = pick_device(config.trainer.accelerator if config.trainer.accelerator != "auto" else None)
    workers = config.train.num_workers  # WorkerLoader resolves auto
    predictions: list = []
    models: list[dict[str, Any]] = []
    if checkpoint is not None:
        task = load_task(checkpoint)
        predictions = predict_index(task, config, index, device=device, min_score=audit.min_score,
                                    batch_size=audit.batch_size, num_workers=workers,
                                    description="predict (checkpoint)")
        models.append({"fold": None, "images": len(index.images), "checkpoint": str(checkpoint), "metrics": {},
                       "per_class": {}})
    else:
        runs = train_folds(config, index, out_dir, fit=fit, arguments=arguments, reuse=reuse, log=log)
        if not is_rank_zero():  # the other ranks of a distributed run only help train
            return None  # type: ignore[return-value]
        for run in runs:
            task = load_task(run.checkpoint)
            predictions += predict_index(task, config, index.subset(run.image_ids), device=device,
                                         min_score=audit.min_score, batch_size=audit.batch_size, num_workers=workers,
                                         description=f"predict fold {run.fold + 1}/{len(runs)}")
            models.append({"fold": run.fold, "images": len(run.image_ids), "checkpoint": str(run.checkpoint),
                           "metrics": run.metrics, "per_class": run.per_class})
    if semantic:
        records, calibration = score_regions(predictions, [c.id for c in index.categories], audit)
    else:
        write_json(out_dir / PREDICTIONS_FILE, predictions)
        records, calibration = score_annotations(index, predictions, audit,
                                                 use_masks=config.task == "instance_segmentation")
    mode = "checkpoint" if checkpoint is not None else "out_of_fold"
    payload = build_payload(index, records, calibration, config, mode=mode, models=models,
                            seconds=time.time() - started)
    audit_file = write_json_report(out_dir, payload)
    csv_file = write_csv(out_dir, payload)
    html_file = write_html(out_dir, payload, index, top=audit.top, palette=config.data.palette)
    if suggest is not None:
        changes = write_suggestion(suggest, index, payload)
        log(f"suggested corrections in {suggest}: " + ", ".join(f"{n} {action}" for action, n in changes.items()))
    return AuditResult(out_dir=out_dir, audit_file=audit_file, csv_file=csv_file, html_file=html_file,
                       suggest_file=suggest, mode=mode, num_images=len(index.images),
                       num_annotations=len(index.annotations), flagged=payload["summary"]["flagged"],
                       by_kind=payload["summary"]["by_kind"], top=payload["records"][:20], warning=payload["warning"],
                       seconds=time.time() - started, weak_classes=payload["weak_classes"],
                       set_aside=payload["summary"]["weak_class"])
