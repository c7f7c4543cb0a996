"""Trials as text: the short forms the trial table, the summary and the report share."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtrain.sweep.results import TrialRecord


def _keys(trials: list[TrialRecord]) -> list[str]:
    keys: list[str] = []
    for trial in trials:
        keys += [key for key in trial.params if key not in keys]
    return keys


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _score(trial: TrialRecord) -> str:
    if trial.value is None:
        return ""
    interval = f" [{trial.ci95[0]:.4f}, {trial.ci95[1]:.4f}]" if trial.ci95 else ""
    return f"{trial.value:.4f}{interval}"


def _note(trial: TrialRecord, best: TrialRecord | None) -> str:
    parts = []
    if best is not None and trial.number == best.number:
        parts.append("best")
    if trial.continues is not None:
        parts.append(f"runs trial {trial.continues} again")
    if trial.status == "pruned":
        parts.append(f"stopped after epoch {trial.pruned_epoch}")
    if trial.error:
        parts.append(trial.error if len(trial.error) <= 100 else trial.error[:97] + "...")
    return "; ".join(parts)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_show(value)}" for key, value in params.items())
