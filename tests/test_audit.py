"""``cvtrain audit`` end to end on a tiny generated shapes set (2 folds, a few steps): the pipeline and its files,
then ``checks.audit`` in ``fit`` and the in-sample ``--checkpoint`` mode. The scores themselves are tested without
training in ``test_audit_scores.py``."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cvtrain

SPEC = {
    "task": "detection",
    "data": {"format": "shapes", "root": "data/shapes", "val_fraction": 0.25,
             "options": {"num_images": 16, "image_size": 64, "seed": 3}},
    "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
    "train": {"max_epochs": 1, "batch_size": 4, "image_size": 64, "num_workers": 0},
    "trainer": {"accelerator": "cpu"},
    "checks": {"workers": 1, "use_cache": False},
    # fold models of 2 steps learn no class: a floor this low keeps their classes judged (not weak_classes), so
    # the files have flagged records to check; test_audit_scores.py tests how weak classes are set aside
    "audit": {"folds": 2, "max_steps": 2, "top": 4, "batch_size": 4, "min_threshold": 0.01},
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One CLI audit of the tiny set, shared by the tests below."""
    folder = tmp_path_factory.mktemp("audit")
    (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    done = subprocess.run([sys.executable, "-m", "cvtrain", "audit", "-c", "spec.yaml", "--out", "out", "--suggest",
                           "suggested.json"], cwd=folder, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", **_environment()})
    return folder, done


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}


def test_audit_writes_its_reports_and_changes_nothing(audited):
    folder, done = audited
    assert done.returncode == 0, done.stderr[-3000:]
    out = folder / "out"
    assert "audit of 16 images" in done.stdout and f"report: {Path('out') / 'audit.html'}" in done.stdout
    dataset = json.loads((folder / "data/shapes/annotations.json").read_text())
    payload = json.loads((out / "audit.json").read_text())
    assert payload["schema_version"] == 1 and payload["mode"] == "out_of_fold" and payload["warning"] is None
    assert payload["dataset"]["annotations"] == len(dataset["annotations"])
    assert [m["fold"] for m in payload["models"]] == [0, 1] and sum(m["images"] for m in payload["models"]) == 16
    annotation_records = [r for r in payload["records"] if r["annotation_id"] is not None]
    assert sorted(r["annotation_id"] for r in annotation_records) == sorted(a["id"] for a in dataset["annotations"])
    assert [r["rank"] for r in payload["records"]] == list(range(1, len(payload["records"]) + 1))
    assert payload["weak_classes"] == [] and not any(r["weak_class"] for r in payload["records"])
    scores = [r["score"] for r in payload["records"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert {r["kind"] for r in payload["records"]} <= {"swapped", "badly_located", "missing", "spurious"}
    assert set(payload["calibration"]) == {"square", "disc", "triangle"}
    # each image was predicted by the model that did not train on it
    for fold in (0, 1):
        held_out = json.loads((out / f"folds/fold-{fold}/fold.json").read_text())["held_out"]
        trained = yaml.safe_load((out / f"folds/fold-{fold}/config.yaml").read_text())
        assert trained["train"]["max_steps"] == 2 and trained["checks"]["audit"] is None
        assert len(held_out) == 8
    assert set(json.loads((out / "folds/fold-0/fold.json").read_text())["held_out"]).isdisjoint(
        json.loads((out / "folds/fold-1/fold.json").read_text())["held_out"])
    predicted = {p["image_id"] for p in json.loads((out / "predictions.json").read_text())}
    assert predicted <= {image["id"] for image in dataset["images"]}
    # the CSV lists the flagged records, the page draws the worst images with filters
    with open(out / "audit.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == payload["summary"]["flagged"]
    html = (out / "audit.html").read_text()
    assert "id='kind'" in html and "id='klass'" in html and "data:image/jpeg;base64" in html
    assert html.count("class='card'") == min(4, sum(1 for i in payload["images"] if i["score"] > 0))
    # the suggestion is a COCO copy for review; the dataset itself is untouched
    suggested = json.loads((folder / "suggested.json").read_text())
    assert len(suggested["images"]) == 16
    known = {annotation["id"] for annotation in dataset["annotations"]}
    assert all("audit" in a for a in suggested["annotations"] if a["id"] not in known)  # additions are marked


def test_fit_drops_what_the_audit_flags(audited, tmp_path):
    folder, done = audited
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((folder / "out/audit.json").read_text())
    threshold = 0.3
    expected = sorted(r["annotation_id"] for r in payload["records"]
                      if r["annotation_id"] is not None and r["score"] >= threshold)
    spec = {**SPEC, "data": {**SPEC["data"], "root": str(folder / "data/shapes")}}
    result = cvtrain.fit(spec, {"checks.audit": str(folder / "out/audit.json"), "checks.audit_threshold": threshold},
                         run_dir=tmp_path / "run", fast_dev_run=True, skip_checks=True)
    dropped = json.loads((result.run_dir / "audit_dropped.json").read_text())
    assert sorted(a["id"] for a in dropped["annotations"]) == expected
    assert dropped["kept"]["annotations"] == payload["dataset"]["annotations"] - len(expected)


def test_fit_refuses_an_audit_of_another_dataset(audited, tmp_path):
    folder, _ = audited
    other = json.loads((folder / "out/audit.json").read_text())
    for record in other["records"]:
        if record["annotation_id"] is not None:
            record["annotation_id"] += 1000
            record["score"] = 1.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    spec = {**SPEC, "data": {**SPEC["data"], "root": str(folder / "data/shapes")}}
    with pytest.raises(cvtrain.CvtrainError, match="not in this dataset"):
        cvtrain.fit(spec, {"checks.audit": str(tmp_path / "other.json")}, run_dir=tmp_path / "run", fast_dev_run=True,
                    skip_checks=True)
    with pytest.raises(cvtrain.CvtrainError, match="audit file not found"):
        cvtrain.fit(spec, {"checks.audit": str(tmp_path / "none.json")}, run_dir=tmp_path / "run2", fast_dev_run=True)
    assert not (tmp_path / "run2").exists()


def test_checkpoint_mode_says_its_scores_are_in_sample(audited, tmp_path):
    folder, done = audited
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = folder / "out/folds/fold-0/checkpoints/last.ckpt"
    result = cvtrain.audit(checkpoint=checkpoint, overrides={"data.root": str(folder / "data/shapes")},
                           out=tmp_path / "in-sample", skip_checks=True)
    payload = json.loads(result.audit_file.read_text())
    assert payload["mode"] == "checkpoint" and "under-report" in payload["warning"]
    assert "under-report" in result._repr_html_()
    assert payload["models"] == [{"fold": None, "images": 16, "checkpoint": str(checkpoint), "metrics": {},
                                  "per_class": {}}]
    with pytest.raises(cvtrain.CvtrainError, match="not empty"):
        cvtrain.audit(checkpoint=checkpoint, out=tmp_path / "in-sample")
    # at a floor of 0.5 this 2-step model has learned no class: nothing can be judged, so nothing is flagged
    weak = cvtrain.audit(checkpoint=checkpoint, overrides={"data.root": str(folder / "data/shapes"),
                                                           "audit.min_threshold": 0.5},
                         out=tmp_path / "weak", skip_checks=True)
    payload = json.loads(weak.audit_file.read_text())
    assert weak.weak_classes == payload["weak_classes"] == ["square", "disc", "triangle"]
    assert weak.flagged == 0 and weak.set_aside == payload["summary"]["weak_class"] > 0
    assert all(r["weak_class"] and not r["flagged"] for r in payload["records"])
    assert "not learned" in weak._repr_html_() and len(weak.csv_file.read_text().splitlines()) == 1


def test_semantic_masks_are_audited_by_region(tmp_path):
    """A tiny semantic set (background and squares): one training step makes a checkpoint, whose audit scores every
    connected region of the given masks and draws the masks in the gallery."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    regions = 0
    for number in range(4):
        image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        x, y = rng.integers(4, 24, 2)
        image[y:y + 16, x:x + 16] = 220
        mask[y:y + 16, x:x + 16] = 1
        regions += 2
        Image.fromarray(image).save(tmp_path / "set/images" / f"{number}.png")
        Image.fromarray(mask).save(tmp_path / "set/masks" / f"{number}.png")
    spec = {"task": "semantic_segmentation",
            "data": {"format": "masks", "root": str(tmp_path / "set"), "classes": ["background", "square"],
                     "val_fraction": 0.25},
            "model": {"name": "lraspp_mobilenet_v3_large"},
            "train": {"max_epochs": 1, "max_steps": 1, "batch_size": 2, "image_size": 48, "num_workers": 0},
            "trainer": {"accelerator": "cpu"}, "checks": {"workers": 1, "use_cache": False}}
    fitted = cvtrain.fit(spec, run_dir=tmp_path / "run", skip_checks=True)
    result = cvtrain.audit(spec, checkpoint=fitted.last_checkpoint, out=tmp_path / "audit", skip_checks=True)
    payload = json.loads(result.audit_file.read_text())
    assert payload["task"] == "semantic_segmentation" and payload["mode"] == "checkpoint"
    assert len(payload["records"]) == regions  # the background and the square of each image
    assert {r["given"]["category"] for r in payload["records"]} == {"background", "square"}
    assert all(r["kind"] == "swapped" and r["annotation_id"] is None for r in payload["records"])
    assert "data:image/jpeg;base64" in result.html_file.read_text()
