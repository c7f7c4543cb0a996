"""Model tests, robustness, slices and comparisons through the real pipeline (dataset, loader, pycocotools).

The "good" model is a classical detector for the generated shapes (bright blobs, classified by how much of
their box they fill): it is invariant to flips, brightness, background and removal by construction. Each
failing model wraps it with one dependence a test is meant to catch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import yaml
from PIL import Image, ImageDraw

import cvtrain
from cvtrain.config import load_config
from cvtrain.data.loading import build_index
from cvtrain.evaluation.model_tests import run_model_tests
from cvtrain.evaluation.robustness import run_robustness
from cvtrain.tasks.detection import DetectionTask

CLASSES = ("square", "disc", "triangle")
TINTS = {0: (1.0, 0.35, 0.35), 1: (0.35, 1.0, 0.35), 2: (0.35, 0.35, 1.0)}  # background colour by class


def write_shapes(root: Path, name: str, count: int, seed: int) -> None:
    """``count`` 96 x 96 images, each with two objects of one class on a background tinted by that class;
    background brightness varies from image to image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        label = i % 3
        level = 20 + 50 * (i % 5) / 4  # 20..70
        noise = rng.uniform(0.6, 1.0, (96, 96, 1)) * level * np.array(TINTS[label])
        canvas = Image.fromarray(noise.astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        image_id = seed * 1000 + i + 1
        for x_range in ((4, 30), (52, 70)):
            size = int(rng.integers(18, 24))
            x0, y0 = int(rng.integers(*x_range)), int(rng.integers(6, 96 - size - 6))
            colour = tuple(int(v) for v in rng.integers(200, 236, 3))
            box = (x0, y0, x0 + size - 1, y0 + size - 1)
            if label == 0:
                draw.rectangle(box, fill=colour)
            elif label == 1:
                draw.ellipse(box, fill=colour)
            else:
                draw.polygon([(x0 + (size - 1) / 2, y0), (x0, y0 + size - 1), (x0 + size - 1, y0 + size - 1)],
                             fill=colour)
            annotations.append({"id": len(annotations) + 1 + seed * 1000, "image_id": image_id,
                                "category_id": label + 1, "bbox": [x0, y0, size, size], "area": float(size * size),
                                "iscrowd": 0})
        file_name = f"{name}_{i:02d}.png"
        canvas.save(root / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": 96, "height": 96})
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]
    (root / f"{name}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": categories}))


def spec(root: Path, **tests) -> dict:
    return {"task": "detection",
            "data": {"format": "coco", "root": str(root), "images": "images",
                     "splits": {"train": {"annotations": "train.json"}, "val": {"annotations": "val.json"}}},
            "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
            "train": {"image_size": 96, "batch_size": 4, "num_workers": 0},
            "eval": {"score_threshold": 0.5}, "trainer": {"accelerator": "cpu"},
            "slices": {"min_images": 2, "max_gap": 0.3}, "tests": tests}


