"""What a sweep found: the trial table, the best trial and whether its lead is real, ``best.yaml``, ``sweep.json``.

Everything is read from the study's storage (the trials' user attributes), so any worker, on any machine,
writes the same results; ``metrics.json`` of a trial is read only for the noise estimate, where present.

**Is the lead real?** When a trial's ``metrics.json`` holds an interval for its best epoch
(``"<metric>_ci95": [low, high]``, the evaluation's bootstrap over validation images), the best trial's lead
over the runner-up counts as noise when it is below ``sqrt(h1**2 + h2**2)``, h the intervals' half-widths (the
95 % margin of a difference of two independent estimates; the two trials share their validation images, so
this errs on the side of warning). Without intervals, the noise is estimated from each trial's own curve:
the standard deviation s of the metric over its last three validations (at least two), and the lead counts
as noise below ``1.96 * sqrt(s1**2 + s2**2)``. That epoch-to-epoch jitter misses the spread between seeds,
so it is a floor: a lead below it is certainly not proof, a lead above it is not yet proof either.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cvtrain.atomic import write_json
from cvtrain.sweep.text import _keys, _note, _params_text, _score, _show  # noqa: F401  (used below)

if TYPE_CHECKING:
    import optuna

    from cvtrain.sweep.runner import Sweep


@dataclass
class TrialRecord:
    """One row of the trial table."""

    number: int
    status: str  # complete | pruned | failed | diverged | running | waiting | interrupted | killed
    params: dict[str, Any]  # spec key -> value, as the trial's spec had it
    value: float | None = None
    ci95: list[float] | None = None
    epochs: int = 0
    seconds: float = 0.0
    run_dir: str | None = None
    error: str | None = None
    pruned_epoch: int | None = None
    worker: str | None = None
    continues: int | None = None  # the killed trial this one ran again
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    """The best trial's lead over the runner-up, and the noise it is measured against."""

    lead: float
    noise: float | None  # None: no way to tell (no interval, fewer than two validations)
    method: str  # "interval" | "epoch jitter" | "unknown"
    within_noise: bool | None

    def sentence(self, metric: str, best: int, runner_up: int) -> str:
        """The comparison in words; a warning when the lead is within noise or cannot be judged."""
        head = f"trial {best} leads trial {runner_up} by {self.lead:.4f} {metric}"
        if self.noise is None:
            return (f"warning: {head}, and there is no way to tell whether that is noise (no interval in metrics.json, "
                    "fewer than two validations per trial); run them again with another train.seed before trusting it")
        margin = f"{'95 % intervals' if self.method == 'interval' else 'epoch-to-epoch jitter'} ±{self.noise:.4f}"
        if self.within_noise:
            return f"warning: {head}, within noise ({margin}): the two are not told apart by this sweep"
        return f"{head}, beyond noise ({margin})"


@dataclass
class SweepResult:
    """What ``cvtrain sweep`` produced; a table in a notebook."""

    sweep_dir: Path
    study: str
    storage: str
    metric: str
    direction: str
    trials: list[TrialRecord]
    best: TrialRecord | None = None
    runner_up: TrialRecord | None = None
    comparison: str | None = None  # the lead-versus-noise sentence
    warning: bool = False  # True when the comparison is a warning
    best_spec: Path | None = None  # best.yaml
    report: Path | None = None  # sweep.html
    summary: Path | None = None  # sweep.json
    seconds: float = 0.0

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params) if self.best else {}

    def table(self) -> str:
        """The trial table as text, one trial a line."""
        keys = _keys(self.trials)
        header = ["trial", "status", *keys, self.metric, "epochs", "time", "note"]
        rows = [[str(t.number), t.status, *(_show(t.params.get(k)) for k in keys), _score(t), str(t.epochs or ""),
                 f"{t.seconds:.0f} s" if t.seconds else "", _note(t, self.best)] for t in self.trials]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
        return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])

    def to_dict(self) -> dict[str, Any]:
        return {"sweep_dir": str(self.sweep_dir), "study": self.study, "storage": self.storage, "metric": self.metric,
                "direction": self.direction, "best": asdict(self.best) if self.best else None,
                "runner_up": asdict(self.runner_up) if self.runner_up else None, "comparison": self.comparison,
                "comparison_is_warning": self.warning, "best_spec": str(self.best_spec) if self.best_spec else None,
                "trials": [asdict(trial) for trial in self.trials]}

    def _repr_html_(self) -> str:
        from cvtrain.sweep.report import trial_table_html

        best = (f"<p>best: trial {self.best.number}, {escape(self.metric)} {self.best.value:.4f} "
                f"({escape(_params_text(self.best.params))}); spec <code>{escape(str(self.best_spec))}</code></p>"
                if self.best else "<p>no trial completed</p>")
        note = f"<p style='color:#b36b00'>{escape(self.comparison)}</p>" if self.comparison else ""
        return f"<b>cvtrain sweep</b> <code>{escape(str(self.sweep_dir))}</code>{best}{note}{trial_table_html(self)}"


