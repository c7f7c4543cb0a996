"""ONNX export: parity with PyTorch judged by onnxruntime, predict/evaluate through the file, tampering, the extra.

One model per family, trained for a few steps through the API and exported once (module-scoped fixtures):
SSDlite on generated shapes, LR-ASPP on generated masks, Mask R-CNN on generated discs and squares.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx  # the export extra, which the dev extra holds: these tests run wherever the others do
import onnxruntime
import pytest
import torch
import yaml
from PIL import Image
from test_instance import tiny_instances
from test_segmentation import class_masks, write_pairs

import cvtrain
from cvtrain.api import export
from cvtrain.cli import main
from cvtrain.engine.checkpoints import load_task

pytestmark = pytest.mark.usefixtures("one_thread")
RTOL, ATOL = 1e-3, 1e-5  # torchvision's ONNX tests


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def tiny_run(task: str, data: dict, model: dict, **train) -> dict:
    return {
        "task": task, "data": data, "model": model,
        "train": {"max_epochs": 2, "batch_size": 4, "num_workers": 0, "optimizer": {"name": "adamw", "lr": 0.003},
                  "scheduler": {"name": "constant", "warmup_steps": 0}, **train},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 0}, "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }


def onnx_inputs(path: Path) -> list:
    """The input's dimensions as the file states them: numbers, or names where they are dynamic."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def metadata(path: Path) -> dict:
    props = onnx.load(str(path), load_external_data=False).metadata_props
    return {p.key.removeprefix("cvtrain."): json.loads(p.value) if p.value[:1] in "[{" else p.value for p in props}


def records_by_image(path: Path) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in json.loads(path.read_text()):
        grouped.setdefault(record["file_name"], []).append(record)
    return grouped


def same_detections(first: list[dict], second: list[dict]) -> bool:
    """Every record of one list has a partner of the same category in the other, boxes within 0.02 px and scores
    within 2e-5 (the JSON rounds to 0.01 px and 1e-5), one to one."""
    if len(first) != len(second):
        return False
    a = np.array([[r["category_id"], *r["bbox"], r["score"]] for r in first]).reshape(-1, 6)
    b = np.array([[r["category_id"], *r["bbox"], r["score"]] for r in second]).reshape(-1, 6)
    close = ((a[:, None, 0] == b[None, :, 0]) & (np.abs(a[:, None, 1:5] - b[None, :, 1:5]).max(-1) <= 0.02)
             & (np.abs(a[:, None, 5] - b[None, :, 5]) <= 2e-5))
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(~close)
    return bool(close[rows, cols].all())


