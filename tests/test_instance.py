"""Instance segmentation: COCO polygons and RLE, crowd regions, segm parity with pycocotools, Mask R-CNN end to end."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import cvtrain
from cvtrain.config import load_config
from cvtrain.data.dataset import DetectionDataset
from cvtrain.data.formats.coco import read_coco
from cvtrain.data.loading import build_index
from cvtrain.evaluation.coco import STAT_NAMES, coco_evaluate
from cvtrain.tasks.instance import InstanceSegmentationTask, encode_rle, masks_at

REPO = Path(__file__).resolve().parents[1]
SEGM = [0.31955, 0.56229, 0.29893, 0.38737, 0.31018, 0.32693, 0.26823, 0.41545, 0.41684, 0.46945, 0.37676, 0.38147]
SIZE = (64, 80)  # height, width of the tiny images


pytestmark = pytest.mark.usefixtures("one_thread")


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (integer run lengths, column-major, starting with a run of zeros), written by hand."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def tiny_instances(root: Path, count: int = 6, seed: int = 0) -> tuple[Path, dict[int, np.ndarray]]:
    """Discs as polygons, squares as compressed RLE, and a crowd of dots (uncompressed RLE) on image 1.

    Category ids are sparse (5, 9) to exercise the label mapping. Returns the annotation file and every
    annotation's true mask by id.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    height, width = SIZE
    yy, xx = np.mgrid[:height, :width]
    data = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "disc"}, {"id": 9, "name": "square"}]}
    truth: dict[int, np.ndarray] = {}
    for image_id in range(1, count + 1):
        canvas = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        cx, cy, r = rng.integers(16, 30), rng.integers(16, height - 16), rng.integers(8, 13)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        polygon = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).round(1)
        disc = mask_utils.decode(mask_utils.frPyObjects([polygon.ravel().tolist()], height, width))[..., 0]
        canvas[disc == 1] = (230, 60, 60)
        x, y, side = rng.integers(44, 60), rng.integers(4, 40), rng.integers(12, 18)
        square = np.zeros(SIZE, dtype=np.uint8)
        square[y:y + side, x:x + side] = 1
        canvas[square == 1] = (60, 230, 60)
        rle = mask_utils.encode(np.asfortranarray(square))
        annotations = [
            (5, [polygon.ravel().tolist()], disc, 0),
            (9, {"size": rle["size"], "counts": rle["counts"].decode("ascii")}, square, 0),
        ]
        if image_id == 1:  # a crowd: scattered dots, labelled once as a region
            crowd = ((yy % 6 == 0) & (xx % 6 == 0) & (yy > 48)).astype(np.uint8)
            canvas[crowd == 1] = (230, 60, 60)
            annotations.append((5, uncompressed_rle(crowd), crowd, 1))
        for category_id, segmentation, mask, iscrowd in annotations:
            ys, xs = np.nonzero(mask)
            annotation_id = len(data["annotations"]) + 1
            data["annotations"].append({
                "id": annotation_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "area": int(mask.sum()), "iscrowd": iscrowd})
            truth[annotation_id] = mask
        Image.fromarray(canvas).save(root / "images" / f"{image_id}.png")
        data["images"].append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path, truth


# ---------------------------------------------------------------------- data
def test_polygons_both_rle_kinds_and_crowds(tmp_path):
    path, truth = tiny_instances(tmp_path, count=2)
    index = read_coco(path, root=tmp_path, images="images")
    image, target = DetectionDataset(index, with_masks=True)[0]
    # Image 1 has a disc (polygon), a square (compressed RLE) and a crowd (uncompressed RLE): the crowd is not
    # trained on.
    assert target["labels"].tolist() == [index.label_of(5), index.label_of(9)] == [1, 2]
    assert target["masks"].shape == (2, *SIZE)
    assert np.array_equal(target["masks"][0].numpy(), truth[1]) and np.array_equal(target["masks"][1].numpy(), truth[2])
    # The crowd stays in the ground truth, where pycocotools ignores what matches it.
    crowd = next(a for a in index.to_coco()["annotations"] if a["iscrowd"])
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(crowd["segmentation"], *SIZE)), truth[3])


