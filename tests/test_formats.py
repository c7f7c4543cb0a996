"""YOLO, KITTI and Cityscapes readers, the COCO/VOC/YOLO/KITTI writers and `cvtrain convert`, on real fixtures.

Expected boxes of the datumaro fixtures are the ones datumaro's own tests assert for the same files
(tests/unit/test_yolo_format.py, test_kitti_format.py at the commit in SOURCE.md); the Cityscapes train-id
table is checked against the labelTrainIds PNGs that datumaro wrote beside its instance-id PNGs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import yaml
from PIL import Image

from cvtrain.api import convert
from cvtrain.cli import main
from cvtrain.config import DataConfig
from cvtrain.curation import ChecksConfig, run_checks
from cvtrain.data.formats.cityscapes import LABELS, TRAIN_CLASSES, label_table
from cvtrain.data.formats.kitti import read_kitti
from cvtrain.data.formats.yolo import read_yolo
from cvtrain.data.loading import build_index
from cvtrain.data.segmentation import SegmentationDataset
from cvtrain.errors import CvtrainError, DataError
from cvtrain.evaluation.coco import coco_evaluate

NO_FILES = ChecksConfig(check_files=False)


@pytest.fixture(scope="module")
def assets(shared_datasets) -> Path:
    return shared_datasets / "datumaro_test_assets" / "tests" / "assets"


def boxes_by_image(index) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """Image stem -> sorted (class name, box) of its annotations."""
    names = {c.id: c.name for c in index.categories}
    stems = {image.id: PurePosixPath(image.file_name).stem for image in index.images}
    found: dict[str, list] = {stem: [] for stem in stems.values()}
    for annotation in index.annotations:
        found[stems[annotation.image_id]].append((names.get(annotation.category_id, "?"), tuple(annotation.bbox)))
    return {stem: sorted(items) for stem, items in found.items()}


def assert_same_boxes(before, after, tolerance: float) -> None:
    assert before.keys() == after.keys()
    for stem in before:
        assert [name for name, _ in before[stem]] == [name for name, _ in after[stem]], stem
        for (_, a), (_, b) in zip(before[stem], after[stem]):
            assert np.abs(np.subtract(a, b)).max() <= tolerance, (stem, a, b)


# ------------------------------------------------------------------ YOLO
DATUMARO_YOLO = [("label_2", (0.0, 2.0, 4.0, 2.0)), ("label_4", (3.0, 3.0, 2.0, 3.0))]


def test_yolo_darknet_layouts_give_datumaros_boxes(assets):
    strict = read_yolo(assets / "yolo_dataset/strict/obj.data", root=assets / "yolo_dataset/strict")
    labels = read_yolo(assets / "yolo_dataset/labels/labels/train", root=assets / "yolo_dataset/labels")
    loose = read_yolo(assets / "yolo_dataset/annotations/Annotations", root=assets / "yolo_dataset/annotations",
                      images="Images")
    for index, file_name in ((strict, "obj_train_data/1.jpg"), (labels, "images/train/1.jpg"), (loose, "Images/1.jpg")):
        assert index.class_names == [f"label_{i}" for i in range(10)]
        assert [(i.file_name, i.width, i.height) for i in index.images] == [(file_name, 15, 10)]
        found = boxes_by_image(index)["1"]
        assert [name for name, _ in found] == [name for name, _ in DATUMARO_YOLO]
        for (_, box), (_, expected) in zip(found, DATUMARO_YOLO):
            assert box == pytest.approx(expected, abs=1e-4)  # 6-decimal fractions of a 15 x 10 image
    assert strict.images[0].split == "train"
    assert strict.annotations[0].source.line == 1 and strict.annotations[0].source.file.endswith("1.txt")


def test_yolo_roboflow_export_errors_name_the_yaml_line_then_reads_by_splits(assets):
    root = assets / "roboflow_dataset/yolo"
    with pytest.raises(DataError) as error:  # the export's data.yaml says ../valid/images; the folder is val/
        read_yolo(root / "data.yaml", root=root)
    assert error.value.where == f"{root / 'data.yaml'}:2" and "'val'" in error.value.message
    data = DataConfig(format="yolo", root=root, splits={
        "train": {"annotations": "train/labels", "images": "train/images"},
        "val": {"annotations": "val/labels", "images": "val/images"}})
    index = build_index(data)  # class names from data.yaml in the root
    assert index.class_names == ["label_0", "label_1"] and index.split_names == ["train", "val"]
    found = boxes_by_image(index)
    assert found["train_001"] == [("label_0", pytest.approx((2.0, 1.0, 3.0, 1.0)))]
    assert [name for name, _ in found["val_001"]] == ["label_0", "label_1"]


def write_ultralytics(root: Path) -> None:
    for split, size in (("train", (40, 20)), ("val", (20, 40))):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in ("a", "b"):
            Image.new("RGB", size).save(root / "images" / split / f"{stem}.png")
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.5 0.5\n\n1 0.1 0.1 0.6 0.1 0.6 0.6\n")  # box, blank, polygon
    (root / "labels/val/a.txt").write_text("1 0.5 0.5 1.0 0.5\n5 0.5 0.5 0.2 0.2\n")  # class 5: not named
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")


def test_ultralytics_yaml_keeps_its_splits_polygons_and_the_checks_run(tmp_path):
    write_ultralytics(tmp_path)
    index = build_index(DataConfig(format="yolo", root=tmp_path))
    assert index.split_names == ["train", "val"]  # from data.yaml, not a ratio split
    assert [(i.file_name, i.split) for i in index.images] == [
        ("images/train/a.png", "train"), ("images/train/b.png", "train"), ("images/val/a.png", "val"),
        ("images/val/b.png", "val")]
    box, polygon, wide, unknown = index.annotations
    assert box.bbox == (10.0, 5.0, 20.0, 10.0) and box.category_id == 1
    assert polygon.segmentation == [[4.0, 2.0, 24.0, 2.0, 24.0, 12.0]]  # normalised x by 40, y by 20
    assert polygon.bbox == (4.0, 2.0, 20.0, 10.0) and polygon.area == pytest.approx(100.0)
    assert wide.bbox == (0.0, 10.0, 20.0, 20.0)
    assert unknown.category_id == -1 and unknown.extra == {"name": "5"}
    report = run_checks(index, ChecksConfig(decode_images=False))
    finding = next(f for f in report.errors if f.code == "annotation.unknown_category")
    assert (finding.file, finding.line) == (str(tmp_path / "labels/val/a.txt"), 2)
    assert report.counts["annotation.unknown_category"] == 1 and report.count("error") == 1


@pytest.mark.parametrize("line, fragment", [
    ("0 0.5 abc 0.2 0.2", "field 3 (cy) is 'abc'"),
    ("0 0.5 0.5 0.2 0.2 0.9", "6 values"),
    ("1.5 0.5 0.5 0.2 0.2", "field 1 (class) is '1.5'"),
    ("0 0.1 0.1 0.5 0.1 0.5", "6 values"),
    ("0 0.1 0.1 0.5 0.1 0.5 x", "field 7 (y3) is 'x'"),
])
def test_yolo_line_errors_name_file_line_and_field(tmp_path, line, fragment):
    write_ultralytics(tmp_path)
    label = tmp_path / "labels/train/b.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(DataError) as error:
        read_yolo(tmp_path / "data.yaml", root=tmp_path)
    assert error.value.where == f"{label}:2" and fragment in error.value.message


def test_yolo_yaml_errors_name_the_line(tmp_path):
    write_ultralytics(tmp_path)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnc: 3\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match="'nc' is 3 but 'names' lists 2") as error:
        read_yolo(tmp_path / "data.yaml", root=tmp_path)
    assert error.value.where.endswith("data.yaml:3")
    (tmp_path / "data.yaml").write_text("train: [images/train\n")
    with pytest.raises(DataError, match="invalid YAML") as error:
        read_yolo(tmp_path / "data.yaml", root=tmp_path)
    assert error.value.where.startswith(f"{tmp_path / 'data.yaml'}:")


# ------------------------------------------------------------------ KITTI
def test_kitti_fixture_boxes_and_attributes(assets):
    root = assets / "kitti_dataset/kitti_detection"
    index = build_index(DataConfig(format="kitti", root=root, val_fraction=0.0))
    assert index.class_names == ["Truck", "Van"]
    found = boxes_by_image(index)
    assert found == {"000030_10": [("Truck", (0.0, 1.0, 2.0, 2.0)), ("Van", (0.0, 5.0, 1.0, 3.0))],
                     "000030_11": [("Van", (0.0, 0.0, 2.0, 2.0)), ("Van", (4.0, 4.0, 2.0, 2.0)),
                                   ("Van", (6.0, 6.0, 1.0, 3.0))]}
    flags = [(a.extra["truncated"], a.extra["occluded"]) for a in index.annotations]
    assert flags == [(1.0, 0), (0.0, 0), (1.0, 1), (0.0, 0), (0.0, 1)]
    assert (index.annotations[4].source.file, index.annotations[4].source.line) == (
        str(root / "training/label_2/000030_11.txt"), 3)
    report = run_checks(index, ChecksConfig(decode_images=False))  # the curation checks, unchanged
    assert report.count("error") == 0 and report.statistics["totals"]["annotations"] == 5


def write_kitti(root: Path, lines: list[str]) -> None:
    (root / "training/image_2").mkdir(parents=True)
    (root / "training/label_2").mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "training/image_2/000000.png")
    (root / "training/label_2/000000.txt").write_text("".join(line + "\n" for line in lines))


CAR = "Car 0.25 2 -1.57 10.00 10.00 30.00 40.00 1.50 1.60 3.90 1.00 2.00 20.00 -1.50"
DONT_CARE = "DontCare -1 -1 -10 60.00 5.00 90.00 45.00 -1 -1 -1 -1000 -1000 -1000 -10"


def test_kitti_dontcare_is_an_ignore_region_in_evaluation(tmp_path):
    write_kitti(tmp_path, [CAR, DONT_CARE])
    index = read_kitti(tmp_path / "training/label_2", root=tmp_path)
    assert [c.name for c in index.categories] == ["Car"] and len(index.annotations) == 1
    assert index.images[0].extra == {"ignore_regions": [(60.0, 5.0, 30.0, 40.0)]}
    assert index.annotations[0].extra["dimensions"] == [1.5, 1.6, 3.9]
    car = {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 30.0], "score": 0.9}
    inside = {"image_id": 1, "category_id": 1, "bbox": [62.0, 8.0, 20.0, 30.0], "score": 0.95}
    ground_truth = index.to_coco()
    assert coco_evaluate(ground_truth, [car, inside], backend="pycocotools")["stats"]["AP"] == pytest.approx(1.0)
    without = dict(ground_truth, annotations=ground_truth["annotations"][:1])  # the region removed
    assert coco_evaluate(without, [car, inside], backend="pycocotools")["stats"]["AP"] < 0.9


@pytest.mark.parametrize("line, fragment", [
    (CAR.rsplit(" ", 1)[0], "14 values, expected 15"),
    (CAR.replace("10.00 10.00", "10.00 top"), "field 6 (top) is 'top'"),
    (CAR.replace(" 2 -1.57", " 1.5 -1.57"), "field 3 (occluded) is '1.5'"),
])
def test_kitti_line_errors_name_file_line_and_field(tmp_path, line, fragment):
    write_kitti(tmp_path, [CAR, line])
    with pytest.raises(DataError) as error:
        read_kitti(tmp_path / "training/label_2", root=tmp_path)
    assert error.value.where == f"{tmp_path / 'training/label_2/000000.txt'}:2" and fragment in error.value.message


# ------------------------------------------------------------------ Cityscapes
def test_cityscapes_table_matches_the_official_ids():
    table = label_table("labelIds")
    assert len(TRAIN_CLASSES) == 19 and TRAIN_CLASSES[0] == "road" and TRAIN_CLASSES[18] == "bicycle"
    assert {label.id: int(table[label.id]) for label in LABELS if label.train_id != 255} == {
        7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
        28: 15, 31: 16, 32: 17, 33: 18}
    assert {int(table[i]) for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255)} == {255}
    instances = label_table("instanceIds")
    assert (instances[26003], instances[26], instances[24001], instances[1024]) == (13, 13, 11, 255)


def test_cityscapes_instance_ids_map_to_the_train_ids_written_beside_them(assets):
    root = assets / "cityscapes_dataset/train_dataset"
    index = build_index(DataConfig(format="cityscapes", root=root, options={"mask_kind": "instanceIds"}))
    assert index.split_names == ["test", "train", "val"] and index.class_names == list(TRAIN_CLASSES)
    dataset = SegmentationDataset(index)
    seen = set()
    for record in index.images:
        ours = dataset.load_mask(record)
        theirs = np.asarray(Image.open(root / record.mask_file.replace("instanceIds", "labelTrainIds")))
        assert np.array_equal(ours, np.where(theirs == 19, 255, theirs))  # datumaro writes 19 where ids are void
        seen |= set(np.unique(ours).tolist())
    assert seen == {3, 11, 14, 16, 255}  # wall, person, truck, train, void


def test_cityscapes_checks_map_mask_values_and_flag_a_nonstandard_train_id(assets):
    eight_bit = build_index(DataConfig(format="cityscapes", root=assets / "cityscapes_dataset/dataset"))
    report = run_checks(eight_bit, ChecksConfig(use_cache=False, workers=1), progress=False)
    assert report.count("error") == 0
    counts = report.statistics["splits"]["test"]["class_counts"]
    assert counts["truck"] == 1 and counts["wall"] == 1 and counts["train"] == 1
    trained = build_index(DataConfig(format="cityscapes", root=assets / "cityscapes_dataset/train_dataset"))
    report = run_checks(trained, ChecksConfig(use_cache=False, workers=1), progress=False)  # labelTrainIds as written
    assert report.counts["mask.unknown_value"] == 4 and "19 (" in report.errors[0].message


# ------------------------------------------------------------------ writers and convert
def write_data(path: Path, description: dict) -> Path:
    path.write_text(yaml.safe_dump({**description, "root": str(description["root"])}))
    return path


def test_coco_to_yolo_to_coco_keeps_boxes_classes_and_polygons(shared_datasets, tmp_path):
    source = shared_datasets / "labelme_voc2011_examples/examples/instance_segmentation/data_dataset_coco"
    spec = write_data(tmp_path / "in.yaml", {"format": "coco", "root": source, "annotations": "annotations.json",
                                             "images": "."})
    original = build_index(DataConfig.model_validate(yaml.safe_load(spec.read_text()) | {"val_fraction": 0.0}))
    boxes = convert(spec, "yolo", tmp_path / "yolo", images="symlink")
    assert boxes.images == 3 and boxes.annotations == 12
    assert "polygons (YOLO detection lines hold boxes; --segments writes the polygons): 12" in boxes.lost
    assert any(line.startswith("category ids") for line in boxes.lost)  # labelme's ids start at 0
    back = convert(boxes.dataset_file, "coco", tmp_path / "coco", images="none")
    again = build_index(DataConfig.model_validate(yaml.safe_load(back.dataset_file.read_text()) |
                                                  {"root": str(tmp_path / "coco"), "val_fraction": 0.0}))
    assert again.class_names == original.class_names  # all 21, _background_ included, in order
    assert_same_boxes(boxes_by_image(original), boxes_by_image(again), 0.5)

    # with --segments the polygons go over, and YOLO's box is the polygon's extent
    polygons = convert(spec, "yolo", tmp_path / "yolo-segments", images="symlink", segments=True)
    assert "objects of several polygons (only the largest is written): 2" in polygons.lost  # labelme group_ids
    assert any(line.startswith("boxes replaced by their polygon's extent") for line in polygons.lost)
    read = build_index(DataConfig(format="yolo", root=tmp_path / "yolo-segments", val_fraction=0.0))
    stem = {i.id: PurePosixPath(i.file_name).stem for i in original.images}
    order = sorted(original.annotations, key=lambda a: (stem[a.image_id], a.id))  # YOLO's order: file, then line
    pairs = list(zip(order, read.annotations))
    assert sum(len(before.segmentation) == 1 for before, _ in pairs) == 10
    for before, after in pairs:
        if len(before.segmentation) == 1:
            assert np.abs(np.subtract(before.segmentation[0], after.segmentation[0])).max() < 0.5
        xs, ys = after.segmentation[0][0::2], after.segmentation[0][1::2]
        assert after.bbox == pytest.approx((min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)))


def cartucho_coco(shared_datasets: Path, folder: Path) -> Path:
    """The cartucho ground truth (class left top right bottom, absolute pixels) as a COCO file."""
    source = shared_datasets / "cartucho_map_parity/input"
    names = sorted({line.split()[0] for path in (source / "ground-truth").glob("*.txt")
                    for line in path.read_text().splitlines() if line.strip()})
    images, annotations = [], []
    for image_id, path in enumerate(sorted((source / "ground-truth").glob("*.txt")), start=1):
        images.append({"id": image_id, "file_name": f"{path.stem}.jpg", "width": 640, "height": 480})
        for line in path.read_text().splitlines():
            if line.strip():
                name, left, top, right, bottom = line.split()[:5]
                x, y = float(left), float(top)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": names.index(name) + 1,
                                    "bbox": [x, y, float(right) - x, float(bottom) - y], "iscrowd": 0})
    folder.mkdir()
    shutil.copytree(source / "images-optional", folder / "images")  # annotations live inside the dataset's root
    (folder / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
    return write_data(folder / "in.yaml", {"format": "coco", "root": folder, "annotations": "gt.json",
                                           "images": "images"})


@pytest.mark.parametrize("target, tolerance", [("yolo", 0.5), ("kitti", 1e-9), ("voc", 1e-9)])
def test_cartucho_boxes_survive_a_round_trip_with_their_defects(shared_datasets, tmp_path, target, tolerance):
    spec = cartucho_coco(shared_datasets, tmp_path / "in")
    original = build_index(DataConfig.model_validate(yaml.safe_load(spec.read_text()) | {"val_fraction": 0.0}))
    assert len(original.images) == 85 and len(original.annotations) == 686
    result = convert(spec, target, tmp_path / target, images="symlink")
    written = yaml.safe_load(result.dataset_file.read_text())
    index = build_index(DataConfig.model_validate(written | {"root": str(tmp_path / target)}))
    assert index.class_names == original.class_names and len(index.annotations) == 686
    assert_same_boxes(boxes_by_image(original), boxes_by_image(index), tolerance)
    # the 5 boxes whose bottom is 481 on 480-px images are still there (1 px past: over a 0.5 px tolerance)
    strict = ChecksConfig(check_files=False, box_tolerance=0.5)
    assert run_checks(original, strict).counts["box.outside_image"] == 5
    assert run_checks(index, strict).counts["box.outside_image"] == 5


def test_kitti_values_and_dontcare_survive_coco(tmp_path):
    write_kitti(tmp_path / "kitti", [CAR, DONT_CARE, CAR.replace("Car", "Van").replace("0.25 2", "0.5 1")])
    spec = write_data(tmp_path / "in.yaml", {"format": "kitti", "root": tmp_path / "kitti"})
    coco = convert(spec, "coco", tmp_path / "coco", images="copy")
    assert coco.lost == []
    back = convert(coco.dataset_file, "kitti", tmp_path / "back", images="none")
    lines = (tmp_path / "back/train/label_2/000000.txt").read_text().splitlines()
    dont_care = "DontCare 0.00 0 -10.00 60.00 5.00 90.00 45.00 -1.00 -1.00 -1.00 -1000.00 -1000.00 -1000.00 -10.00"
    assert lines == [CAR, CAR.replace("Car", "Van").replace("0.25 2", "0.50 1"), dont_care]
    assert back.lost == []


def test_voc_labelme_floats_survive_kitti_exactly(shared_datasets, tmp_path):
    root = shared_datasets / "labelme_voc2011_examples/examples/bbox_detection/data_dataset_voc"
    spec = write_data(tmp_path / "in.yaml", {"format": "voc", "root": root})
    original = build_index(DataConfig(format="voc", root=root, val_fraction=0.0))
    kitti = convert(spec, "kitti", tmp_path / "kitti", images="symlink")
    voc = convert(kitti.dataset_file, "voc", tmp_path / "voc", images="symlink")
    again = build_index(DataConfig.model_validate(yaml.safe_load(voc.dataset_file.read_text()) |
                                                  {"root": str(tmp_path / "voc")}))
    assert_same_boxes(boxes_by_image(original), boxes_by_image(again), 1e-9)
    assert any(a.bbox[1] % 1 for a in again.annotations)  # labelme's fractional pixels were not rounded


def test_convert_cli_prints_losses_and_never_overwrites(assets, tmp_path, capsys):
    spec = write_data(tmp_path / "in.yaml", {"format": "kitti", "root": assets / "kitti_dataset/kitti_detection"})
    out = tmp_path / "out"
    assert main(["convert", "--data", str(spec), "--to", "yolo", "--out", str(out), "--images", "symlink"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 images and 5 annotations as yolo" in printed
    assert "per-object flags (difficult, truncated, occluded, KITTI 3-D values): 5" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()) == [
        "data.yaml", "dataset.yaml", "images/train/000030_10.png", "images/train/000030_11.png",
        "labels/train/000030_10.txt", "labels/train/000030_11.txt"]
    before = (out / "labels/train/000030_10.txt").read_text()
    assert main(["convert", "--data", str(spec), "--to", "coco", "--out", str(out)]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert (out / "labels/train/000030_10.txt").read_text() == before and not (out / "annotations").exists()


def test_convert_refuses_semantic_masks(assets, tmp_path):
    spec = write_data(tmp_path / "in.yaml", {"format": "cityscapes", "root": assets / "cityscapes_dataset/dataset"})
    with pytest.raises(CvtrainError, match="semantic masks cannot be written as kitti"):
        convert(spec, "kitti", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converted_coco_keeps_crowd_rle_attributes_and_ids(assets, tmp_path):
    root = assets / "coco_dataset/coco_instances"  # two split files whose annotation ids clash; sparse categories
    splits = {split: {"annotations": f"annotations/instances_{split}.json", "images": f"images/{split}"}
              for split in ("train", "val")}
    spec = write_data(tmp_path / "in.yaml", {"format": "coco", "root": root, "splits": splits})
    original = build_index(DataConfig(format="coco", root=root, splits=splits))
    assert sorted(a.id for a in original.annotations) == [1, 3, 4]  # val's 1, 2 renumbered while merging
    result = convert(spec, "coco", tmp_path / "coco", images="copy")
    again = build_index(DataConfig.model_validate(yaml.safe_load(result.dataset_file.read_text()) |
                                                  {"root": str(tmp_path / "coco")}))
    assert result.lost == []
    assert [(c.id, c.name) for c in again.categories] == [(1, "a"), (2, "b"), (4, "c")]

    def content(index):
        return sorted((a.id, a.image_id, a.category_id, a.bbox, a.area, a.iscrowd, json.dumps(a.segmentation),
                       json.dumps(a.extra, sort_keys=True)) for a in index.annotations)

    assert content(again) == content(original)
    assert any(a.extra == {"x": 1, "y": "hello"} for a in again.annotations)
    assert any(isinstance(a.segmentation, dict) and a.iscrowd for a in again.annotations)