# ----------------------------------------------------------------------------- detection: SSDlite
@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-detection")
    data = {"format": "shapes", "root": str(tmp / "shapes"), "val_fraction": 0.25,
            "options": {"num_images": 16, "image_size": 96, "seed": 1}}
    # SGD: after a dozen AdamW steps from scratch this SSDlite gives every image the same scores (its BatchNorm
    # statistics lag behind), a model no parity check could tell from a broken one.
    spec = tiny_run("detection", data, {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
                    image_size=96, max_epochs=4, optimizer={"name": "sgd", "lr": 0.01})
    fitted = cvtrain.fit(write_spec(tmp / "spec.yaml", spec), run_dir=tmp / "run", skip_checks=True)
    exported = export(fitted.best_checkpoint, tmp / "ssdlite.onnx")
    return tmp, fitted, exported


def test_detector_exports_with_parity_and_says_what_it_is(detector):
    tmp, fitted, exported = detector
    assert exported.verified and exported.path == tmp / "ssdlite.onnx" and exported.path.is_file()
    report = exported.parity
    assert report.ok and len(report.images) == 4  # the validation split
    worst = report.worst()
    assert worst["box"] <= ATOL + RTOL * 96 and worst["score"] <= ATOL + RTOL
    assert all(image.detections[0] == image.detections[1] > 0 for image in report.images)
    onnx.checker.check_model(str(exported.path))
    assert onnx_inputs(exported.path) == [1, 3, "height", "width"]  # the detectors' batch is fixed
    meta = metadata(exported.path)
    assert meta["class_names"] == ["square", "disc", "triangle"] and meta["task"] == "detection"
    assert meta["image_size"] == "96" and meta["input"]["batch"] == 1 and meta["input"]["height"] is None
    # SSDlite's own transform maps [0, 1] to [-1, 1] (torchvision's ssdlite320_mobilenet_v3_large), inside the graph
    assert meta["normalisation"]["mean"] == meta["normalisation"]["std"] == [0.5, 0.5, 0.5]
    assert meta["normalisation"]["inside_graph"] is True
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["cvtrain"] == cvtrain.__version__
    written = json.loads((tmp / "ssdlite.parity.json").read_text())
    assert written["ok"] and written["worst"]["box"] == worst["box"]


def test_onnxruntime_alone_reproduces_the_checkpoint(detector):
    """Independently of cvtrain's runtime and matching: a bare onnxruntime session against torchvision's model, on an
    image of another size than the one traced, the ten best detections row by row."""
    tmp, fitted, exported = detector
    task = load_task(fitted.best_checkpoint).eval()
    image = torch.from_numpy(np.array(Image.open(sorted((tmp / "shapes" / "images").iterdir())[0]))).float() / 255
    image = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(72, 96), mode="bilinear")[0]
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    boxes, scores, labels, index = session.run(None, {"images": image[None].numpy()})
    with torch.no_grad():
        expected = task.model([image])[0]
        other = task.model([image.flip(-1)])[0]
    assert not torch.allclose(other["scores"][:10], expected["scores"][:10])  # a model that looks at its input
    assert (index == 0).all() and len(scores) == len(expected["scores"])
    top = slice(0, 10)
    torch.testing.assert_close(torch.from_numpy(scores[top]), expected["scores"][top], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(torch.from_numpy(boxes[top]), expected["boxes"][top], rtol=RTOL, atol=ATOL)
    assert labels[top].tolist() == expected["labels"][top].tolist()
    assert boxes[:, 3].max() <= 72 + 1e-3  # boxes are in the input image's pixels


def test_predict_through_onnx_gives_the_checkpoints_detections(detector, capsys):
    tmp, fitted, exported = detector
    source = tmp / "shapes" / "images"
    out = tmp / "pred-onnx"
    assert main(["predict", "--model", str(exported.path), "--source", str(source), "--out", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("onnxruntime: ") and last.endswith(" images/s")
    reference = cvtrain.predict(checkpoint=fitted.best_checkpoint, source=source, out=tmp / "pred-torch")
    onnx_records = records_by_image(tmp / "pred-onnx" / "predictions.json")
    torch_records = records_by_image(reference.predictions_file)
    assert onnx_records.keys() == torch_records.keys() and len(onnx_records) == 16
    assert all(same_detections(onnx_records[name], torch_records[name]) for name in torch_records)
    assert {r["category_name"] for records in onnx_records.values() for r in records} <= {"square", "disc", "triangle"}
    assert len(list((tmp / "pred-onnx" / "images").glob("*.jpg"))) == 16


def test_evaluate_through_onnx_gives_the_checkpoints_map(detector, capsys):
    tmp, fitted, exported = detector
    assert main(["evaluate", "--model", str(exported.path), "--out", str(tmp / "eval-onnx")]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime" in printed and "images/s" in printed
    written = json.loads((tmp / "eval-onnx" / "metrics.json").read_text())
    assert written["runtime"] == "onnxruntime" and written["model"] == str(exported.path)
    for key in ("mAP", "AP50", "AR100"):  # fit scored best.ckpt on the same split with PyTorch
        assert abs(written["scalars"][key] - fitted.metrics[key]) <= 0.001, key


def test_parity_holds_on_real_photos_of_other_sizes(detector, shared_datasets):
    """Raccoon photos (landscape and portrait, resized to 96 px on the longest side) through the dynamic height and
    width, checked against the same checkpoint with --verify."""
    tmp, fitted, exported = detector
    result = export(fitted.best_checkpoint, verify=exported.path, images=shared_datasets / "raccoon" / "images")
    assert result.verified and len(result.parity.images) == 8
    assert all(image.image.startswith("raccoon-") and image.detections[0] > 0 for image in result.parity.images)


def test_tampered_weights_fail_parity_with_exit_1_and_the_unverified_suffix(detector, tmp_path, capsys):
    tmp, fitted, exported = detector
    model = onnx.load(str(exported.path))
    stem = next(node for node in model.graph.node if node.op_type == "Conv").input[1]  # the first convolution's weights
    weights = next(tensor for tensor in model.graph.initializer if tensor.name == stem)
    values = onnx.numpy_helper.to_array(weights)
    weights.CopyFrom(onnx.numpy_helper.from_array((values * 1.1).astype(values.dtype), stem))  # 10 % stronger
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    code = main(["export", "--checkpoint", str(fitted.best_checkpoint), "--verify", str(tampered)])
    captured = capsys.readouterr()
    assert code == 1
    assert not tampered.exists() and (tmp_path / "tampered.onnx.unverified").is_file()
    assert "PARITY FAILS" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]  # besides progress bars
    assert "Traceback" not in captured.err and len(errors) == 1
    assert "onnxruntime and PyTorch disagree" in errors[0] and ".unverified" in errors[0]
    print(errors[0])
    assert not json.loads((tmp_path / "tampered.parity.json").read_text())["ok"]


def test_fixed_size_and_batch_give_a_static_input(detector, tmp_path):
    tmp, fitted, exported = detector
    result = export(fitted.best_checkpoint, tmp_path / "fixed.onnx", image_size=(96, 96), batch=2, opset=16)
    assert result.verified and onnx_inputs(result.path) == [2, 3, 96, 96]
    assert onnx.load(str(result.path), load_external_data=False).opset_import[0].version == 16


def test_a_fixed_size_that_changes_the_answers_is_kept_unverified(detector, tmp_path, capsys):
    """The 96 x 96 images padded to 96 x 128 are what this graph sees: SSDlite then squeezes another picture into
    its square input, the detections move, and the export-time check refuses the file."""
    tmp, fitted, exported = detector
    out = tmp_path / "padded.onnx"
    code = main(["export", "--checkpoint", str(fitted.best_checkpoint), "--out", str(out), "--image-size", "96", "128"])
    assert code == 1 and not out.exists() and (tmp_path / "padded.onnx.unverified").is_file()
    assert "PARITY FAILS" in capsys.readouterr().out
    assert not any(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_an_existing_file_is_not_replaced(detector, capsys):
    tmp, fitted, exported = detector
    before = exported.path.read_bytes()
    assert main(["export", "--checkpoint", str(fitted.best_checkpoint), "--out", str(exported.path)]) == 2
    assert "file exists" in capsys.readouterr().err and exported.path.read_bytes() == before


def test_without_the_extra_the_error_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed: ``import onnx`` raises ImportError
    code = main(["export", "--checkpoint", str(tmp_path / "missing.ckpt")])  # refused before the checkpoint is read
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: onnx not installed") and 'pip install -e ".[export]"' in err
    assert not (tmp_path / "export").exists()


# ----------------------------------------------------------------------------- semantic: LR-ASPP
@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-semantic")
    write_pairs(tmp / "data", class_masks(8, seed=3))
    (tmp / "data" / "train.txt").write_text("".join(f"frame_{i:03d}.jpg\n" for i in range(6)))
    (tmp / "data" / "val.txt").write_text("".join(f"frame_{i:03d}.jpg\n" for i in range(6, 8)))
    data = {"format": "masks", "root": str(tmp / "data"), "classes": ["background", "box", "disc"], "ignore_index": 255,
            "splits": {"train": {"list": "train.txt"}, "val": {"list": "val.txt"}}}
    spec = tiny_run("semantic_segmentation", data, {"name": "lraspp_mobilenet_v3_large"}, image_size=64,
                    batch_size=3, max_epochs=3)
    fitted = cvtrain.fit(write_spec(tmp / "spec.yaml", spec), run_dir=tmp / "run", skip_checks=True)
    exported = export(fitted.best_checkpoint, tmp / "lraspp.onnx")
    return tmp, fitted, exported


def test_semantic_export_has_a_dynamic_batch_and_matches_torchvision(segmenter):
    tmp, fitted, exported = segmenter
    assert exported.verified and exported.parity.worst()["logits"] <= 1e-3
    assert exported.parity.worst()["mask_iou"] >= 0.99
    assert onnx_inputs(exported.path) == ["batch", 3, "height", "width"]
    # A bare onnxruntime session on two images at once, against the torchvision network fed as the task feeds it.
    task = load_task(fitted.best_checkpoint).eval()
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp / "data" / "images" / f"frame_00{i}.jpg")))
                          for i in (6, 7)]).permute(0, 3, 1, 2).float() / 255
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = task.model((images - task.mean) / task.std)["out"]
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=RTOL, atol=ATOL)


