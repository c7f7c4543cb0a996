"""``report.html``: one self-contained page (inline CSS, plots as base64 PNG, no scripts, no network)."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from cvtrain.curation.codes import CODES
from cvtrain.curation.plots import box_distributions, class_histogram, crop, pick_for_crops

if TYPE_CHECKING:
    from cvtrain.curation.report import Report

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} .error{color:#b00;font-weight:600} .warning{color:#b36b00;font-weight:600} .info{color:#2456a6}
.badge{display:inline-block;padding:4px 10px;border-radius:4px;margin-right:8px;font-weight:600}
.b-error{background:#fbe3e3;color:#b00} .b-warning{background:#fdf0d9;color:#8a5200}
.b-info{background:#e3ecfb;color:#2456a6}
.b-ok{background:#e2f5e4;color:#1d6b2a} .muted{color:#666;font-size:12px} img.plot{max-width:100%}
.crops{display:flex;flex-wrap:wrap;gap:12px} .crop{width:230px;font-size:12px;overflow-wrap:anywhere}
.crop img{border:1px solid #ccc}
code{font-size:12px}
"""


def render_html(report: Report, *, max_rows: int = 200, crops: bool = True) -> str:
    """The whole page; ``max_rows`` findings are listed per code (the JSON has all that were kept)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cvtrain check report</title>"
             f"<style>{STYLE}</style></head><body>", _header(report), _summary(report), _statistics(report)]
    parts.append(_plots(report))
    if crops and report.config.get("crops", 0):
        parts.append(_crops(report, int(report.config["crops"])))
    parts.append(_findings(report, max_rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def _header(report: Report) -> str:
    dataset = report.dataset
    errors, warnings, infos = report.count("error"), report.count("warning"), report.count("info")
    verdict = ("<span class='badge b-ok'>no errors</span>" if not errors
               else f"<span class='badge b-error'>{errors} errors</span>")
    sources = ", ".join(escape(str(s)) for s in dataset.get("sources", [])) or "-"
    return (f"<h1>Dataset check: {escape(str(dataset.get('root', '?')))}</h1>"
            f"<p class='muted'>format {escape(str(dataset.get('format', '?')))}; sources {sources}; "
            f"image size {report.image_size or '-'}</p>"
            f"<p>{verdict}<span class='badge b-warning'>{warnings} warnings</span>"
            f"<span class='badge b-info'>{infos} infos</span> exit code {report.exit_code}</p>")


def _summary(report: Report) -> str:
    rows = []
    for code in report.codes():
        severity = report.severities[code]
        entry = CODES[code]
        rows.append(f"<tr><td class='{severity}'>{severity}</td><td><a href='#{code}'><code>{code}</code></a></td>"
                    f"<td>{report.counts[code]}</td><td>{escape(entry.title)}</td><td>{escape(entry.hint)}</td></tr>")
    body = "".join(rows) or "<tr><td colspan='5'>no findings</td></tr>"
    return ("<h2 id='summary'>Summary</h2><table><tr><th>severity</th><th>code</th><th>count</th><th>what</th>"
            f"<th>what to do</th></tr>{body}</table>")


def _statistics(report: Report) -> str:
    statistics = report.statistics
    splits = statistics.get("splits") or {}
    if not splits:
        return "<h2 id='statistics'>Statistics</h2><p>no statistics: the dataset could not be read</p>"
    head = "".join(f"<th>{escape(name)}</th>" for name in splits)
    lines = [("images", [s["images"] for s in splits.values()])]
    if not statistics.get("semantic"):
        lines += [("annotations", [s["annotations"] for s in splits.values()]),
                  ("negatives (no annotations)", [s["negatives"] for s in splits.values()])]
    lines.append(("imbalance ratio", [f"{s['imbalance_ratio']:.1f}" if s["imbalance_ratio"] else "-"
                                      for s in splits.values()]))
    rows = "".join(
        f"<tr><th>{label}</th>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>" for label, values in lines
    )
    classes = statistics.get("classes", [])
    class_rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(f"<td>{s['class_counts'].get(name, 0)}</td>"
                                                                  for s in splits.values()) + "</tr>"
                         for name in classes[:200])
    return (f"<h2 id='statistics'>Statistics</h2><table><tr><th></th>{head}</tr>{rows}</table>"
            f"<details><summary>class counts ({len(classes)} classes)</summary><table><tr><th>class</th>{head}</tr>"
            f"{class_rows}</table></details>")


def _plots(report: Report) -> str:
    out = ["<h2 id='plots'>Plots</h2>"]
    for title, picture in (("Class histogram per split", class_histogram(report.statistics)),
                           ("Box size and aspect ratio distributions", box_distributions(report.plots))):
        if picture:
            out.append(f"<h3>{title}</h3><img class='plot' alt='{title}' src='data:image/png;base64,{picture}'>")
    if len(out) == 1:
        out.append("<p>nothing to plot</p>")
    return "".join(out)


def _crops(report: Report, count: int) -> str:
    root = Path(report.dataset.get("root", "."))
    cells = []
    for finding in pick_for_crops(report.findings, count * 2):
        picture = crop(root, finding)
        if picture is None:
            continue
        cells.append(
            f"<div class='crop'><img alt='{escape(finding.code)}' src='data:image/png;base64,{picture}'>"
            f"<div class='{finding.severity}'>{escape(finding.code)}</div>"
            f"<div>{escape(_short_location(finding))}</div><div class='muted'>{escape(finding.message)}</div></div>"
        )
        if len(cells) == count:
            break
    body = "".join(cells) or "<p>no flagged annotation or image that can be shown</p>"
    return (f"<h2 id='crops'>Flagged annotations and images</h2><p class='muted'>boxes drawn in red (error) or "
            f"orange (warning) on a crop of their image; image findings show the whole image</p>"
            f"<div class='crops'>{body}</div>")


def _short_location(finding) -> str:
    text = f"{finding.image} (image id {finding.image_id})"
    return text + (f", annotation {finding.annotation_id}" if finding.annotation_id is not None else "")


def _findings(report: Report, max_rows: int) -> str:
    out = ["<h2 id='findings'>Findings</h2>"]
    for code in report.codes():
        listed = report.by_code(code)
        severity = report.severities[code]
        more = report.counts[code] - min(len(listed), max_rows)
        rows = "".join(
            f"<tr><td>{escape(f.location())}</td><td>{escape(f.message)}</td></tr>" for f in listed[:max_rows]
        )
        note = f"<p class='muted'>{more} more not shown (see report.json)</p>" if more > 0 else ""
        out.append(f"<h3 id='{code}'><span class='{severity}'>{severity}</span> <code>{code}</code> "
                   f"({report.counts[code]})</h3><p class='muted'>{escape(CODES[code].hint)}</p>"
                   f"<table><tr><th>where</th><th>what</th></tr>{rows}</table>{note}")
    if len(out) == 1:
        out.append("<p>no findings</p>")
    return "".join(out)
