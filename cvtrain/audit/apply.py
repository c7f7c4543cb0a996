"""``checks.audit: audit.json`` in ``cvtrain fit``: train without the annotations an audit flagged.

Annotations whose record scores at least ``checks.audit_threshold`` (swapped, badly located, spurious) are left
out of training; for semantic segmentation, the images holding a flagged region are. Missing annotations cannot
be dropped (there is nothing to drop): ``--suggest`` writes them into a copy for review instead. What was dropped
goes to ``<run>/audit_dropped.json``; the dataset on disk is not touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cvtrain.data.index import DatasetIndex
from cvtrain.errors import DataError

SCHEMA_VERSION = 1
DROPPED_FILE = "audit_dropped.json"


@dataclass
class AuditFile:
    """An ``audit.json`` read back: where it is and what it holds."""

    path: Path
    payload: dict[str, Any]


def read_audit(path: str | Path) -> AuditFile:
    """Read and check an ``audit.json`` (cheap: done before anything trains).

    Raises:
        DataError: the file is missing, not JSON, or not an audit of this schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("audit file not found", where=str(path), hint="give the audit.json that 'cvtrain audit' wrote")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DataError(f"audit file is not JSON: {error}", where=str(path),
                        hint="give the audit.json that 'cvtrain audit' wrote") from None
    if not isinstance(payload, dict) or payload.get("schema_version") != SCHEMA_VERSION or "records" not in payload:
        raise DataError(f"not a cvtrain audit (schema_version {SCHEMA_VERSION} with records)", where=str(path),
                        hint="give the audit.json that 'cvtrain audit' wrote")
    return AuditFile(path, payload)


@dataclass
class DropSummary:
    """What ``drop_flagged`` left out."""

    annotations: int
    images: int
    threshold: float
    listing: Path | None


def drop_flagged(index: DatasetIndex, audit: AuditFile, threshold: float, run_dir: Path, *,
                 write: bool = True) -> tuple[DatasetIndex, DropSummary]:
    """A copy of ``index`` without what the audit flags at ``threshold`` or above.

    Args:
        index: the dataset about to be trained on.
        audit: ``read_audit``'s result.
        threshold: records scoring at least this are dropped.
        run_dir: receives ``audit_dropped.json`` (when ``write``).

    Raises:
        DataError: the audit names annotations that this dataset does not have (another dataset's audit).
    """
    # records resting on a class the fold models did not learn are never flagged (weak_class), whatever the threshold
    records = [r for r in audit.payload["records"] if r.get("score", 0.0) >= threshold and not r.get("weak_class")]
    by_id = {annotation.id: annotation for annotation in index.annotations}
    dropped_annotations, dropped_images = [], {}
    strangers = []
    for record in records:
        annotation_id = record.get("annotation_id")
        if record.get("kind") == "missing":
            continue
        if annotation_id is None:  # a semantic region: its image goes
            dropped_images.setdefault(record["image_id"], record)
            continue
        annotation = by_id.get(annotation_id)
        if annotation is None or annotation.image_id != record.get("image_id"):
            strangers.append(annotation_id)
            continue
        dropped_annotations.append({"id": annotation_id, "image_id": annotation.image_id, "kind": record["kind"],
                                    "score": record["score"]})
    if strangers:
        raise DataError(f"{len(strangers)} flagged annotation(s) are not in this dataset (e.g. id {strangers[0]})",
                        where=str(audit.path), hint="use the audit.json made on this dataset, or remove checks.audit")
    gone = {entry["id"] for entry in dropped_annotations}
    images = [image for image in index.images if image.id not in dropped_images]
    kept_ids = {image.id for image in images}
    annotations = [a for a in index.annotations if a.id not in gone and a.image_id in kept_ids]
    listing = None
    if write:
        listing = Path(run_dir) / DROPPED_FILE
        listing.parent.mkdir(parents=True, exist_ok=True)
        from cvtrain.atomic import write_json

        write_json(listing, {
            "schema_version": SCHEMA_VERSION, "audit": str(audit.path), "threshold": threshold,
            "annotations": dropped_annotations,
            "images": [{"id": image_id, "kind": r["kind"], "score": r["score"]}
                       for image_id, r in dropped_images.items()],
            "kept": {"images": len(images), "annotations": len(annotations)}})
    summary = DropSummary(len(dropped_annotations), len(dropped_images), threshold, listing)
    return replace(index, images=images, annotations=annotations), summary
