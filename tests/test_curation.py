"""`cvtrain check` on the real datasets in shared/datasets: every known defect found, no false errors.

Each expectation below comes from the dataset's SOURCE.md (its "Known defects" or
"Verification done" section), not from running the checks.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cvtrain.config import DataConfig
from cvtrain.curation import ChecksConfig, check_dataset, run_checks
from cvtrain.data.index import Category, DatasetIndex, ImageRecord

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]


@pytest.fixture
def checks(tmp_path) -> ChecksConfig:
    return ChecksConfig(cache_file=tmp_path / "decode-cache.json")


def check(data: dict, config: ChecksConfig, image_size: int | None = 512):
    return check_dataset(DataConfig(**data), config, image_size, progress=False)


def errors_by_code(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for finding in report.errors:
        found.setdefault(finding.code, []).append(finding)
    return found


# ------------------------------------------------------------------ known defects
def test_kangaroo_truncated_jpeg_is_the_only_error(shared_datasets, checks):
    report = check({"format": "voc", "root": shared_datasets / "kangaroo", "annotations": "annots", "images": "images"},
                   checks)
    assert [(f.code, f.image) for f in report.errors] == [("image.corrupt", "images/00090.jpg")]
    assert "truncated" in report.errors[0].message
    assert report.exit_code == 1


def test_sahi_terrain3_missing_image_and_whole_image_area(shared_datasets, checks):
    root = shared_datasets / "sahi_test_data/tests/data/coco_utils"
    report = check({"format": "coco", "root": root, "annotations": "terrain3_coco.json", "images": "."}, checks)
    assert [(f.code, f.image) for f in report.errors] == [("image.missing", "terrain3.png")]
    # every annotation's area is the whole image (2986 x 1680 = 5016480)
    assert report.counts["annotation.area_mismatch"] == 10
    assert all("5.01648e+06" in f.message for f in report.by_code("annotation.area_mismatch"))


def test_sahi_combined_palette_image_and_empty_class(shared_datasets, checks):
    root = shared_datasets / "sahi_test_data/tests/data/coco_utils"
    report = check({"format": "coco", "root": root, "annotations": "combined_coco.json", "images": "."}, checks)
    assert report.count("error") == 0
    assert [f.image for f in report.by_code("image.palette")] == ["terrain2.png"]
    assert ["big_vehicle" in f.message for f in report.by_code("class.unused")] == [True]
    assert report.counts["annotation.area_mismatch"] == 12  # area = W x H on every annotation


def test_sahi_evaluate_zero_based_ids_and_area(shared_datasets, checks):
    """Category id 0 is legal COCO and harmless here (labels are 1..K), so it is info, not an error."""
    root = shared_datasets / "sahi_test_data/tests/data/coco_evaluate"
    config = checks.model_copy(update={"check_files": False})  # the VisDrone images are not included
    report = check({"format": "coco", "root": root, "annotations": "dataset.json"}, config)
    assert report.count("error") == 0
    assert [f.severity for f in report.by_code("category.zero_id")] == ["info"]
    assert "'person'" in report.by_code("category.zero_id")[0].message
    assert report.counts["annotation.area_mismatch"] == 249


def test_mmdet_duplicate_annotation_id(shared_datasets, checks):
    config = checks.model_copy(update={"check_files": False})
    root = shared_datasets / "mmdet_test_annotations"
    report = check({"format": "coco", "root": root, "annotations": "coco_wrong_format_sample.json"}, config)
    assert [(f.code, f.annotation_id) for f in report.errors] == [("annotation.duplicate_id", 1)]
    clean = check({"format": "coco", "root": root, "annotations": "coco_sample.json"}, config)
    assert clean.count("error") == 0
    assert [f.image_id for f in clean.by_code("image.negative")] == [2]  # fake3.jpg has no annotations


def test_datumaro_crowd_rle_box_disagrees_with_mask(shared_datasets, checks):
    root = shared_datasets / "datumaro_test_assets/tests/assets/coco_dataset/coco_instances"
    report = check({"format": "coco", "root": root, "splits": {
        "train": {"annotations": "annotations/instances_train.json", "images": "images/train"},
        "val": {"annotations": "annotations/instances_val.json", "images": "images/val"}}}, checks)
    assert report.count("error") == 0
    [mismatch] = report.by_code("box.segmentation_mismatch")
    assert mismatch.image == "images/val/b.jpg" and "[0, 0, 2, 10]" in mismatch.message  # RLE covers 2 x 10 px


def test_datumaro_voc_annotations_without_images(shared_datasets, checks):
    root = shared_datasets / "datumaro_test_assets/tests/assets/voc_dataset/voc_dataset2"
    report = check({"format": "voc", "root": root, "annotations": "Annotations", "images": "JPEGImages"}, checks)
    # Not one image is there: one error about the folder, not one per image (issue 18)
    [error] = report.errors
    assert error.code == "image.none_found" and error.file.endswith("voc_dataset2/JPEGImages")
    assert "none of the 5 images" in error.message and "it does not exist" in error.message
    assert [f.image for f in report.by_code("image.negative")] == ["JPEGImages/@.jpg"]  # no <object>


def test_voc_object_outside_data_classes_is_an_undeclared_category(shared_datasets, checks):
    root = shared_datasets / "datumaro_test_assets/tests/assets/voc_dataset/voc_dataset1"
    report = check({"format": "voc", "root": root, "annotations": "Annotations", "images": "JPEGImages",
                    "classes": ["cat"]}, checks)
    [finding] = report.errors
    assert finding.code == "annotation.unknown_category" and "'person'" in finding.message
    assert finding.file.endswith("2007_000001.xml")


# --------------------------------------------------------------- clean datasets
def test_raccoon_has_no_errors(shared_datasets, checks):
    report = check({"format": "voc", "root": shared_datasets / "raccoon", "annotations": "annotations",
                    "images": "images", "classes": ["raccoon"],
                    "splits": {"train": {"list": "data/train_labels.csv"}, "val": {"list": "data/test_labels.csv"}}},
                   checks)
    assert report.count("error") == 0 and report.exit_code == 0
    # SOURCE.md: "3 greyscale JPEGs: raccoon-150, -152, -161"
    assert sorted(f.image for f in report.by_code("image.grayscale")) == [
        "images/raccoon-150.jpg", "images/raccoon-152.jpg", "images/raccoon-161.jpg"]
    assert report.statistics["splits"]["train"]["annotations"] == 173
    assert report.statistics["splits"]["val"]["annotations"] == 44


def test_fruits_nuts_has_no_findings_at_all(shared_datasets, checks):
    report = check({"format": "coco", "root": shared_datasets / "fruits_nuts/data", "annotations": "trainval.json",
                    "images": "images"}, checks)
    assert report.count("error") == 0
    assert report.count("warning") == 0
    assert report.statistics["totals"] == {"images": 18, "annotations": 165, "classes": 3}


def test_coco_ground_truth_has_no_errors(shared_datasets, checks):
    """The COCO GT ships without images: with file checks off there is no error; with them on, one error about the
    image folder (not one per image)."""
    data = {"format": "coco", "root": shared_datasets / "coco_eval_parity/faster_coco_eval/tests/dataset/cocoapi",
            "annotations": "instances_val2014_100.json", "images": "val2014"}
    report = check(data, checks.model_copy(update={"check_files": False}))
    assert report.count("error") == 0
    assert report.statistics["totals"] == {"images": 100, "annotations": 839, "classes": 80}
    with_files = check(data, checks)
    assert set(errors_by_code(with_files)) == {"image.none_found"}
    assert "none of the 100 images" in with_files.errors[0].message


def camvid_index(root: Path) -> DatasetIndex:
    """CamVid built by hand from its folders, as the mask reader will build it."""
    images = []
    for split in ("val", "test"):
        for path in sorted((root / split).glob("*.png")):
            images.append(ImageRecord(id=len(images) + 1, file_name=f"{split}/{path.name}", split=split,
                                      mask_file=f"{split}annot/{path.name}"))
    return DatasetIndex(root=root, categories=[Category(i, n) for i, n in enumerate(CAMVID_CLASSES)], images=images,
                        task="semantic_segmentation", ignore_index=11, format="masks")


def test_camvid_masks_have_no_errors(shared_datasets, checks):
    report = run_checks(camvid_index(shared_datasets / "camvid/CamVid"), checks, image_size=512, progress=False)
    assert report.count("error") == 0
    # SOURCE.md: Pole, SignSymbol, Pedestrian, Bicyclist under 1.2 % of the pixels each; Road about 29 %
    assert {f.split for f in report.by_code("class.imbalance")} == {"val", "test"}
    share = report.statistics["splits"]["val"]["pixel_share"]
    assert share["Road"] == pytest.approx(0.2895 / (1 - 0.0170), abs=2e-3)  # share among non-ignored pixels


def test_camvid_through_the_mask_reader_has_no_errors(shared_datasets, checks):
    root = shared_datasets / "camvid/CamVid"
    report = check({"format": "masks", "root": root, "classes": CAMVID_CLASSES, "ignore_index": 11,
                    "splits": {"val": {"images": "val", "masks": "valannot", "list": "val.txt"},
                               "test": {"images": "test", "masks": "testannot", "list": "test.txt"}}}, checks)
    assert report.count("error") == 0
    assert report.statistics["totals"]["images"] == 334