def records(study: optuna.Study, space) -> list[TrialRecord]:
    """Every trial of the study as a row, in trial order."""
    from optuna.trial import TrialState

    from cvtrain.sweep.study import retried_from

    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if trial.state == TrialState.RUNNING:
            status = "running"
        elif trial.state == TrialState.WAITING:
            status = "waiting"
        else:
            status = attrs.get("status") if attrs.get("status") not in (None, "running") else "killed"
        rows.append(TrialRecord(
            number=trial.number, status=status, params=space.decode(trial.params), value=attrs.get("value"),
            ci95=attrs.get("ci95"), epochs=int(attrs.get("epochs") or 0), seconds=float(attrs.get("seconds") or 0.0),
            run_dir=attrs.get("run_dir"), error=attrs.get("error"), pruned_epoch=attrs.get("pruned_epoch"),
            worker=attrs.get("worker"), continues=retried_from(trial),
            metrics=dict(attrs.get("metrics") or {})))
    return rows


def ranked(trials: list[TrialRecord], direction: str) -> list[TrialRecord]:
    """Complete trials, best first (the earlier trial first on a tie)."""
    sign = -1.0 if direction == "maximize" else 1.0
    complete = [t for t in trials if t.status == "complete" and t.value is not None]
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def compare(best: TrialRecord, runner_up: TrialRecord, metric: str) -> Comparison:
    """The lead of ``best`` over ``runner_up`` against their intervals, or else their epoch-to-epoch jitter."""
    lead = abs(best.value - runner_up.value)
    if best.ci95 and runner_up.ci95:
        noise = math.hypot((best.ci95[1] - best.ci95[0]) / 2, (runner_up.ci95[1] - runner_up.ci95[0]) / 2)
        return Comparison(lead, noise, "interval", lead <= noise)
    spreads = [_jitter(trial, metric) for trial in (best, runner_up)]
    if None in spreads:
        return Comparison(lead, None, "unknown", None)
    noise = 1.96 * math.hypot(*spreads)
    return Comparison(lead, noise, "epoch jitter", lead <= noise)


def _jitter(trial: TrialRecord, metric: str) -> float | None:
    """Standard deviation of ``metric`` over the trial's last three validations (None with fewer than two)."""
    if not trial.run_dir:
        return None
    path = Path(trial.run_dir) / "metrics.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
    values = [entry[metric] for entry in history if isinstance(entry.get(metric), (int, float)) and entry[metric] >= 0]
    return statistics.stdev(values[-3:]) if len(values) >= 2 else None


def collect(study: optuna.Study, plan: Sweep, *, write: bool = True) -> SweepResult:
    """The sweep's results from its study; with ``write``, ``best.yaml``, ``sweep.json`` and ``sweep.html`` too."""
    from cvtrain.sweep.study import shown

    trials = records(study, plan.space)
    order = ranked(trials, plan.config.sweep.direction)
    result = SweepResult(plan.sweep_dir, plan.study_name, shown(plan.storage), plan.metric,
                         plan.config.sweep.direction, trials, seconds=time.time() - plan.started)
    if order:
        result.best = order[0]
    if len(order) > 1:
        result.runner_up = order[1]
        comparison = compare(order[0], order[1], plan.metric)
        result.comparison = comparison.sentence(plan.metric, order[0].number, order[1].number)
        result.warning = comparison.within_noise is not False
    if not write:
        return result
    folder = plan.sweep_dir
    folder.mkdir(parents=True, exist_ok=True)
    if result.best is not None:
        result.best_spec = folder / "best.yaml"
        write_best_spec(result.best_spec, plan, result.best)
    result.summary = folder / "sweep.json"
    write_json(result.summary, result.to_dict())
    from cvtrain.sweep.report import write_report

    result.report = write_report(folder / "sweep.html", study, result)
    return result


def write_best_spec(path: Path, plan: Sweep, best: TrialRecord) -> None:
    """The best trial's spec, ready for ``cvtrain fit -c best.yaml`` (written atomically)."""
    from cvtrain.sweep.trial import trial_config

    config = trial_config(plan.config, best.params, plan.gpus_per_trial)
    config.name = f"{plan.sweep_dir.name}-best"
    interval = f" [{best.ci95[0]:.4f}, {best.ci95[1]:.4f}]" if best.ci95 else ""
    header = (f"# The best trial of the sweep in {plan.sweep_dir}: trial {best.number}, {plan.metric} "
              f"{best.value:.4f}{interval} after {best.epochs} epoch(s) (run: {best.run_dir}).\n"
              f"# Its values: {_params_text(best.params)}\n"
              f"# Train it again with: cvtrain fit -c {path}\n")
    text = header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------- text
