"""What an audit writes: ``audit.json`` (stable schema), ``audit.csv`` (the flagged records, for relabelling tools),
``audit.html`` (the worst images, given labels and suggestions side by side, filterable by kind and class) and, on
request, a corrected COCO copy for review. Nothing in the dataset is changed.

``audit.json``, schema version 1::

    schema_version, task, mode ("out_of_fold" | "checkpoint"), warning (null, or why the scores under-report),
    created, seconds,
    dataset: {root, format, fingerprint, images, annotations, classes: [{id, name}]},
    audit: the spec's audit section,
    models: [{fold, images, checkpoint, metrics, per_class}],
    calibration: {class name: {category_id, threshold, mean_self_confidence, typical_iou, supported}},
    weak_classes: [class names the model is less sure of than audit.min_threshold: their labels cannot be judged],
    summary: {records, flagged, weak_class, by_kind: {kind: {records, flagged}}},
    images: [{image_id, file_name, score, flagged}]            (highest score first)
    records: [{rank, kind, score, flagged, weak_class, image_id, file_name, annotation_id,
               given: {category_id, category, bbox[, pixels]} | null,
               suggested: {action, category_id, category, bbox, confidence[, iou]},
               kind_scores: {kind: score}}]

Boxes are ``[x, y, width, height]`` in the original image's pixels. Every scored annotation has a record; missing
annotations have ``annotation_id`` null and ``given`` null. A record whose given or suggested class is one of
``weak_classes`` has ``weak_class`` true: the model cannot judge it, so it is never flagged, and it is ranked after
every other record (highest score first within each group). An image's score is its highest record that is not
``weak_class``; ``summary.weak_class`` counts the records set aside that would otherwise have been flagged.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.audit.scores import KINDS, Calibration, Record, image_scores
from cvtrain.data.index import DatasetIndex

SCHEMA_VERSION = 1
IN_SAMPLE_WARNING = ("in-sample scores: the model trained on these images, so it has partly learned their label "
                     "errors and the scores under-report them; audit with folds for out-of-fold scores")
THUMBNAIL = 360  # px, the longer side of each panel in audit.html
GIVEN, SUGGESTED, OTHER = (230, 40, 40), (30, 200, 60), (170, 170, 170)


def build_payload(index: DatasetIndex, records: list[Record], calibration: Calibration, config, *, mode: str,
                  models: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The ``audit.json`` document (see the module docstring for its schema)."""
    names = {category.id: category.name for category in index.categories}
    files = {image.id: image.file_name for image in index.images}
    threshold = config.audit.flag_threshold
    weak_ids = {c for c, raw in calibration.raw_thresholds.items() if raw < config.audit.min_threshold}
    weak = [names[c] for c in calibration.raw_thresholds if c in weak_ids]
    resting = [_rests_on(record, weak_ids) for record in records]
    judged = [record for record, weak_class in zip(records, resting) if not weak_class]
    set_aside = [record for record, weak_class in zip(records, resting) if weak_class]
    flagged = [r for r in judged if r.score >= threshold]
    rows = []
    ordered = [(record, False) for record in judged] + [(record, True) for record in set_aside]
    for rank, (record, weak_class) in enumerate(ordered, start=1):
        row = record.to_json()
        if row["given"] is not None:
            row["given"] = {**row["given"], "category": names.get(row["given"]["category_id"])}
        row["suggested"] = {**row["suggested"], "category": names.get(row["suggested"].get("category_id"))}
        rows.append({"rank": rank, **row, "flagged": not weak_class and record.score >= threshold,
                     "weak_class": weak_class, "file_name": files.get(record.image_id)})
    per_image = image_scores(judged, files)
    flagged_per_image: dict[int, int] = {}
    for record in flagged:
        flagged_per_image[record.image_id] = flagged_per_image.get(record.image_id, 0) + 1
    by_kind = {kind: {"records": sum(r.kind == kind for r in records),
                      "flagged": sum(r.kind == kind for r in flagged)} for kind in KINDS}
    def rounded(values: dict[int, float], category: int, digits: int) -> float | None:
        return round(values[category], digits) if category in values else None

    calibration_rows = {names[c]: {"category_id": c, "threshold": round(t, 5),
                                   "mean_self_confidence": rounded(calibration.raw_thresholds, c, 5),
                                   "typical_iou": rounded(calibration.typical_iou, c, 4),
                                   "supported": rounded(calibration.supported, c, 4)}
                        for c, t in calibration.thresholds.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "task": index.task,
        "mode": mode,
        "warning": IN_SAMPLE_WARNING if mode == "checkpoint" else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "dataset": {"root": str(index.root), "format": index.format, "fingerprint": index.fingerprint(),
                    "images": len(index.images), "annotations": len(index.annotations),
                    "classes": [{"id": c.id, "name": c.name} for c in index.categories]},
        "audit": config.audit.model_dump(mode="json"),
        "models": models,
        "calibration": calibration_rows,
        "weak_classes": weak,
        "summary": {"records": len(records), "flagged": len(flagged),
                    "weak_class": sum(r.score >= threshold for r in set_aside), "by_kind": by_kind},
        "images": [{"image_id": i, "file_name": files[i], "score": round(s, 5), "flagged": flagged_per_image.get(i, 0)}
                   for i, s in sorted(per_image.items(), key=lambda pair: -pair[1])],
        "records": rows,
    }


