"""Defects planted one at a time into a clean COCO set written in tmp_path: each is found exactly once."""
from __future__ import annotations

import math

import numpy as np
import pytest
from curation_builders import HEIGHT, WIDTH, add_box, clean_coco, smooth_image, write
from PIL import Image

from cvtrain.config import DataConfig
from cvtrain.curation import ChecksConfig, check_dataset, run_checks


@pytest.fixture
def checks(tmp_path) -> ChecksConfig:
    return ChecksConfig(cache_file=tmp_path / "cache.json", workers=1)


def test_clean_set_is_clean(tmp_path, checks):
    data = write(tmp_path / "set", clean_coco(tmp_path / "set"), {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8]})
    report = check_dataset(data, checks, image_size=512, progress=False)
    assert report.exit_code == 0
    assert set(report.counts) == {"class.rare"}  # 8 cats and 8 dogs, fewer than 10 each


def test_each_structural_defect_is_found_exactly_once(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    images, annotations = data["images"], data["annotations"]
    images.append({"id": 9, "file_name": "gone.png", "width": WIDTH, "height": HEIGHT})  # image.missing
    (root / "images" / "broken.png").write_bytes((root / "images" / "1.png").read_bytes()[:150])
    images.append({"id": 10, "file_name": "broken.png", "width": WIDTH, "height": HEIGHT})  # image.corrupt
    images[1]["width"] = 640  # image.size_mismatch on image 2
    smooth_image(11).save(tmp_path / "outside.png")
    images.append({"id": 11, "file_name": "../../outside.png", "width": WIDTH, "height": HEIGHT})  # file.outside_root
    smooth_image(12).save(root / "images" / "12.png")
    images.append({"id": 3, "file_name": "12.png", "width": WIDTH, "height": HEIGHT})  # image.duplicate_id
    annotations[0]["bbox"] = [4, 4, math.nan, 16]  # box.not_finite
    annotations[0]["segmentation"] = None
    annotations[2]["bbox"] = [4, 4, 0, 16]  # box.non_positive
    annotations[2]["segmentation"] = None
    add_box(data, 4, 1, [50, 30, 20, 16], segmentation=None)  # box.outside_image: 6 px past the right edge
    annotations[6]["category_id"] = 7  # annotation.unknown_category
    annotations[8]["id"] = annotations[9]["id"]  # annotation.duplicate_id
    add_box(data, 999, 1, [4, 4, 10, 10])  # annotation.unknown_image
    annotations[10]["segmentation"] = [[4, 4, 24, 4]]  # segmentation.polygon_too_few_points
    annotations[11]["segmentation"] = [[30, 20, 50, 20, 50, 36, 30]]  # segmentation.polygon_odd_coordinates
    annotations[12]["segmentation"] = {"size": [10, 10], "counts": [0, 100]}  # segmentation.rle_size_mismatch
    annotations[12]["iscrowd"] = 1
    planted = {"image.missing", "image.corrupt", "image.size_mismatch", "file.outside_root", "image.duplicate_id",
               "box.not_finite", "box.non_positive", "box.outside_image", "annotation.unknown_category",
               "annotation.duplicate_id", "annotation.unknown_image", "segmentation.polygon_too_few_points",
               "segmentation.polygon_odd_coordinates", "segmentation.rle_size_mismatch"}

    report = check_dataset(write(root, data), checks, image_size=512, progress=False)

    errors = {code: report.counts[code] for code in report.codes() if report.severities[code] == "error"}
    assert errors == dict.fromkeys(planted, 1)
    assert set(report.counts) - planted <= {"class.rare", "image.negative"}  # no echo of an error as a warning
    assert report.exit_code == 1
    where = {f.code: f for f in report.errors}
    assert where["image.missing"].image == "images/gone.png"
    assert where["image.corrupt"].image == "images/broken.png"
    assert where["image.size_mismatch"].image_id == 2 and "640x48" in where["image.size_mismatch"].message
    assert where["box.outside_image"].image_id == 4 and "6.0 px" in where["box.outside_image"].message
    assert where["annotation.duplicate_id"].annotation_id == annotations[9]["id"]
    assert where["segmentation.polygon_odd_coordinates"].annotation_id == annotations[11]["id"]
    assert where["box.not_finite"].file.endswith("annotations.json")


def test_unparseable_file_gives_line_and_column(tmp_path, checks):
    root = tmp_path / "set"
    root.mkdir()
    (root / "annotations.json").write_text('{"images": [],\n  "categories": [,]}')
    report = check_dataset(DataConfig(format="coco", root=root, annotations="annotations.json"), checks,
                           progress=False)
    [finding] = report.findings
    assert (finding.code, finding.line, finding.column) == ("file.unparseable", 2, 18)
    assert finding.file.endswith("annotations.json")
    assert report.exit_code == 2  # nothing else could be checked
    assert "line" not in report.to_dict()["findings"][0]  # location is nested in the schema
    assert report.to_dict()["findings"][0]["location"]["line"] == 2


def test_each_warning_is_found_exactly_once(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    images = data["images"]
    first = data["annotations"][0]
    add_box(data, 1, 1, list(first["bbox"]))  # box.duplicate
    add_box(data, 4, 2, [4.1, 4, 20, 16])  # box.class_conflict with image 4's cat (IoU 0.99)
    data["annotations"][2]["area"] = 3200.0  # annotation.area_mismatch (box covers 320)
    data["annotations"][4]["segmentation"] = [[4, 4, 8, 4, 8, 8, 4, 8]]  # box.segmentation_mismatch
    data["annotations"][4]["area"] = 16.0
    add_box(data, 6, 1, [10, 30, 2, 2])  # box.tiny_at_input_size: 2 px at image_size 64
    Image.open(root / "images/1.png").convert("L").save(root / "images/1.png")  # image.grayscale
    smooth_image(2).convert("CMYK").save(root / "images/2.jpg")  # image.cmyk
    images[1]["file_name"] = "2.jpg"
    grey16 = (np.asarray(smooth_image(3).convert("L"), dtype=np.uint16) * 256).astype(np.uint16)
    Image.fromarray(grey16).save(root / "images/3.png")  # image.high_bit_depth
    smooth_image(4).convert("P").save(root / "images/4.png")  # image.palette
    (root / "images/9.png").write_bytes((root / "images/5.png").read_bytes())  # image.duplicate of 5 (both train)
    images.append({"id": 9, "file_name": "9.png", "width": WIDTH, "height": HEIGHT})
    leak = np.clip(np.asarray(smooth_image(6), dtype=np.int16) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(leak).save(root / "images/10.png")  # split.leakage: a brightened copy of train image 6 in val
    images.append({"id": 10, "file_name": "10.png", "width": WIDTH, "height": HEIGHT})
    smooth_image(11, (400, 40)).save(root / "images/11.png")  # image.extreme_aspect (and a negative: no boxes)
    images.append({"id": 11, "file_name": "11.png", "width": 400, "height": 40})
    smooth_image(12, (20, 24)).save(root / "images/12.png")  # image.extreme_size
    images.append({"id": 12, "file_name": "12.png", "width": 20, "height": 24})
    for image_id in (9, 10):
        add_box(data, image_id, 1, [4, 4, 20, 16])
        add_box(data, image_id, 2, [30, 20, 16, 16])
    add_box(data, 12, 1, [2, 2, 10, 10])
    add_box(data, 12, 2, [8, 10, 10, 10])
    config = write(root, data, {"train": [1, 2, 3, 4, 5, 6, 9, 11, 12], "val": [7, 8, 10]})
    planted = {"box.duplicate", "box.class_conflict", "annotation.area_mismatch", "box.segmentation_mismatch",
               "box.tiny_at_input_size", "image.grayscale", "image.cmyk", "image.high_bit_depth", "image.duplicate",
               "split.leakage", "image.extreme_aspect", "image.extreme_size", "image.palette", "image.negative"}

    report = check_dataset(config, checks.model_copy(update={"min_class_examples": 1}), image_size=64, progress=False)

    assert report.count("error") == 0
    assert {code: report.counts[code] for code in report.codes()} == dict.fromkeys(planted, 1)
    assert report.by_code("split.leakage")[0].image == "images/10.png"
    assert report.by_code("image.duplicate")[0].image == "images/9.png"
    assert report.by_code("image.negative")[0].image_id == 11


def test_severity_overrides_and_off(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    add_box(data, 1, 1, list(data["annotations"][0]["bbox"]))  # a duplicate box
    config = write(root, data)
    stricter = checks.model_copy(update={"severity_overrides": {"box.duplicate": "error", "class.rare": "off"}})
    report = check_dataset(config, stricter, progress=False)
    assert [(f.code, f.severity) for f in report.findings] == [("box.duplicate", "error")]
    assert report.exit_code == 1
    with pytest.raises(ValueError, match="did you mean 'box.duplicate'"):
        ChecksConfig(severity_overrides={"box.duplicates": "off"})
    assert ChecksConfig(severity_overrides={"class.rare": False}).severity_overrides == {
        "class.rare": "off"
    }  # YAML off


def test_listed_findings_are_capped_but_all_counted(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    for _ in range(5):
        add_box(data, 2, 1, [40, 30, 1, 1])
    report = check_dataset(write(root, data), checks.model_copy(update={"max_findings_per_code": 2}), image_size=64,
                           progress=False)
    assert report.counts["box.tiny_at_input_size"] == 5
    assert len(report.by_code("box.tiny_at_input_size")) == 2
    assert report.to_dict()["counts"]["box.tiny_at_input_size"] == {"severity": "warning", "count": 5, "listed": 2}


def test_robust_outliers_per_class(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root, images=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        side = float(rng.uniform(9, 11))
        add_box(data, 1, 1, [10, 10, side, side * float(rng.uniform(0.9, 1.1))])
    add_box(data, 2, 1, [0, 0, 60, 46])  # 6x the typical size
    add_box(data, 3, 1, [0, 0, 60, 4])  # aspect ratio 15
    report = check_dataset(write(root, data), checks, progress=False)
    assert [f.annotation_id for f in report.by_code("box.size_outlier")] == [len(data["annotations"]) - 1]
    assert [f.annotation_id for f in report.by_code("box.aspect_outlier")] == [len(data["annotations"])]


def test_class_level_warnings(tmp_path, checks):
    root = tmp_path / "set"
    data = clean_coco(root)
    data["categories"].append({"id": 3, "name": "bird"})  # class.unused
    data["categories"].append({"id": 4, "name": "fish"})
    add_box(data, 1, 4, [40, 2, 10, 10])  # fish: train only, 1 example
    config = write(root, data, {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8]})
    report = check_dataset(config, checks.model_copy(update={"min_class_examples": 2, "max_imbalance": 5}),
                           progress=False)
    assert [f.message for f in report.by_code("class.unused")] == ["class 'bird' is declared but has no examples"]
    assert [f.message for f in report.by_code("class.rare")] == ["class 'fish' has 1 examples (fewer than 2)"]
    assert [f.split for f in report.by_code("class.missing_in_split")] == ["val"]
    assert [f.split for f in report.by_code("class.imbalance")] == ["train"]  # 6 cats vs 1 fish
    assert report.statistics["splits"]["train"]["class_counts"] == {"cat": 6, "dog": 6, "bird": 0, "fish": 1}


def test_semantic_mask_checks(tmp_path, checks):
    from cvtrain.data.index import Category, DatasetIndex, ImageRecord

    root = tmp_path / "set"
    (root / "masks").mkdir(parents=True)
    (root / "images").mkdir()
    records = []
    for number, (values, size) in enumerate([((0, 1, 255), (WIDTH, HEIGHT)), ((0, 2, 7), (WIDTH, HEIGHT)),
                                             ((0, 1), (32, 24)), ((0,), (WIDTH, HEIGHT))], start=1):
        smooth_image(number).save(root / "images" / f"{number}.png")
        mask = np.zeros((size[1], size[0]), dtype=np.uint8)
        for position, value in enumerate(values):
            mask[position::len(values)] = value
        if number != 4:
            Image.fromarray(mask).save(root / "masks" / f"{number}.png")
        records.append(ImageRecord(id=number, file_name=f"images/{number}.png", split="train",
                                   mask_file=f"masks/{number}.png"))
    index = DatasetIndex(root=root, categories=[Category(i, n) for i, n in enumerate(["bg", "road", "car"])],
                         images=records, task="semantic_segmentation", ignore_index=255)

    report = run_checks(index, checks, progress=False)

    assert {f.code: f.image_id for f in report.errors} == {"mask.unknown_value": 2, "mask.size_mismatch": 3,
                                                           "mask.missing": 4}
    assert "7 (" in report.by_code("mask.unknown_value")[0].message  # 255 is ignore_index, 7 is undeclared
    assert report.statistics["splits"]["train"]["class_counts"] == {"bg": 3, "road": 2, "car": 1}
    assert "category.zero_id" not in report.counts  # value 0 is an ordinary class in masks
    unread = run_checks(index, checks.model_copy(update={"check_files": False}), progress=False)
    assert unread.counts == {}  # without reading masks nothing is known, and nothing is claimed
