"""Semantic segmentation: the mask reader, CamVid, class weights, metrics, and fit/evaluate/predict on tiny data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cvtrain
from cvtrain.config import AugmentConfig, DataConfig, load_config
from cvtrain.data.files import read_mask
from cvtrain.data.formats.masks import read_masks
from cvtrain.data.loading import build_index
from cvtrain.data.segmentation import SegmentationDataset, class_pixel_statistics, class_weights
from cvtrain.data.transforms import build_train_transform
from cvtrain.errors import DataError
from cvtrain.evaluation.segmentation import confusion_matrix, segmentation_metrics
from cvtrain.tasks.segmentation import SegmentationTask

REPO = Path(__file__).resolve().parents[1]
CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
# SegNet's median-frequency weights for CamVid's train split (camvid/SOURCE.md, Models/segnet_train.prototxt).
SEGNET_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]
COLOURS = {0: [0, 0, 0], 1: [250, 20, 20], 2: [20, 250, 20]}  # background, box, disc


pytestmark = pytest.mark.usefixtures("one_thread")


def class_masks(count: int, size=(48, 64), seed: int = 0) -> list[np.ndarray]:
    """Masks with a background (0), a box (1), a disc (2) and an unlabelled border (255)."""
    rng = np.random.default_rng(seed)
    height, width = size
    masks = []
    for _ in range(count):
        mask = np.zeros(size, dtype=np.uint8)
        y, x = rng.integers(2, height // 2), rng.integers(2, width // 2)
        mask[y:y + rng.integers(8, height // 2), x:x + rng.integers(8, width // 2)] = 1
        cy, cx, r = rng.integers(12, height - 12), rng.integers(12, width - 12), rng.integers(5, 10)
        yy, xx = np.mgrid[:height, :width]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
        mask[:, :2] = 255
        masks.append(mask)
    return masks


def write_pairs(root: Path, masks: list[np.ndarray], kind: str = "index", names=None) -> list[str]:
    """Images (class colours plus noise) and masks saved as ``index`` (mode L), ``palette`` (mode P) or ``rgb``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = names or [f"frame_{i:03d}" for i in range(len(masks))]
    for name, mask in zip(names, masks):
        colours = np.array([COLOURS.get(v, [90, 90, 90]) for v in range(256)], dtype=np.int16)
        image = np.clip(colours[mask] + rng.integers(-30, 30, (*mask.shape, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        if kind == "index":
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{name}.png")
        elif kind == "palette":
            picture = Image.fromarray(mask, mode="P")
            # Deliberately colours unrelated to COLOURS: the reader must use the indices, not the colours.
            picture.putpalette([value for index in range(256) for value in (index, 255 - index, 7)])
            picture.save(root / "masks" / f"{name}.png")
        else:
            table = np.zeros((256, 3), dtype=np.uint8)
            for key, colour in {**COLOURS, 255: [255, 255, 255]}.items():
                table[key] = colour
            Image.fromarray(table[mask]).save(root / "masks" / f"{name}.png")
    return names


# ------------------------------------------------------------------------- reader
@pytest.mark.parametrize("kind", ["index", "palette", "rgb"])
def test_mask_reader_decodes_each_kind_of_mask(tmp_path, kind):
    masks = class_masks(3)
    names = write_pairs(tmp_path, masks, kind)
    palette = {**COLOURS, 255: [255, 255, 255]} if kind == "rgb" else None
    index = read_masks(None, root=tmp_path, classes=["background", "box", "disc"], ignore_index=255, palette=palette)
    assert index.task == "semantic_segmentation" and index.ignore_index == 255
    assert [(c.id, c.name) for c in index.categories] == [(0, "background"), (1, "box"), (2, "disc")]
    assert [image.file_name for image in index.images] == [f"images/{n}.jpg" for n in names]
    assert [image.mask_file for image in index.images] == [f"masks/{n}.png" for n in names]
    assert (index.images[0].width, index.images[0].height) == (64, 48)
    dataset = SegmentationDataset(index, palette=palette)
    for position, expected in enumerate(masks):
        image, target = dataset[position]
        assert image.shape == (3, 48, 64)
        assert torch.equal(target["mask"], torch.from_numpy(expected.astype(np.int64)))


def test_mask_reader_refuses_what_it_cannot_label(tmp_path):
    mask = class_masks(1)[0]
    write_pairs(tmp_path, [mask], "rgb")
    path = tmp_path / "masks" / "frame_000.png"
    with pytest.raises(DataError, match="colour mask but no data.palette"):
        read_mask(path, 3, 255)
    with pytest.raises(DataError, match=r"mask colour \[255, 255, 255\] \(\d+ px\) is not in data.palette"):
        read_mask(path, 3, 255, COLOURS)
    Image.fromarray(np.where(mask == 2, 7, mask).astype(np.uint8), mode="L").save(path)
    with pytest.raises(DataError, match=r"mask values 7 \(\d+ px\) are neither classes 0..2 nor ignore_index 255"):
        read_mask(path, 3, 255)
    with pytest.raises(DataError, match="needs data.classes"):
        read_masks(None, root=tmp_path)
    with pytest.raises(DataError, match="ignore_index 1 is a class index"):
        read_masks(None, root=tmp_path, classes=["a", "b", "c"], ignore_index=1)


def test_masks_pair_by_name_with_suffixes_and_split_lists(tmp_path):
    """Cityscapes-style names, an image without a mask, and a CamVid-style two-column list."""
    masks = class_masks(4)
    write_pairs(tmp_path, masks, names=["a_leftImg8bit", "b_leftImg8bit", "c_leftImg8bit", "d_leftImg8bit"])
    for name in "abcd":
        (tmp_path / "masks" / f"{name}_leftImg8bit.png").rename(tmp_path / "masks" / f"{name}_gtFine_labelIds.png")
    (tmp_path / "masks" / "d_gtFine_labelIds.png").unlink()
    (tmp_path / "train.txt").write_text("/SegNet/x/images/a_leftImg8bit.jpg /SegNet/x/masks/a_gtFine_labelIds.png\n"
                                        "b_leftImg8bit.jpg\n")
    (tmp_path / "val.txt").write_text("/SegNet/x/images/c_leftImg8bit.jpg /SegNet/x/masks/c_gtFine_labelIds.png\n")
    data = DataConfig(format="masks", root=tmp_path, classes=["background", "box", "disc"], ignore_index=255,
                      options={"image_suffix": "_leftImg8bit", "mask_suffix": "_gtFine_labelIds"},
                      splits={"train": {"list": "train.txt"}, "val": {"list": "val.txt"}})
    index = build_index(data)
    assert {i.file_name: i.split for i in index.images} == {"images/a_leftImg8bit.jpg": "train",
                                                            "images/b_leftImg8bit.jpg": "train",
                                                            "images/c_leftImg8bit.jpg": "val"}
    assert index.images[0].mask_file == "masks/a_gtFine_labelIds.png"
    everything = read_masks(None, root=tmp_path, classes=["background", "box", "disc"], ignore_index=255,
                            image_suffix="_leftImg8bit", mask_suffix="_gtFine_labelIds")
    missing = everything.images[-1]
    assert missing.mask_file == "masks/d_gtFine_labelIds.png"  # kept, so that `cvtrain check` reports it
    with pytest.raises(DataError, match="mask file not found"):
        SegmentationDataset(everything)[3]


def test_masks_beside_their_images(tmp_path):
    write_pairs(tmp_path, class_masks(2))
    for mask in (tmp_path / "masks").iterdir():
        mask.rename(tmp_path / "images" / f"{mask.stem}_mask.png")
    classes = ["background", "box", "disc"]
    with pytest.raises(DataError, match="share one folder but options.mask_suffix is not set"):
        read_masks(None, root=tmp_path, masks="images", classes=classes)
    index = read_masks(None, root=tmp_path, masks="images", classes=classes, ignore_index=255, mask_suffix="_mask")
    assert [(i.file_name, i.mask_file) for i in index.images] == [
        ("images/frame_000.jpg", "images/frame_000_mask.png"), ("images/frame_001.jpg", "images/frame_001_mask.png")]


def test_transform_moves_the_mask_with_the_image_and_pads_with_ignore(tmp_path):
    mask = class_masks(1)[0]
    mask[:, :2] = 0  # no unlabelled border here: every ignore pixel below is padding
    write_pairs(tmp_path, [mask])
    index = read_masks(None, root=tmp_path, classes=["background", "box", "disc"], ignore_index=255)
    augment = AugmentConfig(hflip=1.0, color_jitter=0.0, hue=0.0, scale=(0.5, 0.5))
    transform = build_train_transform(augment, 64, with_boxes=False, mask_fill=255)
    image, target = SegmentationDataset(index, transform)[0]
    assert image.shape == (3, 64, 64) and target["mask"].shape == (64, 64)
    out = target["mask"].numpy()
    # Scale 0.5 leaves a 32x24 picture on the 64x64 canvas; the rest is padding, filled with ignore_index.
    rows, cols = np.nonzero(out != 255)
    assert (np.ptp(rows) + 1, np.ptp(cols) + 1, rows.size) == (24, 32, 24 * 32)
    crop = out[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    flipped = cv2.resize(mask, (32, 24), interpolation=cv2.INTER_NEAREST)[:, ::-1]
    assert (crop == flipped).mean() > 0.95
    # Where the image is red the mask says "box": colours and labels moved together.
    red = (image[0] > 0.8) & (image[1] < 0.35)
    assert red.sum() > 20 and (target["mask"][red] == 1).float().mean() > 0.9


# ------------------------------------------------------------------------ CamVid
CAMVID_SPEC = REPO / "configs" / "segmentation" / "camvid_lraspp.yaml"


def test_camvid_loads_as_a_ready_spec(on_shared):
    config = load_config(CAMVID_SPEC, on_shared(CAMVID_SPEC))
    index = build_index(config.data)
    assert len(index.images) == 334 and all(image.mask_file for image in index.images)
    assert index.class_names == CAMVID_CLASSES and index.num_classes == 11 and index.ignore_index == 11
    assert {name: len(index.split(name).images) for name in index.split_names} == {"train": 101, "val": 233}
    assert all((image.width, image.height) == (480, 360) for image in index.images)
    camvid = REPO / "configs" / "datasets" / "camvid.yaml"
    # the dataset file given with --data to a spec of the same task (a detection spec is refused: masks hold no boxes)
    again = build_index(load_config(CAMVID_SPEC, on_shared(camvid), data=camvid).data)
    assert [i.file_name for i in again.images] == [i.file_name for i in index.images]


def test_median_frequency_weights_match_segnet_loosely(on_shared):
    """SegNet computed its weights on the 367 train frames, absent here; ours come from the 334 val+test frames."""
    index = build_index(load_config(CAMVID_SPEC, on_shared(CAMVID_SPEC)).data)
    pixels, image_pixels = class_pixel_statistics(index)
    # The pixel shares SOURCE.md gives per split, recomputed over both (val 101, test 233 frames of equal size).
    assert pixels.sum() == pytest.approx(334 * 480 * 360 * (1 - (101 * 0.0170 + 233 * 0.0383) / 334), rel=1e-3)
    ours = class_weights(pixels, image_pixels, "median_frequency")
    segnet = np.array(SEGNET_WEIGHTS)
    ratio = ours / segnet
    assert np.all((ratio > 1 / 4) & (ratio < 4)), ratio.round(2)  # every class within a factor of 4
    assert np.corrcoef(np.log(ours), np.log(segnet))[0, 1] > 0.9
    rare = {CAMVID_CLASSES[c] for c in np.argsort(-ours)[:4]}
    assert (
        rare
        == {CAMVID_CLASSES[c] for c in np.argsort(-segnet)[:4]}
        == {"Pole", "SignSymbol", "Pedestrian", "Bicyclist"}
    )
    inverse = class_weights(pixels, image_pixels, "inverse")
    assert (inverse * pixels).sum() == pytest.approx(pixels.sum())  # balanced: weighted pixels per class all equal


# ----------------------------------------------------------------------- metrics
def test_miou_and_per_class_iou_on_a_hand_made_example():
    ignore = 255
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 2, ignore],
                      [2, 2, ignore, ignore]])
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 1, 4],
                           [2, 2, 0, 3],
                           [2, 1, 3, 3]])
    names = ["a", "b", "c", "d", "e", "f"]  # d: predicted only under ignore; e: predicted, not true; f: nowhere
    metrics = segmentation_metrics(
        confusion_matrix(torch.from_numpy(truth), torch.from_numpy(prediction), 6).numpy(), names
    )
    scored = truth != ignore
    expected = {}
    for label, name in enumerate(names):
        true_set = {p for p in zip(*np.nonzero((truth == label) & scored))}
        predicted_set = {p for p in zip(*np.nonzero((prediction == label) & scored))}
        union = true_set | predicted_set
        expected[name] = len(true_set & predicted_set) / len(union) if union else None
    assert expected == {"a": 3 / 5, "b": 3 / 6, "c": 3 / 5, "d": None, "e": 0.0, "f": None}
    assert metrics["per_class"]["IoU"] == pytest.approx(expected)
    assert metrics["scalars"]["mIoU"] == pytest.approx((3 / 5 + 3 / 6 + 3 / 5 + 0.0) / 4)
    assert metrics["scalars"]["pixel_accuracy"] == pytest.approx(9 / 13)
    assert metrics["per_class"]["accuracy"]["e"] is None and metrics["per_class"]["accuracy"]["b"] == 3 / 4
    assert metrics["num_pixels"] == 13 and sum(map(sum, metrics["confusion_matrix"])) == 13
    assert metrics["confusion_matrix"][2] == [1, 1, 3, 0, 0, 0]  # true c: predicted a once, b once, c three times