def weak_class_note(weak_classes: list[str], set_aside: int) -> str:
    """The one-line note the page, the CLI and the notebook give when the model has not learned some classes.

    Example:
        >>> weak_class_note(["fig", "hazelnut"], 3).startswith("the model has not learned fig, hazelnut (mean score")
        True
        >>> weak_class_note(["fig"], 3).split(": ")[1].split(" scored")[0]
        '3 records resting on them'
    """
    return (f"the model has not learned {', '.join(weak_classes)} (mean score where annotated below "
            f"audit.min_threshold), so their labels cannot be judged: {set_aside} records resting on them scored at "
            "or above the flag threshold and are not flagged (audit.json lists them last)")


def _rests_on(record: Record, weak_ids: set[int]) -> bool:
    """Whether the record's given or suggested class is one the model has not learned."""
    given = (record.given or {}).get("category_id")
    return given in weak_ids or record.suggested.get("category_id") in weak_ids


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json_report(out_dir: Path, payload: dict[str, Any]) -> Path:
    from cvtrain.atomic import write_json

    path = out_dir / "audit.json"
    write_json(path, payload)
    return path


CSV_COLUMNS = ["rank", "kind", "score", "image_id", "file_name", "annotation_id", "given_category", "given_x",
               "given_y", "given_width", "given_height", "action", "suggested_category", "suggested_x", "suggested_y",
               "suggested_width", "suggested_height", "confidence"]


