"""Label-error scores without training: predictions made from the true labels, perturbed, against planted errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cvtrain.audit.planting import _iou, error_counts, plant_errors, shifted_box
from cvtrain.audit.scores import box_iou, image_scores, mask_iou, region_statistics, score_annotations, score_regions
from cvtrain.config.audit import AuditConfig
from cvtrain.data.formats.coco import read_coco

SIZE = 100
CLASSES = ["square", "disc", "triangle"]


def clean_set(images: int = 30, seed: int = 0) -> dict:
    """``images`` 100x100 images with 1-3 non-overlapping boxes of three classes (annotations only)."""
    rng = random.Random(seed)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for image_id in range(1, images + 1):
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "width": SIZE, "height": SIZE})
        boxes: list[list[float]] = []
        while len(boxes) < rng.randint(1, 3):
            side = rng.uniform(15, 35)
            box = [rng.uniform(0, SIZE - side), rng.uniform(0, SIZE - side), side, side]
            if all(_iou(box, other) == 0 for other in boxes):
                boxes.append(box)
        for box in boxes:
            x, y, w, h = box
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": rng.randint(1, 3), "bbox": box, "area": w * h, "iscrowd": 0,
                                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    return coco


def predictions_from_truth(coco: dict, seed: int = 1, masks: bool = False) -> list[dict]:
    """What a decent detector would say: each true object found with a jittered box and a high score for its class,
    a low score for another class at the same place, and two low-scoring boxes of junk per image."""
    rng = random.Random(seed)
    results = []

    def add(image_id, category, box, score):
        record = {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
        if masks:
            x, y, w, h = box
            rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], SIZE, SIZE)[0]
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(record)

    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        jitter = [x + rng.uniform(-1, 1), y + rng.uniform(-1, 1), w * rng.uniform(0.95, 1.05),
                  h * rng.uniform(0.95, 1.05)]
        add(annotation["image_id"], annotation["category_id"], jitter, rng.uniform(0.6, 0.95))
        other = rng.choice([c for c in (1, 2, 3) if c != annotation["category_id"]])
        add(annotation["image_id"], other, jitter, rng.uniform(0.05, 0.2))
    for image in coco["images"]:
        for _ in range(2):
            side = rng.uniform(5, 20)
            box = [rng.uniform(0, 80), rng.uniform(0, 80), side, side]
            add(image["id"], rng.randint(1, 3), box, rng.uniform(0.05, 0.2))
    return results


def index_of(coco: dict, tmp_path, name: str = "annotations.json"):
    import json

    (tmp_path / name).write_text(json.dumps(coco))
    return read_coco(tmp_path / name, root=tmp_path, images="")


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks"])
def test_each_planted_error_comes_out_on_top_with_its_kind(tmp_path, masks):
    clean = clean_set()
    noisy, truth = plant_errors(clean, {"swapped": 1, "missing": 1, "badly_located": 1, "spurious": 1}, seed=3)
    index = index_of(noisy, tmp_path)
    records, calibration = score_annotations(index, predictions_from_truth(clean, masks=masks), AuditConfig(),
                                             use_masks=masks)
    top = records[:4]
    found = {record.kind: record for record in top}
    assert set(found) == {"swapped", "missing", "badly_located", "spurious"}, [(r.kind, r.score) for r in records[:6]]
    assert found["swapped"].annotation_id == truth["swapped"][0]
    assert found["badly_located"].annotation_id == truth["badly_located"][0]
    assert found["spurious"].annotation_id == truth["spurious"][0]
    deleted = truth["missing"][0]
    assert found["missing"].image_id == deleted["image_id"]
    assert _iou(found["missing"].suggested["bbox"], deleted["bbox"]) > 0.8
    assert found["missing"].suggested["category_id"] == deleted["category_id"]
    # the suggestions say what to do: the true class, the true place
    original = truth["original"][truth["swapped"][0]]
    assert found["swapped"].suggested["category_id"] == original["category_id"]
    moved = truth["original"][truth["badly_located"][0]]
    assert _iou(found["badly_located"].suggested["bbox"], moved["bbox"]) > 0.8
    assert found["spurious"].suggested["action"] == "delete"
    assert all(record.score >= 0.45 for record in top)
    assert records[4].score < min(record.score for record in top)
    # every annotation is scored once; per-class thresholds are the mean self-confidence
    assert sum(r.annotation_id is not None for r in records) == len(noisy["annotations"])
    assert set(calibration.thresholds) == {1, 2, 3} and all(0.3 < t < 0.95 for t in calibration.thresholds.values())
    scores = image_scores(records, [image["id"] for image in noisy["images"]])
    worst = sorted(scores, key=scores.get, reverse=True)[:4]
    planted_images = {index.annotations[[a.id for a in index.annotations].index(i)].image_id
                      for i in truth["swapped"] + truth["badly_located"] + truth["spurious"]} | {deleted["image_id"]}
    assert set(worst) == planted_images


def test_calibration_makes_a_shy_class_comparable(tmp_path):
    """The model scores class 3 at a third of the others' scores: without per-class thresholds its swaps and missed
    objects would sink below every other class's noise; with them a swap into class 3 still ranks first."""
    clean = clean_set(images=40, seed=5)
    noisy, truth = plant_errors(clean, {"swapped": 1}, seed=4)
    original = truth["original"][truth["swapped"][0]]
    predictions = predictions_from_truth(clean)
    for prediction in predictions:
        if prediction["category_id"] == 3:
            prediction["score"] /= 3
    records, calibration = score_annotations(index_of(noisy, tmp_path), predictions, AuditConfig())
    assert calibration.thresholds[3] < 0.5 * min(calibration.thresholds[1], calibration.thresholds[2])
    assert records[0].annotation_id == truth["swapped"][0], original
    assert records[0].kind == "swapped"