def test_semantic_evaluate_and_predict_through_onnx(segmenter):
    tmp, fitted, exported = segmenter
    evaluation = cvtrain.evaluate(model=exported.path, out=tmp / "eval-onnx")
    assert evaluation.runtime == "onnxruntime" and evaluation.images_per_second > 0
    for key in ("mIoU", "pixel_accuracy", "baseline_mIoU"):  # the baseline needs the training counts from the file
        assert abs(evaluation.metrics[key] - fitted.metrics[key]) <= 0.001, key
    source = tmp / "data" / "images"
    cvtrain.predict(model=exported.path, source=source, out=tmp / "pred-onnx")
    cvtrain.predict(checkpoint=fitted.best_checkpoint, source=source, out=tmp / "pred-torch")
    for name in sorted(p.stem for p in source.iterdir()):
        ours = np.asarray(Image.open(tmp / "pred-onnx" / "masks" / f"{name}.png"))
        theirs = np.asarray(Image.open(tmp / "pred-torch" / "masks" / f"{name}.png"))
        assert ours.shape == theirs.shape == (48, 64) and (ours == theirs).mean() >= 0.999


# ----------------------------------------------------------------------------- instance: Mask R-CNN
@pytest.fixture(scope="module")
def instance_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-instance")
    tiny_instances(tmp / "data", count=6)
    data = {"format": "coco", "root": str(tmp / "data"), "val_fraction": 0.34, "split_seed": 1}
    # Few proposals and sampled boxes: the box head's 12544x1024 layer dominates a CPU step otherwise.
    model = {"name": "maskrcnn_resnet50_fpn", "options": {
        "box_score_thresh": 0.0, "box_detections_per_img": 20, "box_batch_size_per_image": 32,
        "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
        "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50}}
    spec = tiny_run("instance_segmentation", data, model, image_size=80, batch_size=2, max_epochs=1, max_steps=2,
                    gradient_clip_val=1.0, optimizer={"name": "sgd", "lr": 0.002})
    fitted = cvtrain.fit(write_spec(tmp / "spec.yaml", spec), run_dir=tmp / "run", skip_checks=True)
    exported = export(fitted.best_checkpoint, tmp / "maskrcnn.onnx")
    return tmp, fitted, exported


def test_mask_rcnn_exports_with_parity_and_evaluates_the_same(instance_model):
    tmp, fitted, exported = instance_model
    assert exported.verified and onnx_inputs(exported.path) == [1, 3, "height", "width"]
    worst = exported.parity.worst()
    assert worst["mask_iou"] >= 0.99 and worst["box"] <= ATOL + RTOL * 80
    assert [o.name for o in onnxruntime.InferenceSession(str(exported.path)).get_outputs()] == [
        "boxes", "scores", "labels", "image_index", "masks"]
    evaluation = cvtrain.evaluate(model=exported.path, out=tmp / "eval-onnx")
    for key in ("mAP", "AP50", "segm_AP", "segm_AP50"):
        assert abs(evaluation.metrics[key] - fitted.metrics[key]) <= 0.001, key


# ----------------------------------------------------------------------------- the parity rule itself
def detections(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_parity_matches_detections_across_orders_and_excuses_only_exact_ties_at_a_cut():
    from cvtrain.export.parity import compare_detections

    reference = detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], [0.9, 0.5, 0.5], [1, 2, 2])
    swapped = detections([[30, 30, 40, 40.001], [0, 0, 10, 10], [5, 5, 20, 20]], [0.5, 0.9000001, 0.5], [2, 1, 2])
    same = compare_detections("a", reference, swapped)
    assert same.ok and same.box == pytest.approx(0.001, abs=1e-5) and same.tied == 0
    # A cut among equal scores kept another box of score 0.5 (top-k over ties is arbitrary): excused, counted.
    cut = compare_detections("b", reference, detections([[0, 0, 10, 10], [5, 5, 20, 20], [60, 60, 70, 70]],
                                                        [0.9, 0.5, 0.5], [1, 2, 2]))
    assert cut.ok and cut.tied == 2
    moved = compare_detections("c", reference, detections([[0, 0, 10, 10.1], [5, 5, 20, 20], [30, 30, 40, 40]],
                                                          [0.9, 0.5, 0.5], [1, 2, 2]))
    assert not moved.ok and moved.box == 0.0  # the two boxes that match are equal; the moved one is off by 0.1 px
    assert "differ by up to 0.1 px" in moved.problems[-1]  # 0.1 px > 1e-5 + 1e-3 * 10
    relabelled = compare_detections("d", reference, detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]],
                                                               [0.9, 0.5, 0.5], [3, 2, 2]))
    assert not relabelled.ok and "without a match" in relabelled.problems[0]
    rescored = compare_detections("e", reference, detections([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]],
                                                             [0.9, 0.5, 0.49], [1, 2, 2]))
    assert not rescored.ok  # 0.49 and 0.5 are no tie: a score that moved
    at_threshold = compare_detections("f", detections([[0, 0, 10, 10]], [0.0500001], [1]), detections([], [], []),
                                      score_threshold=0.05)
    assert at_threshold.ok and at_threshold.tied == 1