def write_csv(out_dir: Path, payload: dict[str, Any]) -> Path:
    """``audit.csv``: the flagged records, worst first, one per line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in payload["records"]:
        if not row["flagged"]:
            continue
        given, suggested = row["given"] or {}, row["suggested"]
        writer.writerow([row["rank"], row["kind"], row["score"], row["image_id"], row["file_name"],
                         row["annotation_id"], given.get("category"), *(given.get("bbox") or [None] * 4),
                         suggested.get("action"), suggested.get("category"), *(suggested.get("bbox") or [None] * 4),
                         suggested.get("confidence")])
    path = out_dir / "audit.csv"
    _atomic_text(path, buffer.getvalue())
    return path


def write_suggestion(path: Path, index: DatasetIndex, payload: dict[str, Any]) -> dict[str, int]:
    """A COCO copy of the dataset with the flagged records applied, each changed annotation marked ``audit``.

    Swapped classes are relabelled, badly located boxes moved (their polygons dropped: they no longer match),
    spurious annotations removed and missing ones added. File names stay relative to ``data.root``.

    Returns:
        Counts of what changed, by action.
    """
    coco = index.to_coco()
    by_id = {annotation["id"]: annotation for annotation in coco["annotations"]}
    removed: set[int] = set()
    next_id = max(by_id, default=0) + 1
    changes = {"relabel": 0, "move": 0, "delete": 0, "add": 0}
    for row in payload["records"]:
        if not row["flagged"]:
            continue
        suggested = row["suggested"]
        action = suggested["action"]
        if action == "add":
            x, y, w, h = suggested["bbox"]
            coco["annotations"].append({"id": next_id, "image_id": row["image_id"],
                                        "category_id": suggested["category_id"], "bbox": suggested["bbox"],
                                        "area": float(w * h), "iscrowd": 0,
                                        "audit": {"kind": row["kind"], "score": row["score"]}})
            next_id += 1
        else:
            annotation = by_id.get(row["annotation_id"])
            if annotation is None:
                continue
            annotation["audit"] = {"kind": row["kind"], "score": row["score"],
                                   "original": {"category_id": annotation["category_id"], "bbox": annotation["bbox"]}}
            if action == "relabel":
                annotation["category_id"] = suggested["category_id"]
            elif action == "move":
                annotation["bbox"] = suggested["bbox"]
                annotation["area"] = float(suggested["bbox"][2] * suggested["bbox"][3])
                annotation.pop("segmentation", None)
            elif action == "delete":
                removed.add(annotation["id"])
        changes[action] += 1
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] not in removed]
    coco["info"] = {"description": "cvtrain audit suggestions: review before use", "audit": payload["created"]}
    _atomic_text(path, json.dumps(coco))
    return changes


# -------------------------------------------------------------------------------------------------- html
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} .muted{color:#666;font-size:12px}
.warn{background:#fdf0d9;color:#8a5200;padding:8px;border-radius:4px}
.card{border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0} .panels{display:flex;gap:10px;flex-wrap:wrap}
.panel{font-size:12px;text-align:center} .panel img{border:1px solid #bbb;display:block}
.given{color:#c02020;font-weight:600} .suggested{color:#1d8a32;font-weight:600} img.plot{max-width:100%}
"""
SCRIPT = """
function filterCards(){var k=document.getElementById('kind').value,c=document.getElementById('klass').value,n=0;
document.querySelectorAll('.card').forEach(function(e){var ok=(!k||e.dataset.kinds.split(' ').includes(k))&&
(!c||e.dataset.classes.split('|').includes(c));e.style.display=ok?'':'none';if(ok)n++;});
document.getElementById('shown').textContent=n;}
"""


def write_html(out_dir: Path, payload: dict[str, Any], index: DatasetIndex, *, top: int,
               palette: dict[int, list[int]] | None = None) -> Path:
    """``audit.html``: summary, calibration, the score distribution, and the worst ``top`` images drawn."""
    threshold = payload["audit"]["flag_threshold"]
    names = {c["id"]: c["name"] for c in payload["dataset"]["classes"]}
    records_by_image: dict[int, list[dict]] = {}
    for row in payload["records"]:
        records_by_image.setdefault(row["image_id"], []).append(row)
    worst = [entry for entry in payload["images"] if entry["score"] > 0][:top]
    cards = [_card(index, entry, records_by_image.get(entry["image_id"], []), threshold, names, palette)
             for entry in worst]
    kinds = "".join(f"<option value='{k}'>{k}</option>" for k in KINDS)
    classes = "".join(f"<option value='{escape(n, quote=True)}'>{escape(n)}</option>" for n in names.values())
    warning = f"<p class='warn'>{escape(payload['warning'])}</p>" if payload.get("warning") else ""
    weak = payload.get("weak_classes") or []
    weak_note = (f"<p class='warn'>{escape(weak_class_note(weak, payload['summary'].get('weak_class', 0)))}</p>"
                 if weak else "")
    plot = _score_plot(payload)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cvtrain audit</title><style>{STYLE}</style>"
        f"<script>{SCRIPT}</script></head><body>",
        f"<h1>Label audit: {escape(payload['dataset']['root'])}</h1>",
        f"<p class='muted'>{escape(payload['task'])}; {payload['dataset']['images']} images, "
        f"{payload['dataset']['annotations']} annotations; mode {escape(payload['mode'])}; "
        f"{payload['summary']['flagged']} records flagged at score &ge; {threshold}; {payload['seconds']} s</p>",
        warning, weak_note, _summary_table(payload), _models_table(payload), _calibration_table(payload),
        f"<h2>Score distribution</h2><img class='plot' alt='scores by kind' src='data:image/png;base64,{plot}'>"
        if plot else "",
        f"<h2>The {len(cards)} worst images</h2><p class='muted'>left: the given annotations (flagged ones in red, "
        f"others grey); right: the model's suggestion (green; a red cross: delete)</p>"
        f"<p>kind <select id='kind' onchange='filterCards()'><option value=''>all</option>{kinds}</select> "
        f"class <select id='klass' onchange='filterCards()'><option value=''>all</option>{classes}</select> "
        f"<span class='muted'><span id='shown'>{len(cards)}</span> shown</span></p>",
        *cards, "</body></html>"]
    path = out_dir / "audit.html"
    _atomic_text(path, "\n".join(part for part in parts if part))
    return path


