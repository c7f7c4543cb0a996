"""The checks ``cvtrain fit`` runs first: stop on errors, or drop what they point at."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from cvtrain.atomic import write_text
from cvtrain.config.schema import ChecksConfig
from cvtrain.curation.report import Report
from cvtrain.curation.runner import run_checks
from cvtrain.data.index import DatasetIndex
from cvtrain.errors import CvtrainError

# Errors about a whole image (or its id) drop the image and its annotations; others drop one annotation.
IMAGE_CODES = {"file.outside_root", "image.missing", "image.corrupt", "image.size_mismatch", "image.duplicate_id",
               "mask.missing", "mask.corrupt", "mask.unknown_value", "mask.size_mismatch"}


class DatasetCheckError(CvtrainError):
    """The dataset has errors and ``checks.on_error`` is ``stop``."""

    exit_code = 1


def preflight(index: DatasetIndex, checks_config: ChecksConfig | None, image_size: int | None,
              run_dir: str | Path, *, progress: bool = True, write: bool = True) -> tuple[DatasetIndex, Report]:
    """Check ``index`` before training; write the report into ``run_dir``.

    Args:
        index: the dataset about to be trained on.
        checks_config: the spec's ``checks`` section (defaults when None).
        image_size: ``train.image_size``.
        run_dir: the run directory; receives ``report.json``, ``report.html`` and,
            with ``on_error: drop``, ``dropped.json``.
        write: write those files; False on the other ranks of a distributed run,
            which check the same data to drop the same things.

    Returns:
        ``(index_to_train_on, report)``: the same index when there are no errors, a
        new one without the offending annotations and images under ``on_error: drop``.

    Raises:
        DatasetCheckError: errors were found and ``on_error`` is ``stop``, or an error
            cannot be fixed by dropping (e.g. a class-level error from an override).
    """
    config = checks_config or ChecksConfig()
    run_dir = Path(run_dir)
    report = run_checks(index, config, image_size=image_size, progress=progress)
    if write:
        report.write(run_dir)
    errors = report.count("error")
    if not errors:
        return index, report
    where = str(run_dir / "report.html")
    codes = ", ".join(f"{code} x{report.counts[code]}" for code in report.codes() if report.severities[code] == "error")
    if config.on_error == "stop":
        error = DatasetCheckError(f"dataset check found {errors} error(s): {codes}; see {where}", hint=(
            "fix the data, set checks.on_error=drop to train without them, or pass --skip-checks"))
        error.report = report
        raise error
    return drop_errors(index, report, run_dir, write=write), report


def drop_errors(index: DatasetIndex, report: Report, run_dir: Path, *, write: bool = True) -> DatasetIndex:
    """A new index without what the error findings point at; ``dropped.json`` lists it."""
    drop_images: dict[int, str] = {}
    drop_annotations: dict[int, str] = {}
    stuck = []
    for finding in report.errors:
        if finding.code == "image.duplicate_id":  # which image owns the annotations is ambiguous: drop all
            for row, image in enumerate(index.images):
                if image.id == finding.image_id:
                    drop_images.setdefault(row, finding.code)
        elif finding.code in IMAGE_CODES and finding.image_row is not None:
            drop_images.setdefault(finding.image_row, finding.code)
        elif finding.annotation_row is not None:
            drop_annotations.setdefault(finding.annotation_row, finding.code)
        else:
            stuck.append(finding)
    if stuck:
        codes = sorted({f.code for f in stuck})
        raise DatasetCheckError(f"{len(stuck)} error(s) cannot be fixed by dropping data ({', '.join(codes)}); "
                                f"see {run_dir / 'report.html'}", hint="fix the data or the checks.severity_overrides")
    gone_ids = {index.images[row].id for row in drop_images}
    # an id shared by a kept image still names it, so only ids with no image left drop their annotations
    kept_ids = {image.id for row, image in enumerate(index.images) if row not in drop_images}
    gone_ids -= kept_ids
    images = [image for row, image in enumerate(index.images) if row not in drop_images]
    annotations = []
    dropped_annotations = []
    for row, annotation in enumerate(index.annotations):  # one pass to rebuild the list; runs once per fit
        code = drop_annotations.get(row) or ("image dropped" if annotation.image_id in gone_ids else None)
        if code is None:
            annotations.append(annotation)
        else:
            dropped_annotations.append({"id": annotation.id, "image_id": annotation.image_id, "reason": code})
    listing = {
        "schema_version": 1,
        "images": [{"id": index.images[row].id, "file_name": index.images[row].file_name, "reason": code}
                   for row, code in sorted(drop_images.items())],
        "annotations": dropped_annotations,
        "kept": {"images": len(images), "annotations": len(annotations)},
    }
    if not write:
        return replace(index, images=images, annotations=annotations)
    write_text(run_dir / "dropped.json", json.dumps(listing, indent=1))
    return replace(index, images=images, annotations=annotations)
