"""The fast COCO reader (msgspec records -> AnnotationTable) against the record-by-record reader it replaces.

The record-by-record functions (``_images_slowly``, ``_annotations_slowly``) are the reader as it was; the
fast path must give the same annotations, and the checks the same report from columns as from objects.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cvtrain.curation import ChecksConfig, run_checks
from cvtrain.data.formats.coco import _annotations_slowly, _images_slowly, read_coco
from cvtrain.data.index import DatasetIndex, Location, merge_indexes
from cvtrain.data.table import AnnotationTable, table_from_annotations
from cvtrain.errors import DataError

FILES = [
    ("fruits_nuts/data", "trainval.json"),  # polygons, instance segmentation
    ("labelme_voc2011_examples/examples/instance_segmentation/data_dataset_coco", "annotations.json"),  # ids from 0
    ("coco_eval_parity/faster_coco_eval/tests/dataset/cocoapi", "instances_val2014_100.json"),  # crowd RLE as lists
    ("datumaro_test_assets/tests/assets/coco_dataset/coco_instances/annotations", "instances_val.json"),  # attributes
    ("sahi_test_data/tests/data/coco_utils", "terrain3_coco.json"),  # empty segmentations
]


@pytest.fixture(params=FILES, ids=[name for name, _ in FILES])
def coco_file(request, shared_datasets) -> Path:
    folder, name = request.param
    return shared_datasets / folder / name


def test_fast_reader_gives_what_the_record_by_record_reader_gave(coco_file):
    index = read_coco(coco_file, root=coco_file.parent, images="img")
    assert isinstance(index.annotations, AnnotationTable)
    data = json.loads(coco_file.read_text())
    source = Location(str(coco_file))
    assert index.images == _images_slowly(data["images"], coco_file, "img", source)
    reference = _annotations_slowly(data.get("annotations", []), coco_file, source)
    assert list(index.annotations) == reference
    assert [index.annotations[row] for row in range(len(reference))] == reference  # row access builds the same
    assert len(index.annotations) == len(data.get("annotations", []))


def test_checks_report_the_same_from_columns_as_from_objects(shared_datasets, tmp_path):
    source = shared_datasets / "coco_eval_parity/faster_coco_eval/tests/dataset/cocoapi/instances_val2014_100.json"
    data = json.loads(source.read_text())
    annotations = data["annotations"]
    annotations.append(dict(annotations[0], id=10**9))  # a duplicate box
    annotations.append(dict(annotations[1], id=10**9 + 1, bbox=[600.0, 10.0, 90.0, 20.0]))  # past the edge
    annotations.append(dict(annotations[2], id=10**9 + 2, segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0]]))  # odd count
    annotations.append(dict(annotations[3], id=annotations[3]["id"], category_id=999))  # id reused, unknown class
    path = tmp_path / "planted.json"
    path.write_text(json.dumps(data))
    columns = read_coco(path, root=tmp_path)
    objects = replace(columns, annotations=list(columns.annotations))
    assert isinstance(objects.annotations, list)
    for index in (columns, objects):
        for image in index.images:
            image.split = "train" if image.id % 3 else "val"
    config = ChecksConfig(check_files=False)
    ours, theirs = run_checks(columns, config, image_size=512), run_checks(objects, config, image_size=512)
    assert ours.counts == theirs.counts
    assert {"box.duplicate", "box.outside_image", "segmentation.polygon_odd_coordinates", "annotation.duplicate_id",
            "annotation.unknown_category"} <= set(ours.counts)
    assert [f.to_dict() for f in ours.findings] == [f.to_dict() for f in theirs.findings]
    assert ours.statistics == theirs.statistics


@pytest.mark.parametrize("annotation, fragment", [
    ({"id": True, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}, "annotations[0] (id true): 'id' is true"),
    ({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, "2", 3, 4]}, "annotation id 1: 'bbox' is [1, '2', 3, 4]"),
    ({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}, "annotation id 1: 'bbox' is [1, 2, 3]"),
    ({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, True]}, "'bbox' is [1, 2, 3, true]"),
    ({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": "9"}, "'area' is '9'"),
    ({"id": 1, "image_id": 1, "category_id": 1, "segmentation": "x"}, "'segmentation' is neither polygons nor RLE"),
])
def test_a_value_of_the_wrong_type_names_the_record_and_field(tmp_path, annotation, fragment):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                                "categories": [{"id": 1, "name": "a"}], "annotations": [annotation]}))
    with pytest.raises(DataError) as error:
        read_coco(path, root=tmp_path)
    assert fragment in error.value.message and error.value.where == str(path)


def test_what_the_checks_report_is_read_not_refused(tmp_path):
    """NaN literals, a BOM, float sizes, polygons that are not numbers: read as before, for the checks to judge."""
    path = tmp_path / "odd.json"
    text = json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8.0, "height": 8}],
                       "categories": [{"id": 1, "name": "a"}],
                       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, float("nan"), 4]},
                                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                                        "segmentation": [[1, 2, "x", 4, 5, 6]]},
                                       {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                                        "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": True}]})
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    index = read_coco(path, root=tmp_path)
    assert (index.images[0].width, index.images[0].height) == (8, 8)
    assert index.annotations[2].iscrowd and index.annotations[2].segmentation == [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]
    report = run_checks(index, ChecksConfig(check_files=False))
    assert report.counts["box.not_finite"] == 1 and report.counts["segmentation.invalid"] == 1
    path.write_text(text.replace('"width": 8.0', '"width": 8.5'))
    with pytest.raises(DataError, match=r"'width' is 8.5, expected a size in pixels \(0 or more\)"):
        read_coco(path, root=tmp_path)


def test_table_views_equal_the_list_views(shared_datasets):
    path = shared_datasets / "fruits_nuts/data/trainval.json"
    table = read_coco(path, root=path.parent)
    objects = replace(table, annotations=list(table.annotations))
    assert table.fingerprint() == objects.fingerprint() and table.summary() == objects.summary()
    keep = [image.id for image in table.images[::3]]
    assert list(table.subset(keep).annotations) == objects.subset(keep).annotations
    columns = table_from_annotations(objects.annotations)  # the columns built from the objects
    for name in ("id", "image_id", "category_id", "bbox"):
        assert np.array_equal(getattr(table.annotations, name), getattr(columns, name)), name
    other = read_coco(path, root=path.parent)  # the same ids again: the merge renumbers the second part
    merged, merged_objects = merge_indexes([table, other]), merge_indexes([objects, replace(other, annotations=list(
        other.annotations))])
    assert isinstance(merged.annotations, AnnotationTable)
    assert list(merged.annotations) == merged_objects.annotations
    assert table_from_annotations(objects.annotations).coords.tolist() == table.annotations.coords.tolist()
    again = pickle.loads(pickle.dumps(table))  # DataLoader workers get the index pickled
    assert list(again.annotations) == objects.annotations
    assert isinstance(DatasetIndex(root=path.parent, categories=[], images=[]).annotations, list)