def _summary_table(payload: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{kind}</td><td>{counts['records']}</td><td>{counts['flagged']}</td></tr>"
                   for kind, counts in payload["summary"]["by_kind"].items() if counts["records"])
    return f"<h2>Summary</h2><table><tr><th>kind</th><th>records</th><th>flagged</th></tr>{rows}</table>"


def _models_table(payload: dict[str, Any]) -> str:
    if not payload["models"]:
        return ""
    rows = []
    for model in payload["models"]:
        metrics = model.get("metrics") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("mAP", "AP50", "segm_AP", "mIoU")
                          and isinstance(v, (int, float)))
        rows.append(f"<tr><td>{model.get('fold', '-')}</td><td>{model.get('images', '-')}</td>"
                    f"<td>{escape(shown or '-')}</td><td><code>{escape(str(model.get('checkpoint')))}</code></td></tr>")
    return ("<h2>Models</h2><p class='muted'>each fold model validated on the images it then predicted</p><table><tr>"
            f"<th>fold</th><th>images predicted</th><th>validation</th><th>checkpoint</th></tr>{''.join(rows)}</table>")


def _calibration_table(payload: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{c['threshold']}</td><td>{c['typical_iou'] or '-'}</td>"
                   f"<td>{c['supported'] if c['supported'] is not None else '-'}</td></tr>"
                   for name, c in payload["calibration"].items())
    return ("<h2>Per-class calibration</h2><p class='muted'>threshold: the mean score the model gives the class where "
            "it is annotated; typical IoU: how well its confident predictions fit the class's boxes; supported: the "
            "share of the class's annotations it finds at the threshold</p><table><tr><th>class</th><th>threshold</th>"
            f"<th>typical IoU</th><th>supported</th></tr>{rows}</table>")


