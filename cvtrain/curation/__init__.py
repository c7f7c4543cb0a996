"""Dataset curation: read-only checks over a ``DatasetIndex`` that return a ``Report``.

    from cvtrain.curation import check_dataset
    report = check_dataset("configs/datasets/raccoon.yaml")
    print(report.summary_table()); report.write("runs/check-raccoon")

Each check code, its severity and the threshold that tunes it are listed in
``cvtrain/curation/codes.py`` and explained in ``docs/curation.md``.
"""
from __future__ import annotations

from cvtrain.config.schema import ChecksConfig
from cvtrain.curation.codes import CODES
from cvtrain.curation.findings import Finding
from cvtrain.curation.preflight import DatasetCheckError, preflight
from cvtrain.curation.report import Report
from cvtrain.curation.runner import check_dataset, run_checks

__all__ = ["CODES", "ChecksConfig", "DatasetCheckError", "Finding", "Report", "check_dataset", "preflight",
           "run_checks"]