class ShapeFinder(torch.nn.Module):
    """Bright blobs (all channels above 0.47) are objects; the share of its box a blob fills is its class."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            blobs, _ = ndi.label((image.min(0).values > 0.47).numpy())
            boxes, labels = [], []
            for number, region in enumerate(ndi.find_objects(blobs), start=1):
                inside = blobs[region] == number
                if inside.sum() < 30:
                    continue
                fill = inside.mean()
                labels.append(1 if fill > 0.9 else 2 if fill > 0.65 else 3)
                boxes.append([region[1].start, region[0].start, region[1].stop, region[0].stop])
            outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor(labels, dtype=torch.int64),
                            "scores": torch.full((len(labels),), 0.9)})
        return outputs


class Wrapped(torch.nn.Module):
    """ShapeFinder with one dependence added by ``change(image, output)``."""

    def __init__(self, change):
        super().__init__()
        self.inner, self.change = ShapeFinder(), change

    def forward(self, images):
        return [self.change(image, output) for image, output in zip(images, self.inner(images))]


def keep(output, mask):
    return {name: value[mask] for name, value in output.items()}


def flip_sensitive(image, output):  # classes rotate when the left half is brighter than the right
    if image[:, :, :48].mean() > image[:, :, 48:].mean():
        output["labels"] = output["labels"] % 3 + 1
    return output


def brightness_sensitive(image, output):  # objects that look too bright are not reported
    means = [image[:, int(b[1]):int(b[3]), int(b[0]):int(b[2])].mean() for b in output["boxes"].tolist()]
    return keep(output, torch.tensor([m < 0.93 for m in means], dtype=torch.bool).reshape(-1))


def background_classifier(image, output):  # the class read off the background's tint, not the shape
    border = torch.cat([image[:, :4].reshape(3, -1), image[:, -4:].reshape(3, -1)], dim=1).mean(1)
    output["labels"] = torch.full_like(output["labels"], int(border.argmax()) + 1)
    return output


def context_dependent(image, output):  # an object is reported only beside another one
    return output if len(output["labels"]) >= 2 else keep(output, torch.zeros(len(output["labels"]), dtype=torch.bool))


def dark_blind(image, output):  # nothing is reported on the darkest images
    return output if image.mean() > 0.13 else keep(output, torch.zeros(len(output["labels"]), dtype=torch.bool))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinted")
    write_shapes(root, "train", 6, seed=1)
    write_shapes(root, "val", 10, seed=2)
    return root


def make_task(config, model: torch.nn.Module) -> DetectionTask:
    index = build_index(config.data)
    task = DetectionTask(config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    task.model = model
    return task


def run(root, model, **tests):
    config = load_config(spec(root, **tests))
    index = build_index(config.data)
    task = make_task(config, model)
    return run_model_tests(task, config, index, index.split("val"), progress=False)


def verdicts(report) -> dict[str, bool]:
    return {outcome.name: outcome.passed for outcome in report.outcomes}


ALL = {"flip": {}, "brightness": {"factors": [0.8, 1.2], "max_drop": 0.05}, "background": {"min_kept": 0.9},
       "removal": {"min_removed": 0.9, "min_kept": 0.9}, "slices": {}}


def test_an_invariant_model_passes_every_test(shapes, one_thread):
    report = run(shapes, ShapeFinder(), **ALL)
    assert verdicts(report) == dict.fromkeys(ALL, True), report.summary_table()
    assert report.clean == pytest.approx(1.0, abs=0.05) and report.exit_code == 0
    outcomes = {o.name: o for o in report.outcomes}
    assert outcomes["background"].value == 1.0 and outcomes["removal"].value == 1.0


@pytest.mark.parametrize("change, failing", [(flip_sensitive, "flip"), (brightness_sensitive, "brightness"),
                                             (background_classifier, "background"), (context_dependent, "removal"),
                                             (dark_blind, "slices")])
def test_each_test_catches_its_dependence(shapes, one_thread, change, failing):
    report = run(shapes, Wrapped(change), **ALL)
    assert not verdicts(report)[failing], report.summary_table()
    assert report.exit_code == 1
    if failing in ("background", "removal", "brightness"):  # these models score as well as the good one
        assert report.clean == pytest.approx(1.0, abs=0.05)


def test_a_model_that_sees_nothing_proves_nothing(shapes, one_thread):
    report = run(
        shapes,
        Wrapped(lambda image, output: keep(output, torch.zeros(len(output["labels"]), dtype=torch.bool))),
        background={},
        removal={},
    )
    assert verdicts(report) == {"background": False, "removal": False}
    assert all("nothing to test" in o.detail for o in report.outcomes)


def test_corrupted_inputs_lose_map_as_severity_rises(shapes, one_thread, tmp_path):
    config = load_config(spec(shapes))
    index = build_index(config.data)
    result = run_robustness(make_task(config, ShapeFinder()), config, index.split("val"),
                            corruptions=["gaussian_noise", "contrast"], severities=[1, 3, 5], progress=False)
    noise = [result.table["gaussian_noise"][s] for s in (1, 3, 5)]
    assert result.clean > 0.9 and noise[0] >= noise[1] >= noise[2] and noise[2] < result.clean - 0.3
    assert result.mpc == pytest.approx(np.mean([np.mean(list(row.values())) for row in result.table.values()]))
    assert result.rpc == pytest.approx(result.mpc / result.clean) and result.rpc < 1
    result.write(tmp_path)
    written = json.loads((tmp_path / "robustness.json").read_text())
    assert written["table"]["gaussian_noise"]["5"] == noise[2] and written["mPC"] == result.mpc
    assert "data:image/png;base64," in (tmp_path / "robustness.html").read_text()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # the same noise seed gives the same scores; the corruption test kind gates on rPC
    report = run(shapes, ShapeFinder(), corruption={"corruptions": ["gaussian_noise"], "severities": [5],
                                                    "min_relative": 0.9})
    assert verdicts(report) == {"corruption": False}
    assert report.outcomes[0].value == pytest.approx(noise[2] / result.clean)
    # in data-loader workers (the dataset reaches them pickled, through the fork server) the scores are the same;
    # "auto" (the default) is resolved to a number of workers here too
    config.train.num_workers = "auto"
    again = run_robustness(make_task(config, ShapeFinder()), config, index.split("val"),
                           corruptions=["gaussian_noise"], severities=[5], progress=False)
    assert again.table["gaussian_noise"][5] == noise[2]


# ------------------------------------------------------------------------- the API and the CLI
def save_checkpoint(path: Path, config_tree: dict, seed: int) -> Path:
    """A real (untrained) SSDlite checkpoint in cvtrain's format."""
    torch.manual_seed(seed)
    config = load_config(config_tree)
    index = build_index(config.data)
    task = DetectionTask(config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def test_evaluate_writes_intervals_baseline_slices_and_compares(shapes, one_thread, tmp_path):
    tree = spec(shapes)
    names = sorted(p.name for p in (shapes / "images").glob("val_*.png"))
    (tmp_path / "cameras.csv").write_text("file_name,camera\n" + "".join(f"{n},{'AB'[i % 2]}\n"
                                                                         for i, n in enumerate(names)))
    tree["slices"]["attributes"] = str(tmp_path / "cameras.csv")
    first = save_checkpoint(tmp_path / "a" / "checkpoints" / "a.ckpt", tree, 0)
    second = save_checkpoint(tmp_path / "b" / "checkpoints" / "b.ckpt", tree, 1)
    result = cvtrain.evaluate(checkpoint=first, out=tmp_path / "eval", resamples=200, progress=False)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    low, high = written["mAP_ci95"]
    assert low <= written["scalars"]["mAP"] <= high and written["intervals"]["resamples"] == 200
    assert written["baseline"]["mAP"] == written["scalars"]["baseline_mAP"] >= 0 and written["baseline"]["priors"] > 0
    slices = written["slices"]["slices"]
    assert {row["attribute"] for row in slices} >= {"object_count", "brightness", "camera"}
    assert sorted(row["images"] for row in slices if row["attribute"] == "camera") == [5, 5]
    pair = cvtrain.evaluate(checkpoint=first, compare=second, out=tmp_path / "pair", resamples=200, progress=False)
    compared = json.loads((tmp_path / "pair" / "compare.json").read_text())["metrics"]["mAP"]
    assert compared["difference"] == pytest.approx(compared["second"] - compared["first"])
    assert compared["first"] == pair.metrics["mAP"] == result.metrics["mAP"]
    assert (tmp_path / "pair" / "first" / "metrics.json").is_file()
    assert (tmp_path / "pair" / "second" / "metrics.json").is_file()


def test_cli_test_exit_codes_json_and_junit(shapes, tmp_path, capsys):
    from cvtrain.cli import main

    tree = spec(shapes, flip={}, brightness={"max_drop": 0.05})
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoints" / "x.ckpt", tree, 0)
    specs = {"passing": tree, "failing": spec(shapes, flip={}, removal={}), "none": spec(shapes)}
    for name, content in specs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(content))

    def cli(name: str) -> tuple[int, str, str]:
        code = main(["test", "--checkpoint", str(checkpoint), "-c", str(tmp_path / f"{name}.yaml"),
                     "--out", str(tmp_path / name)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = cli("passing")
    assert code == 0 and "flip" in out and "2 passed, 0 failed" in out
    code, out, _ = cli("failing")  # an untrained model finds nothing: removal has nothing to judge
    assert code == 1 and "FAIL" in out
    report = json.loads((tmp_path / "failing" / "tests.json").read_text())
    assert [t["passed"] for t in report["tests"]] == [True, False] and report["passed"] is False
    junit = (tmp_path / "failing" / "junit.xml").read_text()
    assert 'tests="2" failures="1"' in junit and "<failure" in junit
    code, _, err = cli("none")
    assert code == 2 and "declares no model tests" in err
