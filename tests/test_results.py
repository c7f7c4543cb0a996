"""The result objects as a notebook shows them: their HTML tables, read back as rows of cells."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from cvtrain.results import EvaluateResult, FitResult, per_class_lines


class Tables(HTMLParser):
    """Every <table> of a page as a list of rows, each row the texts of its cells."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


METRICS = {"epoch": 7, "step": 160, "AP": 0.41, "mAP": 0.41, "AP50": 0.66, "APs": 0.4, "APl": -1.0, "AR100": 0.6,
           "ARl": -1, "baseline_mAP": 0.004}
PER_CLASS = {"bbox": {"square": 0.403, "disc": -1.0, "triangle": 0.502}}


def test_fit_result_table_shows_scores_as_the_cli_does_with_the_epoch_labelled_apart():
    result = FitResult(run_dir=Path("runs/x"), best_checkpoint=Path("runs/x/checkpoints/best.ckpt"),
                       last_checkpoint=None, metrics=dict(METRICS), per_class=PER_CLASS, seconds=72.34)
    summary, per_class = Tables(result._repr_html_()).tables
    rows = dict(summary)
    assert rows["run_dir"] == "runs/x" and rows["seconds"] == "72.3" and rows["best epoch"] == "7"
    assert rows["APl"] == "n/a" and rows["mAP"] == "0.4100" and rows["baseline_mAP"] == "0.0040"
    assert "epoch" not in rows and "step" not in rows  # not mixed into the metric rows
    assert not any("-1" in value for value in rows.values())
    assert per_class == [["class", "AP (bbox)"], ["square", "0.4030"], ["disc", "n/a"], ["triangle", "0.5020"]]


def test_a_fast_dev_run_result_says_nothing_was_kept():
    result = FitResult(run_dir=None, best_checkpoint=None, last_checkpoint=None, metrics={"mAP": 0.0})
    summary, = Tables(result._repr_html_()).tables
    assert dict(summary)["run_dir"] == "not kept (fast dev run)"
    assert "None" not in result._repr_html_()


def test_evaluate_result_table_with_intervals_and_two_kinds_of_per_class_scores():
    result = EvaluateResult(metrics={**METRICS, "segm_AP": 0.3}, out_dir=None, num_images=40,
                            per_class={"bbox": {"a": 0.5, "b": -1.0}, "segm": {"a": 0.25, "b": 0.125}},
                            intervals={"mAP_ci95": [0.3, 0.5], "AP50_ci95": None}, images_per_second=12.345)
    summary, per_class = Tables(result._repr_html_()).tables
    rows = dict(summary)
    assert rows["images"] == "40" and rows["images/s"] == "12.3" and rows["mAP_ci95"] == "[0.3000, 0.5000]"
    assert rows["APl"] == "n/a" and rows["segm_AP"] == "0.3000" and "AP50_ci95" not in rows
    assert "epoch" not in rows and "step" not in rows
    assert per_class == [["class", "AP (bbox)", "AP (segm)"], ["a", "0.5000", "0.2500"], ["b", "n/a", "0.1250"]]


def test_per_class_lines_print_n_a_for_a_class_without_ground_truth():
    assert per_class_lines(PER_CLASS) == ["per-class bbox: square 0.403, disc n/a, triangle 0.502"]
