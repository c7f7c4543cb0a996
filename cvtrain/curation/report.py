"""The result of a check: findings, statistics, JSON, HTML and a terminal summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtrain.curation.codes import CODES
from cvtrain.curation.findings import SEVERITY_ORDER, Finding

SCHEMA_VERSION = 1


@dataclass
class Report:
    """What ``cvtrain check`` found in one dataset.

    Attributes:
        findings: the listed findings, errors first. Every error is listed; warnings
            and infos beyond ``max_findings_per_code`` per code are only counted.
        counts: code -> number of occurrences (listed or not).
        severities: code -> severity after overrides, for every code in ``counts``.
        statistics: images, annotations and class counts per split, box size quantiles.
        dataset: root, format, sources and task of the checked index.
        usable: False when the dataset could not be read at all.
    """

    findings: list[Finding]
    counts: dict[str, int]
    severities: dict[str, str]
    statistics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    usable: bool = True
    plots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # samples for report.html
    path: Path | None = None  # folder of the last ``write``
    name: str | None = None  # the dataset's or spec's name (``cvtrain check`` writes to runs/check-<name>)

    # ------------------------------------------------------------ summaries
    def count(self, severity: str) -> int:
        """How many findings of ``severity`` (``error``, ``warning``, ``info``) were found, listed or not."""
        return sum(n for code, n in self.counts.items() if self.severities[code] == severity)

    @property
    def errors(self) -> list[Finding]:
        """The listed findings of severity ``error``."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The listed findings of severity ``warning``."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def exit_code(self) -> int:
        """0: no errors; 1: errors; 2: the dataset could not be read at all."""
        if not self.usable:
            return 2
        return 1 if self.count("error") else 0

    def codes(self) -> list[str]:
        """Codes found, errors first."""
        return sorted(self.counts, key=lambda code: (SEVERITY_ORDER[self.severities[code]], code))

    def by_code(self, code: str) -> list[Finding]:
        """The listed findings of one check code."""
        return [f for f in self.findings if f.code == code]

    def summary_table(self) -> str:
        """A plain-text table for the terminal: one row per code found, then the totals."""
        rows = [(self.severities[c], c, str(self.counts[c]), CODES[c].title) for c in self.codes()]
        header = ("severity", "code", "count", "what")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[3]]
        lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        for row in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[3])
        if not rows:
            lines.append("no findings")
        splits = self.statistics.get("splits", {})
        described = ", ".join(f"{name}: {s['images']} images" + (f", {s['annotations']} annotations"
                                                                 if s.get("annotations") is not None else "")
                              for name, s in splits.items())
        if described:
            lines.append(described)
        lines.append(f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} infos")
        if self.path is not None:
            lines.append(f"report: {self.path / 'report.html'}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` content (schema ``schema_version`` 1, documented in docs/curation.md)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "cvtrain check",
            "dataset": self.dataset,
            "image_size": self.image_size,
            "config": self.config,
            "summary": {"errors": self.count("error"), "warnings": self.count("warning"),
                        "infos": self.count("info"), "exit_code": self.exit_code, "usable": self.usable},
            "counts": {code: {"severity": self.severities[code], "count": self.counts[code],
                              "listed": sum(1 for f in self.findings if f.code == code)} for code in self.codes()},
            "statistics": self.statistics,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self, indent: int | None = 1) -> str:
        """The report as JSON text (``report.json``): standard JSON, a NaN or infinite statistic written as null."""
        return json.dumps(_finite(self.to_dict()), indent=indent, default=_plain, allow_nan=False)

    # ---------------------------------------------------------------- files
    def write(self, directory: str | Path) -> Path:
        """Write ``report.json`` and a self-contained ``report.html`` into ``directory``; returns it."""
        from cvtrain.atomic import write_text
        from cvtrain.curation.html import render_html

        directory = Path(directory)
        self.path = directory
        write_text(directory / "report.json", self.to_json())
        write_text(directory / "report.html", render_html(self))
        return directory

    def error_lines(self, limit: int = 10) -> list[str]:
        """The first ``limit`` errors as one line each (where, what, how to fix), then a line for the rest."""
        lines = []
        for finding in self.errors[:limit]:
            where = finding.location()
            lines.append(f"error: {where + ': ' if where else ''}{finding.message} ({finding.hint})")
        if len(self.errors) > limit:
            where = self.path / "report.json" if self.path is not None else "the report"
            lines.append(f"... and {len(self.errors) - limit} more errors in {where}")
        return lines

    def to_html(self, *, max_rows: int = 200, crops: bool = True) -> str:
        """The report as a self-contained HTML page (plots and crops embedded)."""
        from cvtrain.curation.html import render_html

        return render_html(self, max_rows=max_rows, crops=crops)

    def _repr_html_(self) -> str:
        return self.to_html(max_rows=50, crops=False)

    def __repr__(self) -> str:
        return (f"Report({self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} infos, "
                f"{len(self.counts)} codes)")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (box statistics of odd data) replaced by None, for strict JSON.

    >>> _finite({"q": [1.5, float("nan")], "r": float("inf")})
    {'q': [1.5, None], 'r': None}
    """
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
