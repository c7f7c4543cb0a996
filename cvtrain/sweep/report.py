"""``sweep.html``: one self-contained page (inline CSS, plots as base64 PNG, every name escaped, no scripts).

The plots are Optuna's own (``optuna.visualization.matplotlib``): the optimisation history, the learning
curves the pruner saw, the parameter importances (fANOVA with scikit-learn installed, else PED-ANOVA, which
needs nothing more) and the parallel coordinates. A plot that cannot be drawn yet (too few trials) says why.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import os
import warnings
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from cvtrain.sweep.text import _keys, _note, _params_text, _score, _show

if TYPE_CHECKING:
    import optuna

    from cvtrain.sweep.results import SweepResult

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} .warning{color:#8a5200;background:#fdf0d9;padding:6px 10px;border-radius:4px}
.best{background:#e2f5e4} .muted{color:#666;font-size:12px} img.plot{max-width:100%} code{font-size:12px}
"""


def write_report(path: Path, study: optuna.Study, result: SweepResult) -> Path:
    """Write ``sweep.html`` atomically and return its path."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cvtrain sweep {escape(result.study)}</title>"
             f"<style>{STYLE}</style></head><body>", _header(result), "<h2>Trials</h2>", trial_table_html(result),
             "<h2>Plots</h2>", *_plots(study, result), "</body></html>"]
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text("\n".join(parts), encoding="utf-8")
    os.replace(temporary, path)
    return path


def _header(result: SweepResult) -> str:
    done = sum(t.status in ("complete", "pruned", "failed", "diverged") for t in result.trials)
    counts = ", ".join(f"{sum(t.status == s for t in result.trials)} {s}" for s in
                       ("complete", "pruned", "failed", "diverged", "running", "killed")
                       if any(t.status == s for t in result.trials))
    text = [f"<h1>Sweep {escape(result.study)}</h1>",
            f"<p class='muted'>folder {escape(str(result.sweep_dir))}; storage {escape(result.storage)}; "
            f"{escape(result.direction)} {escape(result.metric)}; {done} trials with an outcome ({escape(counts)})</p>"]
    if result.best is not None:
        text.append(f"<p>Best: trial {result.best.number}, {escape(result.metric)} <b>{result.best.value:.4f}</b> "
                    f"({escape(_params_text(result.best.params))}). Train it again with "
                    f"<code>cvtrain fit -c {escape(str(result.best_spec))}</code>.</p>")
    else:
        text.append("<p>No trial completed.</p>")
    if result.comparison:
        css = "warning" if result.warning else "muted"
        text.append(f"<p class='{css}'>{escape(result.comparison)}</p>")
    return "".join(text)


def trial_table_html(result: SweepResult) -> str:
    """The trial table as HTML (the best trial's row highlighted)."""
    keys = _keys(result.trials)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["trial", "status", *keys, result.metric, "epochs", "time", "note"])
    rows = []
    for trial in result.trials:
        css = " class='best'" if result.best is not None and trial.number == result.best.number else ""
        cells = [str(trial.number), trial.status, *(_show(trial.params.get(k)) for k in keys), _score(trial),
                 str(trial.epochs or ""), f"{trial.seconds:.0f} s" if trial.seconds else "", _note(trial, result.best)]
        rows.append(f"<tr{css}>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _plots(study: optuna.Study, result: SweepResult) -> list[str]:
    from optuna.visualization import matplotlib as plots

    params = list(result.trials[0].params) if result.trials else []
    drawings: list[tuple[str, Callable[[], object]]] = [
        ("Optimisation history", lambda: plots.plot_optimization_history(study, target_name=result.metric)),
        ("Validation curves (what the pruner compared)", lambda: plots.plot_intermediate_values(study)),
        ("Parameter importances", lambda: plots.plot_param_importances(study, evaluator=_importance_evaluator(),
                                                                      target_name=result.metric)),
        ("Parallel coordinates", lambda: plots.plot_parallel_coordinate(study, params=params or None,
                                                                        target_name=result.metric)),
    ]
    out = []
    for title, draw in drawings:
        picture, problem = _draw(draw)
        out.append(f"<h3>{escape(title)}</h3>")
        out.append(f"<img class='plot' alt='{escape(title)}' src='data:image/png;base64,{picture}'>" if picture
                   else f"<p class='muted'>not drawn: {escape(problem)}</p>")
    return out


def _importance_evaluator():
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if importlib.util.find_spec("sklearn") is not None:
        return FanovaImportanceEvaluator(seed=0)
    return PedAnovaImportanceEvaluator()


def _draw(draw: Callable[[], object]) -> tuple[str | None, str]:
    """A plot as base64 PNG, or None and the reason it could not be drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op where a notebook backend is already active
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning, and its notes on too few trials
            axes = draw()
    except Exception as error:  # too few trials, a single value everywhere: say so instead of a plot
        plt.close("all")
        return None, (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    figure = getattr(axes, "figure", None) or plt.gcf()
    if not hasattr(figure, "savefig"):  # some Optuna plots return an array of axes
        figure = axes.flat[0].figure
    if not any(ax.has_data() for ax in figure.axes):
        plt.close(figure)
        return None, "not enough finished trials yet"
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), ""