def test_crowd_regions_are_honoured_in_evaluation(tmp_path):
    path, truth = tiny_instances(tmp_path, count=1)
    gt = read_coco(path, root=tmp_path, images="images").to_coco()
    perfect = [{"image_id": 1, "category_id": c, "segmentation": encode_rle(torch.from_numpy(truth[a][None]).bool())[0],
                "score": 0.9} for a, c in ((1, 5), (2, 9))]
    on_crowd = {"image_id": 1, "category_id": 5, "score": 0.95,
                "segmentation": encode_rle(torch.from_numpy(truth[3][None]).bool())[0]}
    assert coco_evaluate(gt, perfect + [on_crowd], "segm")["stats"]["AP"] == pytest.approx(1.0)
    no_crowd = {**gt, "annotations": [a for a in gt["annotations"] if not a["iscrowd"]]}
    assert coco_evaluate(no_crowd, perfect + [on_crowd], "segm")["stats"]["AP"] < 0.9  # a false positive otherwise


def test_fruits_nuts_loads_as_a_ready_spec(on_shared):
    spec = REPO / "configs" / "instance" / "fruits_nuts_maskrcnn.yaml"
    config = load_config(spec, on_shared(spec))
    index = build_index(config.data)
    assert len(index.images) == 18 and len(index.annotations) == 165
    assert index.class_names == ["date", "fig", "hazelnut"]
    counts = np.bincount([a.category_id for a in index.annotations])
    assert counts[1:].tolist() == [71, 41, 53]
    assert all(a.segmentation and not a.iscrowd for a in index.annotations)
    assert {image.split for image in index.images} == {"train", "val"}
    # Polygon masks cover the stored areas (SOURCE.md: median difference 0.05 %).
    image = index.images[0]
    annotations = index.annotations_by_image[image.id]
    masks = DetectionDataset(index, with_masks=True).instance_masks(annotations, image.height, image.width)
    relative = [abs(m.sum() - a.area) / a.area for m, a in zip(masks, annotations)]
    assert np.median(relative) < 0.01
    for name in ("maskrcnn_resnet50_fpn.yaml", "maskrcnn_resnet50_fpn_v2.yaml"):
        assert load_config(REPO / "configs" / "instance" / name).task == "instance_segmentation"


# ------------------------------------------------------------------- metrics
@pytest.fixture(scope="module")
def parity(shared_datasets):
    root = shared_datasets / "coco_eval_parity"
    gt_file = root / "faster_coco_eval" / "tests" / "dataset" / "cocoapi" / "instances_val2014_100.json"
    results = json.loads((root / "cocoapi" / "results" / "instances_val2014_fakesegm100_results.json").read_text())
    return gt_file, results


def test_segm_stats_equal_pycocotools(parity):
    gt_file, results = parity
    # loadRes writes into the dicts it is given (a numpy 'bbox'), so it gets its own copy.
    reference = COCOeval(COCO(str(gt_file)), COCO(str(gt_file)).loadRes(copy.deepcopy(results)), "segm")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    ours = coco_evaluate(read_coco(gt_file, root=gt_file.parent).to_coco(), results, "segm", backend="pycocotools")[
        "stats"
    ]
    assert [ours[name] for name in STAT_NAMES] == list(reference.stats)  # exactly
    assert [round(ours[name], 5) for name in STAT_NAMES] == SEGM
    assert ours["AP"] == 0.3195452758576433


def test_task_scores_masks_by_their_own_area(parity):
    """Results that carry boxes too (as ours do) must give the published segm numbers, not box-area ones."""
    gt_file, results = parity
    index = read_coco(gt_file, root=gt_file.parent)
    config = {"task": "instance_segmentation", "data": {"format": "coco", "root": str(gt_file.parent)},
              "model": {"name": "maskrcnn_resnet50_fpn"}, "train": {"image_size": 64}}
    task = InstanceSegmentationTask(config, index.class_names, [c.id for c in index.categories])
    task.ground_truth = index.to_coco()
    boxed = []
    for record in results:
        x, y, w, h = mask_utils.toBbox(record["segmentation"]).tolist()
        boxed.append({**record, "bbox": [x - w, y - h, 3 * w, 3 * h]})  # 9 times the box area
    metrics = task.evaluate_results(boxed, {image["id"] for image in task.ground_truth["images"]})
    assert [round(metrics["scalars"][f"segm_{name}"], 5) for name in STAT_NAMES] == SEGM
    boxes_only = coco_evaluate(task.ground_truth, [{k: v for k, v in r.items() if k != "segmentation"} for r in boxed])
    assert (
        metrics["scalars"]["AP"] == boxes_only["stats"]["AP"] and metrics["scalars"]["mAP"] == metrics["scalars"]["AP"]
    )
    assert set(metrics["per_class"]) == {"bbox", "segm"}