def test_auxiliary_head_where_the_model_has_one():
    def task(name: str, **options):
        config = {"task": "semantic_segmentation", "data": {"format": "masks", "root": "x", "classes": ["a", "b"]},
                  "model": {"name": name, "options": options}, "train": {"image_size": 64}}
        return SegmentationTask(config, ["a", "b"], [0, 1])

    with_aux = task("deeplabv3_mobilenet_v3_large")
    assert with_aux.model.aux_classifier is not None
    outputs = with_aux.model(torch.rand(2, 3, 64, 64))
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == (2, 2, 64, 64)
    assert task("deeplabv3_mobilenet_v3_large", aux_loss=False).model.aux_classifier is None
    assert not hasattr(task("lraspp_mobilenet_v3_large").model, "aux_classifier")  # LR-ASPP has none


# ------------------------------------------------------------- fit, evaluate, predict
def tiny_spec(tmp: Path, **train) -> Path:
    masks = class_masks(12, seed=3)
    write_pairs(tmp / "data", masks)
    (tmp / "data" / "train.txt").write_text("".join(f"frame_{i:03d}.jpg\n" for i in range(9)))
    (tmp / "data" / "val.txt").write_text(
        "".join(f"images/frame_{i:03d}.jpg masks/frame_{i:03d}.png\n" for i in range(9, 12))
    )
    spec = {
        "task": "semantic_segmentation",
        "data": {"format": "masks", "root": str(tmp / "data"), "classes": ["background", "box", "disc"],
                 "ignore_index": 255, "palette": COLOURS,
                 "splits": {"train": {"list": "train.txt"}, "val": {"list": "val.txt"}}},
        "model": {"name": "lraspp_mobilenet_v3_large"},
        "train": {"max_epochs": 3, "batch_size": 4, "image_size": 64, "num_workers": 0, "class_weights": "inverse",
                  "optimizer": {"name": "adamw", "lr": 0.003}, "scheduler": {"name": "constant", "warmup_steps": 0},
                  **train},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 2},
        "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semantic")
    # 40 steps: enough for a from-scratch LR-ASPP's BatchNorm statistics to serve evaluation.
    return tmp, cvtrain.fit(tiny_spec(tmp, max_epochs=20, val_every_n_epochs=5), run_dir=tmp / "run")