def test_parity_of_masks_and_logits():
    from cvtrain.export.parity import compare_detections, compare_logits

    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 2:12, 2:12] = 0.9  # 100 pixels
    other = mask.clone()
    other[..., 11, 2:12] = 0.1  # 10 pixels fewer: IoU 0.9
    box = [[2, 2, 12, 12]]
    assert compare_detections("a", {**detections(box, [0.8], [1]), "masks": mask},
                              {**detections(box, [0.8], [1]), "masks": mask.clone()}).mask_iou == 1.0
    result = compare_detections("b", {**detections(box, [0.8], [1]), "masks": mask},
                                {**detections(box, [0.8], [1]), "masks": other})
    assert result.mask_iou == pytest.approx(0.9) and not result.ok
    logits = torch.randn(3, 8, 8)
    assert compare_logits("c", logits, logits + 1e-6).ok
    shifted = compare_logits("d", logits, logits + 0.01)
    assert not shifted.ok and shifted.logits == pytest.approx(0.01, rel=1e-3)


def test_a_box_coordinate_is_judged_against_its_box_and_a_logit_against_its_pixel():
    from cvtrain.export.parity import compare_detections, compare_logits

    # x0 = centre - width / 2 carries the rounding of numbers as large as x1: 3.2e-5 px on a box 59 px wide is
    # rounding (torchvision's Faster R-CNN v2 gave exactly this), though 1e-5 + 1e-3 x 0.0224 is only 3.2e-5 ...
    reference = detections([[0.0224, 0.0, 59.2, 10.0]], [0.9], [1])
    assert compare_detections("a", reference, detections([[0.02243, 0.0, 59.2, 10.0]], [0.9], [1])).ok
    # ... and a box moved by more than 1e-3 of its far edge is not (0.1 px > 0.059 px; 1 px > 0.51 px at x = 510)
    assert not compare_detections("b", reference, detections([[0.1224, 0.0, 59.2, 10.0]], [0.9], [1])).ok
    assert not compare_detections("c", detections([[500, 0, 510, 10]], [0.9], [1]),
                                  detections([[501, 0, 510, 10]], [0.9], [1])).ok
    # a logit near 0 next to a large one at its pixel carries the large one's rounding; the argmax holds
    logits = torch.tensor([[[1000.0]], [[0.001]]])
    assert compare_logits("d", logits, logits + torch.tensor([[[0.0]], [[0.002]]])).ok
    small = torch.tensor([[[1.0]], [[0.001]]])
    assert not compare_logits("e", small, small + torch.tensor([[[0.0]], [[0.1]]])).ok