def test_masks_are_mapped_back_to_the_original_size():
    probabilities = torch.zeros((2, 1, 32, 40))
    probabilities[0, 0, 4:12, 10:30] = 0.9
    probabilities[1, 0, 20:30, 0:5] = 0.6
    masks = masks_at(probabilities, (64, 80))
    expected = np.zeros((2, 64, 80), dtype=bool)
    expected[0, 8:24, 20:60] = True  # twice the size: edge pixels interpolate to 0.25 / 0.75 of 0.9
    # Resized before thresholding: at 0.6 an inner edge pixel gets 0.75 * 0.6 = 0.45 < 0.5 and drops out.
    expected[1, 41:59, 0:9] = True
    assert np.array_equal(masks.numpy(), expected)
    rles = encode_rle(masks)
    assert json.dumps(rles)  # JSON-ready: counts are text
    assert np.array_equal(mask_utils.decode(rles).transpose(2, 0, 1), expected.astype(np.uint8))


# ----------------------------------------------------- fit, evaluate, predict
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("instance")
    tiny_instances(tmp / "data", count=6)
    spec = {
        "task": "instance_segmentation",
        "data": {"format": "coco", "root": str(tmp / "data"), "val_fraction": 0.34, "split_seed": 1},
        # Few proposals and sampled boxes: the box head's 12544x1024 layer dominates a CPU step otherwise.
        "model": {"name": "maskrcnn_resnet50_fpn", "options": {
            "box_score_thresh": 0.0, "box_detections_per_img": 20, "box_batch_size_per_image": 32,
            "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50}},
        "train": {"max_epochs": 1, "max_steps": 2, "batch_size": 2, "image_size": 80, "num_workers": 0,
                  "gradient_clip_val": 1.0,  # an untrained Mask R-CNN with plain BatchNorm diverges otherwise
                  "optimizer": {"name": "sgd", "lr": 0.002}, "scheduler": {"name": "constant", "warmup_steps": 0}},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 1, "score_threshold": 0.0},
        "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp, cvtrain.fit(tmp / "spec.yaml", run_dir=tmp / "run")


def test_fit_reports_bbox_and_segm_stats(fitted):
    tmp, result = fitted
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["monitor"] == "val/mAP"
    assert {"AP", "AP50", "segm_AP", "segm_AP50", "segm_AR100"} <= set(result.metrics)
    assert set(metrics["best"]["per_class"]) == {"bbox", "segm"}
    assert set(metrics["best"]["per_class"]["segm"]) == {"disc", "square"}
    assert all(-1.0 <= value <= 1.0 for value in result.metrics.values() if isinstance(value, float))


def test_evaluate_reproduces_segm(fitted):
    tmp, result = fitted
    evaluation = cvtrain.evaluate(checkpoint=result.last_checkpoint, out=tmp / "eval", accelerator="cpu")
    assert evaluation.num_images == 2
    assert evaluation.metrics["segm_AP"] == pytest.approx(result.metrics["segm_AP"], abs=1e-12)
    written = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert written["scalars"]["segm_AR100"] == evaluation.metrics["segm_AR100"]


def test_predict_writes_rle_results_and_drawn_masks(fitted):
    tmp, result = fitted
    out = tmp / "pred"
    prediction = cvtrain.predict(checkpoint=result.last_checkpoint, source=tmp / "data" / "images", out=out,
                                 accelerator="cpu")
    records = json.loads(prediction.predictions_file.read_text())
    assert prediction.num_images == 6 and len(list((out / "images").glob("*.jpg"))) == 6
    assert records and {
        "image_id",
        "file_name",
        "category_id",
        "category_name",
        "bbox",
        "score",
        "segmentation",
    } <= set(records[0])
    assert {r["category_name"] for r in records} <= {"disc", "square"}
    for record in records[:20]:
        rle = record["segmentation"]
        assert rle["size"] == list(SIZE) and isinstance(rle["counts"], str)
        mask = mask_utils.decode(rle)
        assert mask.shape == SIZE
        if mask.any():  # a mask lies inside its box (both in original pixels), up to the mask head's blur
            ys, xs = np.nonzero(mask)
            x, y, w, h = record["bbox"]
            assert xs.min() >= x - 2 and xs.max() <= x + w + 2 and ys.min() >= y - 2 and ys.max() <= y + h + 2