def test_a_box_the_model_also_fits_is_not_badly_located_by_a_looser_detection(tmp_path):
    """A confident box around two objects overlaps each annotation partly (fold models trained briefly on photos
    draw one box around two raccoons) and outranks the model's own, less confident, tight box of the annotation.
    The tight box still says the annotation is found where it is: the more confident, the less it is flagged."""
    clean = clean_set(images=40, seed=5)
    target = next(a for a in clean["annotations"] if a["bbox"][0] > 10 and a["bbox"][1] > 10 and a["bbox"][2] > 30)
    x, y, w, h = target["bbox"]
    loose = {"image_id": target["image_id"], "category_id": target["category_id"],
             "bbox": [x - 10, y - 10, w + 20, h + 20], "score": 0.99}
    assert 0.36 < _iou(loose["bbox"], target["bbox"]) < 0.5  # score x overlap above a tight box's at score 0.35
    others = [p for p in predictions_from_truth(clean)
              if not (p["image_id"] == target["image_id"] and _iou(p["bbox"], target["bbox"]) > 0.5)]

    def badly(tight_score: float | None) -> float:
        tight = [] if tight_score is None else [{"image_id": target["image_id"], "category_id": target["category_id"],
                                                 "bbox": [x + 0.5, y + 0.5, w, h], "score": tight_score}]
        records, _ = score_annotations(index_of(clean, tmp_path), others + [loose] + tight, AuditConfig())
        return next(r for r in records if r.annotation_id == target["id"]).kind_scores["badly_located"]

    assert badly(None) > 0.9  # nothing fits the annotation: the loose box says it is off
    assert badly(0.35) < 0.6  # a tight box at about half the class's usual score: half the doubt (1.0 before)
    assert badly(0.9) < 0.05  # a confident tight box: not badly located


def test_saturated_scores_are_ordered_by_the_raw_evidence(tmp_path):
    """Two annotations whose only same-class prediction sits beside them, both above the class's threshold: both
    calibrated scores are 1, and the more confident prediction ranks its annotation first (a tie would leave them in
    file order, which puts the other one first here)."""
    clean = clean_set(images=40, seed=5)
    movable = [a for a in clean["annotations"] if a["bbox"][0] > 30 and a["bbox"][2] > 20]
    first, second = movable[0], next(a for a in movable if a["image_id"] != movable[0]["image_id"])
    predictions = [p for p in predictions_from_truth(clean)
                   if not any(p["image_id"] == a["image_id"] and _iou(p["bbox"], a["bbox"]) > 0.1
                              for a in (first, second))]
    for annotation, score in ((first, 0.9), (second, 0.99)):
        x, y, w, h = annotation["bbox"]
        predictions.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                            "bbox": [x - 0.45 * w, y, w, h], "score": score})
    records, calibration = score_annotations(index_of(clean, tmp_path), predictions, AuditConfig())
    assert max(calibration.thresholds.values()) < 0.9  # both predictions are confident: calibrated scores of 1
    assert [(r.annotation_id, r.kind) for r in records[:2]] == [(second["id"], "badly_located"),
                                                               (first["id"], "badly_located")]
    assert 0.999 < records[1].score < records[0].score <= 1.0


