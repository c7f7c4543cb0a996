"""Readers, splits and the dataset over the index."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvtrain.config import AugmentConfig, DataConfig, load_config
from cvtrain.data.dataset import DetectionDataset
from cvtrain.data.formats.coco import read_coco
from cvtrain.data.formats.voc import read_voc
from cvtrain.data.loading import build_index
from cvtrain.data.transforms import build_train_transform
from cvtrain.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def tiny_coco(root: Path, *, images: int = 3, boxes_per_image: int = 2, size=(40, 30)) -> Path:
    """3 images x 2 boxes, the last image a negative (torchvision's dataset tests do the same)."""
    (root / "images").mkdir(parents=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}
    for i in range(1, images + 1):
        Image.new("RGB", size, (i * 40, 0, 0)).save(root / "images" / f"{i}.png")
        data["images"].append({"id": i, "file_name": f"{i}.png", "width": size[0], "height": size[1]})
        if i == images:
            continue  # a negative
        for j in range(boxes_per_image):
            data["annotations"].append({"id": 10 * i + j, "image_id": i, "category_id": [7, 3][j % 2],
                                        "bbox": [2 + j, 3, 10, 8], "area": 80, "iscrowd": 0})
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reader_keeps_ids_and_negatives(tmp_path):
    index = read_coco(tiny_coco(tmp_path), root=tmp_path, images="images")
    assert [c.name for c in index.categories] == ["cat", "dog"]
    assert index.label_of(7) == 1 and index.label_of(3) == 2 and index.category_of(2) == 3
    assert len(index.images) == 3 and len(index.annotations) == 4
    assert index.annotations_by_image[3] == []  # the negative stays
    assert index.images[0].file_name == "images/1.png"
    assert index.annotations[0].bbox == (2.0, 3.0, 10.0, 8.0)


@pytest.mark.parametrize("text, fragment", [
    ('{"images": [', "invalid JSON"),
    ("", "annotation file is empty"),
    ('{"images": {}, "categories": []}', "'images' is an object, expected a list"),
    ('{"images": [], "annotations": []}', "missing key 'categories'"),
    ('{"images": [{"id": "1", "file_name": "a.png"}], "categories": []}', "images[0] needs an integer 'id', not '1'"),
    ('{"images": [], "categories": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2]}]}',
     "annotation id 1: 'bbox' is [1, 2]"),
    # accepted silently before: crowd flags outside 0/1, no 'annotations', no images, a category id used twice
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], "annotations": '
     '[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 2}]}',
     "annotation id 1: 'iscrowd' is 2, expected 0 or 1"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}]}',
     "missing key 'annotations'"),
    ('{"images": [], "categories": [{"id": 1, "name": "x"}], "annotations": []}', "the file lists no images"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}],'
     ' "annotations": []}', "category id 1 is declared twice ('x' and 'y')"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], "annotations": '
     '[{"id": 1, "image_id": 1, "category_id": 1, "bbox": null}]}', "annotation id 1: 'bbox' is null"),
])
def test_coco_reader_errors_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_coco(path, root=tmp_path)
    assert fragment in str(error.value)
    assert str(path) in str(error.value)


def test_coco_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "images": [],\n  "categories": [,]\n}')
    with pytest.raises(DataError, match=r"bad.json:3:\d+: invalid JSON"):
        read_coco(path, root=tmp_path)


def test_coco_non_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_coco(path, root=tmp_path)


def test_raccoon_voc_counts(shared_datasets):
    root = shared_datasets / "raccoon"
    index = read_voc(root / "annotations", root=root, images="images")
    assert len(index.images) == 200
    assert len(index.annotations) == 217
    assert index.class_names == ["raccoon"]
    first = next(i for i in index.images if i.file_name == "images/raccoon-1.jpg")
    assert (first.width, first.height) == (650, 417)
    box = index.annotations_by_image[first.id][0].bbox
    assert box == (80.0, 87.0, 442.0, 321.0)  # xmin 81 .. xmax 522, 1-based inclusive


def test_raccoon_dataset_file_splits_by_csv_lists(on_shared):
    raccoon = REPO / "configs" / "datasets" / "raccoon.yaml"
    config = load_config(REPO / "configs" / "detection" / "quickstart.yaml", on_shared(raccoon), data=raccoon)
    index = build_index(config.data)
    assert len(index.split("train").images) == 160
    assert len(index.split("val").images) == 40
    assert len(index.split("train").annotations) == 173
    assert len(index.split("val").annotations) == 44