class NearTie:
    """A stand-in task whose answer hangs on the 6th digit of its input, as a detector's NMS can on a near-tie.

    It returns two detections; the second is box A when the image's mean is above ``cut`` and box B otherwise.
    """

    def __init__(self, cut: float):
        self.cut, self.calls = cut, 0

    def __call__(self, images):
        self.calls += 1
        second = [40, 40, 50, 50] if float(images[0].double().mean()) > self.cut else [40.5, 40, 50.5, 50]
        return [detections([[0, 0, 10, 10], second], [0.9, 0.7], [1, 1])]


def test_a_near_tie_is_retried_on_moved_copies_and_real_differences_are_not():
    from cvtrain.export.parity import _near_tie, _retry_near_tie, compare_detections

    image = torch.full((3, 16, 16), 0.5)
    task = NearTie(cut=0.5 - 1e-9)  # the image sits on the cut: PyTorch's own answer flips under noise of 1e-5
    other_answer = detections([[0, 0, 10, 10], [40.5, 40, 50.5, 50]], [0.9, 0.7], [1, 1])
    result = compare_detections("a", task([image])[0], other_answer)
    assert not result.ok and result.unmatched == 2 and _near_tie(result)
    retried = _retry_near_tie(task, image, other_answer, result, None)
    assert retried.ok and retried.unstable == 2 and task.calls > 1
    # the same answer against a model that does not hang on a tie: eight retries, none matches, the image fails
    steady = NearTie(cut=0.25)
    result = compare_detections("b", steady([image])[0], other_answer)
    assert not _retry_near_tie(steady, image, other_answer, result, None).ok and steady.calls == 1 + 8
    # most detections differ (changed weights, a wrong graph): not a near-tie, never retried
    tampered = detections([[1, 1, 11, 11], [41, 41, 51, 51]], [0.8, 0.6], [1, 1])
    assert not _near_tie(compare_detections("c", task([image])[0], tampered))  # 4 unmatched (2 a side) > 2
    assert not _near_tie(compare_detections("d", detections([[0, 0, 10, 10]] * 40, [0.9] * 40, [1] * 40),
                                            detections([[1, 1, 11, 11]] * 40, [0.8] * 40, [1] * 40)))