def test_records_resting_on_a_class_the_model_has_not_learned_are_set_aside(tmp_path):
    """The model scores triangles at a twentieth of what it gives the others: it has not learned them (mean score
    where annotated below audit.min_threshold). Records whose given or suggested class is the triangle are kept in
    audit.json but never flagged, ranked after every other record, and left in by checks.audit; a planted spurious
    box of a learned class still comes first."""
    from types import SimpleNamespace

    from cvtrain.audit.apply import AuditFile, drop_flagged
    from cvtrain.audit.report import build_payload

    clean = clean_set(images=40, seed=5)
    noisy, truth = plant_errors(clean, {"spurious": 2}, seed=4)
    predictions = predictions_from_truth(clean)
    for prediction in predictions:
        if prediction["category_id"] == 3:
            prediction["score"] /= 20
    index = index_of(noisy, tmp_path)
    config = SimpleNamespace(audit=AuditConfig())
    records, calibration = score_annotations(index, predictions, config.audit)
    payload = build_payload(index, records, calibration, config, mode="out_of_fold", models=[], seconds=0.0)
    assert payload["weak_classes"] == ["triangle"]
    rows = payload["records"]
    on_triangle = [r["weak_class"] for r in rows]
    assert on_triangle == sorted(on_triangle) and any(on_triangle)  # the set-aside records come last
    for row in rows:
        rests = 3 in ((row["given"] or {}).get("category_id"), row["suggested"].get("category_id"))
        assert row["weak_class"] == rests and not (rests and row["flagged"])
    raw_flags = sum(r.score >= 0.5 for r in records)
    assert payload["summary"]["weak_class"] > 0
    assert payload["summary"]["flagged"] + payload["summary"]["weak_class"] == raw_flags
    learned = [r for r in rows if r["annotation_id"] in truth["spurious"] and not r["weak_class"]]
    assert learned and all(r["flagged"] and r["kind"] == "spurious" for r in learned)
    assert rows[0]["annotation_id"] in {r["annotation_id"] for r in learned}
    kept, dropped = drop_flagged(index, AuditFile(tmp_path / "audit.json", payload), 0.5, tmp_path, write=False)
    triangles = {a.id for a in index.annotations if a.category_id == 3}
    assert triangles <= {a.id for a in kept.annotations} and dropped.annotations == sum(
        r["flagged"] and r["annotation_id"] is not None for r in rows)


def test_box_and_mask_overlaps_match_pycocotools():
    rng = np.random.default_rng(0)
    first = np.c_[rng.uniform(0, 50, (5, 2)), rng.uniform(1, 40, (5, 2))]
    second = np.c_[rng.uniform(0, 50, (7, 2)), rng.uniform(1, 40, (7, 2))]
    reference = mask_utils.iou(first.tolist(), second.tolist(), [0] * 7)
    np.testing.assert_allclose(box_iou(first, second), reference, atol=1e-9)
    rles = [mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 100)[0] for x, y, w, h in first]
    assert mask_iou(rles, rles).diagonal().tolist() == [1.0] * 5


def test_planting_is_seeded_and_moves_boxes_to_the_asked_overlap():
    clean = clean_set(images=60)
    counts = error_counts(len(clean["annotations"]), 0.2)
    assert sum(counts.values()) == round(0.2 * len(clean["annotations"]))
    first, truth = plant_errors(clean, counts, seed=7)
    again, _ = plant_errors(clean, counts, seed=7)
    assert first == again
    for annotation_id in truth["badly_located"]:
        moved = next(a for a in first["annotations"] if a["id"] == annotation_id)
        assert 0.4 - 1e-3 <= _iou(moved["bbox"], truth["original"][annotation_id]["bbox"]) <= 0.7 + 1e-3
    assert len(first["annotations"]) == len(clean["annotations"]) - counts["missing"] + counts["spurious"]
    assert _iou(shifted_box([0, 0, 10, 10], 0.5, 0.0), [0, 0, 10, 10]) == pytest.approx(0.5, abs=1e-6)


def test_a_relabelled_region_is_the_worst_in_semantic_masks():
    """Two images of three classes; in the first a square of class 2 inside class 1 is labelled 0. The model
    (probabilities from the true mask, smoothed) says 2 there: that region alone scores high and suggests class 2."""
    rng = np.random.default_rng(0)
    statistics = []
    for image_id in (1, 2):
        truth = np.zeros((60, 80), np.int64)
        truth[:, 40:] = 1
        truth[10:30, 50:70] = 2
        truth[35:55, 10:30] = 2
        given = truth.copy()
        if image_id == 1:
            given[10:30, 50:70] = 0  # the planted error: this square is labelled as class 0
        probabilities = np.full((3, 60, 80), 0.05) + rng.uniform(0, 0.05, (3, 60, 80))
        for label in range(3):
            probabilities[label][truth == label] = 0.9
        probabilities /= probabilities.sum(0, keepdims=True)
        statistics.append(region_statistics(image_id, given, probabilities, 3, min_pixels=16))
    records, calibration = score_regions(statistics, [0, 1, 2], AuditConfig())
    assert records[0].image_id == 1 and records[0].given["category_id"] == 0
    assert records[0].suggested["category_id"] == 2
    assert records[0].score > 0.9 and all(record.score < 0.05 for record in records[1:])
    assert calibration.thresholds[2] > 0.5