def test_ratio_split_is_seeded(tmp_path):
    tiny_coco(tmp_path, images=20)
    data = DataConfig(format="coco", root=tmp_path, val_fraction=0.25, split_seed=3)
    first = {i.file_name: i.split for i in build_index(data).images}
    again = {i.file_name: i.split for i in build_index(data).images}
    other = {i.file_name: i.split for i in build_index(data.model_copy(update={"split_seed": 4})).images}
    assert first == again
    assert sum(s == "val" for s in first.values()) == 5
    assert first != other


def test_per_split_annotation_files_merge_with_clashing_ids(tmp_path):
    tiny_coco(tmp_path / "a")
    tiny_coco(tmp_path / "b")
    (tmp_path / "b" / "images").rename(tmp_path / "b_images")
    data = DataConfig(format="coco", root=tmp_path, splits={
        "train": {"annotations": "a/annotations.json", "images": "a/images"},
        "val": {"annotations": "b/annotations.json", "images": "b_images"}})
    index = build_index(data)
    assert len({i.id for i in index.images}) == 6
    assert len({a.id for a in index.annotations}) == 8
    assert len(index.split("val").annotations) == 4
    assert all(index.image_path(i).is_file() for i in index.images)


def test_missing_list_entry_is_reported(tmp_path):
    tiny_coco(tmp_path)
    (tmp_path / "val.txt").write_text("1.png\nnope.png\n")
    data = DataConfig(format="coco", root=tmp_path, splits={"val": {"list": "val.txt"}})
    with pytest.raises(DataError, match="'nope.png'"):
        build_index(data)


def test_train_transform_moves_boxes_with_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:30, 20:60] = 255
    transform = build_train_transform(AugmentConfig(hflip=1.0, color_jitter=0.0, hue=0.0, scale=(1.0, 1.0)), 100)
    out = transform(image=image, bboxes=np.array([[20, 10, 60, 30]], np.float32), labels=[1], indices=[0])
    assert out["image"].shape == (50, 100, 3)  # longest side 200 -> 100
    x0, y0, x1, y1 = out["bboxes"][0]
    assert (x0, y0, x1, y1) == pytest.approx((70, 5, 90, 15))  # halved, then mirrored
    assert out["image"][5:15, 70:90].mean() > 200


def test_detection_dataset_targets(tmp_path):
    index = read_coco(tiny_coco(tmp_path), root=tmp_path, images="images")
    dataset = DetectionDataset(index)
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 11.0], [3.0, 3.0, 13.0, 11.0]]
    assert target["labels"].tolist() == [1, 2]
    _, negative = dataset[2]
    assert negative["boxes"].shape == (0, 4)


def test_path_escaping_the_root_is_refused(tmp_path):
    index = read_coco(tiny_coco(tmp_path / "set"), root=tmp_path / "set", images="images")
    index.images[0].file_name = "../../../etc/passwd"
    with pytest.raises(DataError, match="escapes the dataset root"):
        DetectionDataset(index)[0]


@pytest.mark.parametrize(("key", "value"), [
    ("annotations", "../outside.json"), ("annotations", "/etc/hostname"), ("list", "../../etc/hostname"),
    ("list", "../outside.json"), ("images", "../elsewhere"),
])
def test_paths_in_a_dataset_description_stay_inside_the_root_and_nothing_outside_is_echoed(tmp_path, key, value):
    from cvtrain.data.loading import build_index

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside.json").write_text("SECRET-CONTENT")
    (tmp_path / "elsewhere").mkdir()
    (root / "ann.json").write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], '
                                   '"categories": [{"id": 1, "name": "x"}], "annotations": []}')
    description = {"format": "coco", "root": str(root), "annotations": "ann.json", "images": "images"}
    if key == "list":
        description["splits"] = {"train": {"list": value}}
    else:
        description[key] = value
    with pytest.raises(DataError) as error:
        build_index(DataConfig(**description))
    text = str(error.value)
    assert "is outside the dataset root" in text and value in text
    assert "SECRET" not in text and "localhost" not in text


def test_the_root_may_be_a_symlink(tmp_path):
    from cvtrain.data.loading import build_index

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    (root / "ann.json").write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], '
                                   '"categories": [{"id": 1, "name": "x"}], "annotations": []}')
    (tmp_path / "link").symlink_to(root)  # e.g. data/coco -> /mnt/datasets/coco
    index = build_index(DataConfig(format="coco", root=tmp_path / "link", annotations="ann.json", images="images"))
    assert [image.file_name for image in index.images] == ["images/a.png"]
    image, target = DetectionDataset(index)[0]  # the image is read through the link
    assert tuple(image.shape[-2:]) == (4, 4) and len(target["boxes"]) == 0
