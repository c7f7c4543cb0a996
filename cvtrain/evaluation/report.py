"""HTML for the evaluation reports: self-contained pages (inline CSS, plots as base64 PNG, names escaped)."""
from __future__ import annotations

import base64
import io
import math
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtrain.evaluation.corruptions import FAMILIES

if TYPE_CHECKING:
    from cvtrain.evaluation.robustness import RobustnessResult

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.name,th.name{text-align:left} .muted{color:#666;font-size:12px} img.plot{max-width:100%}
.pass{color:#1d6b2a;font-weight:600} .fail{color:#b00;font-weight:600}
"""


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op where a notebook backend is already active
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> str:
    """A matplotlib figure as base64 PNG (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def robustness_figure(result: RobustnessResult):
    """Score against severity (0 is clean), one panel per corruption family, one line per corruption."""
    plt = _pyplot()
    families = [(family, [n for n in names if n in result.table]) for family, names in FAMILIES.items()]
    families = [(family, names) for family, names in families if names]
    figure, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families), 3.2), sharey=True, squeeze=False)
    top = max([result.clean, *[v for row in result.table.values() for v in row.values()], 1e-6])
    for axis, (family, names) in zip(axes[0], families):
        for name in names:
            severities = sorted(result.table[name])
            axis.plot([0, *severities], [result.clean, *[result.table[name][s] for s in severities]], marker="o",
                      markersize=3, label=name.replace("_", " "))
        axis.axhline(result.mpc, color="grey", linestyle=":", linewidth=1)
        axis.set_title(family)
        axis.set_xlabel("severity (0: clean)")
        axis.set_ylim(0, top * 1.05)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel(result.metric)
    figure.suptitle(f"{result.metric} under corruption: mPC {result.mpc:.3f} (dotted), "
                    f"rPC {_percent(result.rpc)}", fontsize=10, y=1.04)
    return figure


def robustness_table(result: RobustnessResult) -> str:
    """The table (a row per corruption, a column per severity, the mean) as HTML."""
    severities = result.severities
    head = "".join(f"<th>{s}</th>" for s in severities)
    rows = [f"<tr><td class='name'>clean</td><td colspan='{len(severities)}'></td><td>{result.clean:.4f}</td></tr>"]
    for name, row in result.table.items():
        cells = "".join(f"<td>{row[s]:.4f}</td>" for s in severities)
        mean = sum(row.values()) / len(row)
        rows.append(f"<tr><td class='name'>{escape(name)}</td>{cells}<td>{mean:.4f}</td></tr>")
    rows.append(f"<tr><th class='name'>mPC</th><td colspan='{len(severities)}'></td><th>{result.mpc:.4f}</th></tr>")
    rows.append(f"<tr><th class='name'>rPC</th><td colspan='{len(severities)}'></td>"
                f"<th>{escape(_percent(result.rpc))}</th></tr>")
    return (f"<table><tr><th class='name'>{escape(result.metric)} by corruption</th>{head}<th>mean</th></tr>"
            + "".join(rows) + "</table>")


def robustness_html(result: RobustnessResult) -> str:
    """The whole robustness page: summary, plot, table."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cvtrain robustness</title>"
            f"<style>{STYLE}</style></head><body><h1>Robustness under common corruptions</h1>"
            f"<p>clean {escape(result.metric)} <b>{result.clean:.4f}</b>, mPC <b>{result.mpc:.4f}</b>, "
            f"rPC <b>{escape(_percent(result.rpc))}</b> on {result.num_images} images; "
            f"{len(result.table)} corruptions x {len(result.severities)} severities, seed {result.seed}, "
            f"{result.seconds:.0f} s.</p>"
            f"<p class='muted'>Corruptions of Hendrycks &amp; Dietterich (2019) with their published parameters; "
            f"mPC is the mean over corruptions of the mean over severities, rPC = mPC / clean "
            f"(Michaelis et al. 2019).</p>"
            f"<img class='plot' src='data:image/png;base64,{png(robustness_figure(result))}'>"
            f"{robustness_table(result)}</body></html>")


def outcomes_html(title: str, outcomes: list[dict[str, Any]]) -> str:
    """A pass/fail table of model tests."""
    rows = []
    for outcome in outcomes:
        verdict = "pass" if outcome["passed"] else "fail"
        rows.append(f"<tr><td class='name'>{escape(outcome['name'])}</td><td class='{verdict}'>{verdict}</td>"
                    f"<td>{_number(outcome.get('value'))}</td><td class='name'>{escape(outcome['requirement'])}</td>"
                    f"<td class='name'>{escape(outcome.get('detail', ''))}</td></tr>")
    return (f"<b>{escape(title)}</b><table><tr><th class='name'>test</th><th>result</th><th>value</th>"
            f"<th class='name'>must hold</th><th class='name'>detail</th></tr>{''.join(rows)}</table>")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else escape(str(value))


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %" if math.isfinite(value) else "n/a"


# ------------------------------------------------------------------------------------ terminal lines
def baseline_lines(metrics: dict[str, Any]) -> list[str]:
    """The call-out when a model does not beat its no-model baseline (empty when it does)."""
    for score, baseline, what in (("mAP", "baseline_mAP", "prior boxes placed without looking at the image"),
                                  ("mIoU", "baseline_mIoU", "the majority class everywhere")):
        if score in metrics and baseline in metrics and metrics[score] <= metrics[baseline]:
            return [f"warning: the model does not beat the no-model baseline: {score} {metrics[score]:.4f} <= "
                    f"{metrics[baseline]:.4f} ({what})"]
    return []


def evaluation_lines(result) -> list[str]:
    """What ``cvtrain evaluate`` prints after the scores: intervals, baseline, slices, robustness, comparison."""
    lines = []
    intervals = {k: v for k, v in result.intervals.items() if v}
    if intervals:
        resamples = result.analysis.resamples if result.analysis is not None else "?"
        lines.append(f"95 % intervals ({resamples} bootstrap resamples over images): "
                     + "  ".join(f"{k.removesuffix('_ci95')} [{low:.4f}, {high:.4f}]" for k, (low, high)
                                 in intervals.items()))
    lines += baseline_lines(result.metrics)
    if result.slices is not None:
        lines.append(result.slices.summary_line())
    if result.robustness is not None:
        lines.append(result.robustness.summary_table())
        lines.append(f"robustness report: {result.out_dir / 'robustness.html'}")
    if result.comparison is not None:
        lines.append(comparison_line(result.comparison))
    lines.append(f"metrics: {result.out_dir / 'metrics.json'}")
    return lines


def comparison_line(comparison: dict[str, Any]) -> str:
    """``B - A`` of the main metric with its paired interval, in words."""
    metric = comparison["metric"]
    entry = comparison["metrics"].get(metric)
    if entry is None or entry["difference"] is None:
        return f"comparison: no {metric} to compare"
    interval = entry["difference_ci95"]
    low, high = interval if interval else (float("nan"), float("nan"))
    verdict = ("B is better" if low > 0 else "A is better" if high < 0
               else "no difference shown (the interval contains 0)")
    return (f"compare: {metric} A {entry['first']:.4f}, B {entry['second']:.4f}; B - A {entry['difference']:+.4f}, "
            f"95 % paired interval [{low:+.4f}, {high:+.4f}] over {comparison['num_images']} images "
            f"({comparison['resamples']} resamples; B better in {100 * entry['share_second_better']:.1f} %): "
            f"{verdict}")