def _score_plot(payload: dict[str, Any]) -> str | None:
    """Histogram of the records' scores, one line per kind, as base64 PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op where a notebook backend is already active
    import matplotlib.pyplot as plt

    by_kind: dict[str, list[float]] = {}
    for row in payload["records"]:
        by_kind.setdefault(row["kind"], []).append(row["score"])
    if not by_kind:
        return None
    figure, axis = plt.subplots(figsize=(8, 2.8))
    bins = np.linspace(0, 1, 41)
    for kind, scores in by_kind.items():
        axis.hist(scores, bins=bins, histtype="step", linewidth=1.6, label=f"{kind} ({len(scores)})")
    axis.axvline(payload["audit"]["flag_threshold"], color="black", linestyle="--", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("score (1: surely a label error)")
    axis.set_ylabel("records")
    axis.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _card(index: DatasetIndex, entry: dict, rows: list[dict], threshold: float, names: dict[int, str],
          palette) -> str:
    shown = [r for r in rows if r["flagged"]] or rows[:1]
    given_panel, suggested_panel = _panels(index, entry["image_id"], shown, names, palette)
    kinds = " ".join(sorted({r["kind"] for r in shown}))
    classes = "|".join(sorted({escape(str(n), quote=True) for r in shown for n in
                               ((r["given"] or {}).get("category"), r["suggested"].get("category")) if n}))
    lines = "".join(
        f"<tr><td>{r['rank']}</td><td>{r['kind']}</td><td>{r['score']:.3f}</td>"
        f"<td>{escape(_describe(r['given']))}</td><td>{escape(r['suggested']['action'])} "
        f"{escape(_describe(r['suggested']))}</td></tr>" for r in shown)
    return (f"<div class='card' data-kinds='{kinds}' data-classes='{classes}'>"
            f"<b>{escape(entry['file_name'])}</b> <span class='muted'>image id {entry['image_id']}, score "
            f"{entry['score']:.3f}</span><div class='panels'>"
            f"<div class='panel'>{given_panel}<span class='given'>given</span></div>"
            f"<div class='panel'>{suggested_panel}<span class='suggested'>suggested</span></div></div>"
            f"<table><tr><th>rank</th><th>kind</th><th>score</th><th>given</th><th>suggestion</th></tr>{lines}"
            f"</table></div>")


def _describe(part: dict | None) -> str:
    if not part:
        return "-"
    box = part.get("bbox")
    where = f" at [{', '.join(f'{v:.0f}' for v in box)}]" if box else ""
    extra = f" ({part['pixels']} px)" if part.get("pixels") else ""
    return f"{part.get('category') or ''}{where}{extra}".strip()


def _panels(index: DatasetIndex, image_id: int, rows: list[dict], names: dict[int, str], palette) -> tuple[str, str]:
    from PIL import Image, ImageDraw

    from cvtrain.data.files import inside_root, read_image

    record = index.image_by_id[image_id]
    try:
        picture = Image.fromarray(read_image(inside_root(index.root, record.file_name)))
    except Exception as error:  # an unreadable image still gets its card, without the picture
        return f"<p class='muted'>cannot draw: {escape(str(error))}</p>", ""
    scale = THUMBNAIL / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    given = picture.copy()
    if index.task == "semantic_segmentation" and record.mask_file:
        given = _mask_overlay(index, record, given, palette)
    given = given.resize(size)
    suggested = picture.resize(size)
    draw_given, draw_suggested = ImageDraw.Draw(given), ImageDraw.Draw(suggested)
    flagged = {r["annotation_id"] for r in rows if r["annotation_id"] is not None}
    if index.task != "semantic_segmentation":
        for annotation in index.annotations_by_image.get(image_id, []):
            if annotation.id not in flagged:
                _box(draw_given, annotation.bbox, scale, OTHER, names.get(annotation.category_id, "?"), width=1)
                _box(draw_suggested, annotation.bbox, scale, OTHER, None, width=1)
    for row in rows:
        given_part, suggested_part = row["given"], row["suggested"]
        if given_part and given_part.get("bbox"):
            _box(draw_given, given_part["bbox"], scale, GIVEN, given_part.get("category"))
        action = suggested_part["action"]
        if action == "delete" and given_part:
            x, y, w, h = (v * scale for v in given_part["bbox"])
            draw_suggested.line((x, y, x + w, y + h), fill=GIVEN, width=2)
            draw_suggested.line((x + w, y, x, y + h), fill=GIVEN, width=2)
        elif suggested_part.get("bbox"):
            _box(draw_suggested, suggested_part["bbox"], scale, SUGGESTED,
                 f"{'+ ' if action == 'add' else ''}{suggested_part.get('category') or ''}")
    return _img(given), _img(suggested)


def _mask_overlay(index: DatasetIndex, record, picture, palette):
    from PIL import Image

    from cvtrain.data.files import read_mask
    from cvtrain.tasks.segmentation import colour_table, colourise

    try:
        mask = read_mask(index.mask_path(record), index.num_classes, index.ignore_index, palette)
    except Exception:
        return picture
    colours = colourise(mask, colour_table(index.num_classes, palette))
    return Image.fromarray((0.5 * np.asarray(picture, np.float32) + 0.5 * colours).astype(np.uint8))


def _box(draw, bbox, scale: float, colour, label: str | None, width: int = 2) -> None:
    x, y, w, h = (v * scale for v in bbox)
    draw.rectangle((x, y, x + max(w, 1), y + max(h, 1)), outline=colour, width=width)
    if label:
        draw.text((x + 2, max(y - 11, 0)), label, fill=colour)


def _img(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}'>"