def val_masks(tmp: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(tmp / "data" / "masks" / f"frame_{i:03d}.png")) for i in range(9, 12)]


def test_fit_reports_miou_beside_the_majority_baseline(fitted):
    tmp, result = fitted
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["monitor"] == "val/mIoU" and [entry["epoch"] for entry in metrics["history"]] == [4, 9, 14, 19]
    assert set(metrics["best"]["per_class"]["IoU"]) == {"background", "box", "disc"}
    # The baseline, independently: the most frequent class of the 9 training masks, predicted everywhere.
    train = [np.asarray(Image.open(tmp / "data" / "masks" / f"frame_{i:03d}.png")) for i in range(9)]
    majority = int(np.argmax(np.bincount(np.concatenate([m[m != 255] for m in train]), minlength=3)))
    truth = np.concatenate([m[m != 255] for m in val_masks(tmp)])
    present = set(truth.tolist()) | {majority}
    expected = (truth == majority).mean() / len(present)
    assert result.metrics["baseline_mIoU"] == pytest.approx(expected)
    assert result.metrics["baseline_pixel_accuracy"] == pytest.approx((truth == majority).mean())
    assert result.metrics["mIoU"] > result.metrics["baseline_mIoU"] + 0.15  # the model learned something
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"val/mIoU", "val/baseline_mIoU", "train/loss"} <= set(events.Tags()["scalars"])
    picture = events.Images("val/image_0")[0]
    assert (picture.width, picture.height) == (3 * 64, 48)  # image | true mask | predicted mask
    checkpoint = torch.load(result.best_checkpoint, weights_only=True)
    weights = checkpoint["state_dict"]["class_weight"]
    pixels = checkpoint["state_dict"]["train_pixels"]
    assert torch.allclose((weights * pixels).double(), (pixels.sum() / 3).expand(3), rtol=1e-5)  # inverse weights


