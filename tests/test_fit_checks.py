"""The dataset checks before ``cvtrain fit``, ``cvtrain check`` on the command line and ``cvtrain.check``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from curation_builders import add_box, clean_coco, write

import cvtrain
from cvtrain.curation import Report


@pytest.fixture
def flawed_spec(tmp_path) -> Path:
    """A tiny SSDlite spec on a COCO set with one box outside its 64x48 image (annotation id 17)."""
    root = tmp_path / "set"
    data = clean_coco(root)
    add_box(data, 2, 1, [50, 30, 30, 16], segmentation=None)
    write(root, data, {"train": [1, 2, 3, 4, 5], "val": [6, 7, 8]})
    spec = {
        "task": "detection",
        "data": {"format": "coco", "root": str(root), "annotations": "annotations.json", "images": "images",
                 "splits": {"train": {"list": "train.txt"}, "val": {"list": "val.txt"}}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
        "train": {"batch_size": 2, "image_size": 64, "num_workers": 0},
        "trainer": {"accelerator": "cpu"},
        "checks": {"cache_file": str(tmp_path / "cache.json"), "workers": 1},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvtrain", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_fit_stops_on_dataset_errors_with_the_summary_and_report(flawed_spec, tmp_path):
    annotations = (tmp_path / "set/annotations.json").read_bytes()
    done = cli("fit", "-c", str(flawed_spec), "--fast-dev-run", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "box.outside_image" in done.stdout  # the summary table
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset check found 1 error(s): box.outside_image x1; see run/report.html")
    assert "--skip-checks" in last
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert [f["location"]["annotation_id"] for f in report["findings"] if f["severity"] == "error"] == [17]
    assert not (tmp_path / "run/checkpoints").exists()
    assert (tmp_path / "set/annotations.json").read_bytes() == annotations  # nothing rewritten


def test_fit_under_on_error_drop_trains_without_the_bad_box(flawed_spec, tmp_path):
    result = cvtrain.fit(flawed_spec, ["checks.on_error=drop"], run_dir=tmp_path / "run", fast_dev_run=True)
    dropped = json.loads((result.run_dir / "dropped.json").read_text())
    assert dropped["images"] == []
    assert dropped["annotations"] == [{"id": 17, "image_id": 2, "reason": "box.outside_image"}]
    assert dropped["kept"] == {"images": 8, "annotations": 16}
    assert json.loads((result.run_dir / "report.json").read_text())["summary"]["errors"] == 1
    assert result.metrics  # it trained and validated


def test_skip_checks_trains_on_the_data_as_it_is(flawed_spec, tmp_path):
    done = cli("fit", "-c", str(flawed_spec), "--fast-dev-run", "--run-dir", "run", "--skip-checks", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "run/report.json").exists()
    assert "dataset check" not in done.stdout


def test_clean_data_prints_one_line_and_copies_the_report(tmp_path):
    root = tmp_path / "set"
    write(root, clean_coco(root), {"train": [1, 2, 3, 4, 5], "val": [6, 7, 8]})
    spec = {"task": "detection",
            "data": {"format": "coco", "root": str(root), "annotations": "annotations.json", "images": "images",
                     "splits": {"train": {"list": "train.txt"}, "val": {"list": "val.txt"}}},
            "model": {"name": "ssdlite320_mobilenet_v3_large"},
            "train": {"batch_size": 2, "image_size": 64, "num_workers": 0}, "trainer": {"accelerator": "cpu"},
            "checks": {"cache_file": str(tmp_path / "cache.json"), "workers": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = cli("fit", "-c", "spec.yaml", "--fast-dev-run", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset check: 0 errors" in done.stdout and "report: run/report.html" in done.stdout
    assert (tmp_path / "run/report.html").is_file()


def test_check_command_exit_codes_and_outputs(flawed_spec, tmp_path):
    done = cli("check", "-c", str(flawed_spec), "--out", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "box.outside_image" in done.stdout and "1 errors" in done.stdout
    assert (tmp_path / "out/report.json").is_file() and (tmp_path / "out/report.html").is_file()
    # a severity override turns the error into a warning: exit 0
    done = cli(
        "check",
        "-c",
        str(flawed_spec),
        "--out",
        "out2",
        "checks.severity_overrides={box.outside_image: warning}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    # a dataset file alone, unreadable: exit 2 and one line naming the file
    (tmp_path / "broken.json").write_text('{"images": [')
    (tmp_path / "broken.yaml").write_text("format: coco\nroot: .\nannotations: broken.json\nimages: .\n")
    done = cli("check", "--data", "broken.yaml", "--out", "out3", cwd=tmp_path)
    assert done.returncode == 2
    assert "broken.json" in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_python_check_returns_the_report(flawed_spec, tmp_path):
    report = cvtrain.check(flawed_spec, {"checks.min_box_pixels": 0}, out=tmp_path / "out")
    assert isinstance(report, Report)
    assert report.exit_code == 1 and [f.annotation_id for f in report.errors] == [17]
    assert json.loads(report.to_json())["summary"]["errors"] == 1
    assert (tmp_path / "out/report.html").is_file()
    assert "box.outside_image" in report._repr_html_()