def test_loss_falls(fitted):
    _, result = fitted
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    assert len(losses) == 40  # 9 training images, batches of 4, the incomplete one dropped: 2 steps x 20 epochs
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])


def test_evaluate_scores_every_pixel_once(fitted):
    tmp, result = fitted
    evaluation = cvtrain.evaluate(checkpoint=result.best_checkpoint, out=tmp / "eval", accelerator="cpu")
    assert evaluation.metrics["mIoU"] == pytest.approx(result.metrics["mIoU"], abs=1e-12)
    assert evaluation.metrics["baseline_mIoU"] == pytest.approx(result.metrics["baseline_mIoU"])
    written = json.loads((tmp / "eval" / "metrics.json").read_text())
    confusion = np.array(written["confusion_matrix"])
    truth = np.concatenate([m[m != 255] for m in val_masks(tmp)])
    assert confusion.sum() == truth.size  # at the masks' own resolution, ignore_index left out
    assert confusion.sum(axis=1).tolist() == np.bincount(truth, minlength=3).tolist()
    recomputed = segmentation_metrics(confusion, ["background", "box", "disc"])
    assert recomputed["scalars"]["mIoU"] == pytest.approx(evaluation.metrics["mIoU"])


def test_predict_writes_index_and_colour_masks(fitted):
    tmp, result = fitted
    out = tmp / "pred"
    prediction = cvtrain.predict(checkpoint=result.best_checkpoint, source=tmp / "data" / "images", out=out,
                                 accelerator="cpu")
    records = json.loads(prediction.predictions_file.read_text())
    assert prediction.num_images == 12 and len(records) == 12
    first = records[0]
    assert first["file_name"] == "frame_000.jpg" and first["mask"] == "masks/frame_000.png"
    index_mask = Image.open(out / first["mask"])
    assert index_mask.mode == "L" and index_mask.size == (64, 48)
    values = np.asarray(index_mask)
    assert values.max() < 3 and sum(first["pixels"].values()) == 64 * 48
    colour = np.asarray(Image.open(out / first["colour_mask"]).convert("RGB"))
    assert colour.shape == (48, 64, 3)
    for label, rgb in COLOURS.items():  # the spec's palette colours the classes
        assert (colour[values == label] == rgb).all()
    assert (out / first["overlay"]).is_file()


def test_cli_evaluate_prints_the_baseline(fitted):
    tmp, result = fitted
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cvtrain", "evaluate", "--checkpoint", str(result.best_checkpoint),
                           "--out", str(tmp / "cli-eval"), "--accelerator", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("3 images:"))
    assert (
        f"mIoU {result.metrics['mIoU']:.4f}" in line and f"baseline_mIoU {result.metrics['baseline_mIoU']:.4f}" in line
    )


def test_ddp_counts_each_validation_image_once(tmp_path):
    """Two processes over 3 validation images: the sampler repeats one; the score must equal a single process's."""
    spec = tiny_spec(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvtrain",
            "fit",
            "-c",
            str(spec),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--max-steps",
            "1",
            "--run-dir",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["last"]
    # devices=1: the checkpoint's config remembers --devices 2.
    single = cvtrain.evaluate(checkpoint=tmp_path / "ddp" / "checkpoints" / "last.ckpt", out=tmp_path / "eval",
                              accelerator="cpu", devices=1)
    assert single.num_images == 3
    assert distributed["mIoU"] == pytest.approx(single.metrics["mIoU"], abs=1e-12)
    assert distributed["pixel_accuracy"] == pytest.approx(single.metrics["pixel_accuracy"], abs=1e-12)
