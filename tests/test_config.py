"""Spec loading: defaults, overrides, typo errors with the closest key, safe YAML, the saved round trip."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cvtrain.config import Config, load_config, parse_override, save_config
from cvtrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "configs").glob("*/*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MINIMAL = """\
task: detection
data:
  format: shapes
  root: data
model:
  name: fasterrcnn_mobilenet_v3_large_fpn
train:
  max_epochs: 3
"""


def test_defaults_and_relative_root(tmp_path):
    config = load_config(write(tmp_path / "spec.yaml", MINIMAL))
    assert config.train.max_epochs == 3
    assert config.train.batch_size == 4  # schema default
    assert config.data.root == (tmp_path / "data").resolve()  # relative to the spec file
    assert config.name == "spec"


def test_overrides_are_typed_by_yaml_and_beat_the_file(tmp_path):
    config = load_config(
        write(tmp_path / "spec.yaml", MINIMAL),
        [
            "train.max_epochs=7",
            "train.optimizer.lr=1e-3",
            "augment.scale=[0.5, 2.0]",
            "model.options.box_score_thresh=0.2",
        ],
        seed=5,
    )
    assert config.train.max_epochs == 7
    assert config.train.optimizer.lr == pytest.approx(1e-3)
    assert config.augment.scale == (0.5, 2.0)
    assert config.model.options == {"box_score_thresh": 0.2}
    assert config.train.seed == 5


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    spec = write(tmp_path / "spec.yaml", MINIMAL.replace("max_epochs: 3", "max_epoch: 3"))
    with pytest.raises(ConfigError) as error:
        load_config(spec)
    text = str(error.value)
    assert f"{spec}:8" in text
    assert "unknown key 'train.max_epoch'" in text
    assert "did you mean 'train.max_epochs'?" in text


def test_unknown_override_names_the_override():
    with pytest.raises(ConfigError) as error:
        load_config({"data": {"format": "shapes", "root": "x"}, "model": {"name": "ssdlite320_mobilenet_v3_large"}},
                    ["train.bach_size=2"])
    assert "override 'train.bach_size=2'" in str(error.value)
    assert "did you mean 'train.batch_size'?" in str(error.value)


@pytest.mark.parametrize("override, fragment", [
    ("train.batch_size=abc", "'train.batch_size' = 'abc'"),
    ("train.max_epochs=-1", "'train.max_epochs' = -1"),
    ("train.batch_size=0", "'train.batch_size' = 0"),
    ("train.optimizer.lr=.nan", "'train.optimizer.lr'"),
    ("model.name=fasterrcnn_resnet_50", "did you mean 'fasterrcnn_resnet50_fpn'"),
    ("data.format=yolo9", "unknown format 'yolo9'"),
])
def test_ill_typed_values_fail_at_load(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "spec.yaml", MINIMAL), [override])
    assert fragment in str(error.value)


def test_python_yaml_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    spec = write(tmp_path / "spec.yaml", MINIMAL + f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="refused YAML tag"):
        load_config(spec)
    assert not marker.exists()


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    spec = write(tmp_path / "spec.yaml", "task: detection\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"spec.yaml:\d+:\d+: invalid YAML"):
        load_config(spec)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_override("train.max_epochs")


def test_model_must_fit_task(tmp_path):
    with pytest.raises(ConfigError, match="semantic_segmentation model"):
        load_config(write(tmp_path / "spec.yaml", MINIMAL), ["model.name=lraspp_mobilenet_v3_large"])


def test_an_image_size_the_model_cannot_take_is_refused_before_anything_is_built(tmp_path):
    # ssd300_vgg16 at 267 px fails in its last convolution ("Kernel size can't be greater than actual input size")
    with pytest.raises(ConfigError, match=r"train.image_size 128 is too small for 'ssd300_vgg16'.*at least 268 px"):
        load_config(write(tmp_path / "spec.yaml", MINIMAL), ["model.name=ssd300_vgg16", "train.image_size=128"])
    assert load_config(write(tmp_path / "spec.yaml", MINIMAL), ["model.name=ssd300_vgg16",
                                                                  "train.image_size=268"]).train.image_size == 268


def test_saved_config_reloads_identical(tmp_path):
    config = load_config(
        write(tmp_path / "spec.yaml", MINIMAL), ["train.optimizer.lr=0.005", "augment.hflip=0.0"], amp="fp16"
    )
    save_config(config, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == config
    assert again.model_dump() == config.model_dump()


def test_data_file_replaces_data_section(tmp_path):
    (tmp_path / "sets").mkdir()
    data = write(tmp_path / "sets" / "mine.yaml", "format: voc\nroot: photos\nclasses: [cat, dog]\n")
    config = load_config(write(tmp_path / "spec.yaml", MINIMAL), data=data)
    assert config.data.format == "voc"
    assert config.data.root == (tmp_path / "sets" / "photos").resolve()  # relative to the dataset file
    assert config.data.classes == ["cat", "dog"]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_spec_loads(spec, request):
    if spec.parent.name == "datasets":
        return check_dataset_description(spec, request)
    config = load_config(spec)
    assert isinstance(config, Config)
    raw = yaml.safe_load(spec.read_text())
    assert config.model.name == raw["model"]["name"]


# Each dataset description of configs/datasets: a spec of its task to combine it with (--data), and what its index
# holds: (images, training images, classes); None for a dataset that is not in the shared datasets.
DESCRIPTIONS = {
    "camvid.yaml": ("segmentation/deeplabv3_mobilenet_v3_large.yaml", (334, 101, 11)),
    "coco.yaml": ("detection/fasterrcnn_resnet50_fpn_v2.yaml", None),  # COCO 2017 at /data/coco: yours to place
    "fruits_nuts.yaml": ("instance/maskrcnn_resnet50_fpn.yaml", (18, 14, 3)),
    "raccoon.yaml": ("detection/fasterrcnn_mobilenet_v3_large_fpn.yaml", (200, 160, 1)),
}


def check_dataset_description(path: Path, request) -> None:
    """A description loads as ``--data`` with a spec of its task; on the shared datasets its index is read, with both
    splits assigned."""
    from cvtrain.data.loading import build_index

    assert path.name in DESCRIPTIONS, f"{path.name}: add it to DESCRIPTIONS with a spec of its task"
    spec, expected = DESCRIPTIONS[path.name]
    config = load_config(REPO / "configs" / spec, data=path)
    assert config.data.format == yaml.safe_load(path.read_text())["format"]
    assert config.data.root.is_absolute()
    if expected is None:
        return
    config = load_config(REPO / "configs" / spec, request.getfixturevalue("on_shared")(path), data=path)
    index = build_index(config.data)
    train, val = index.split(config.data.train_split), index.split(config.data.val_split)
    assert (len(index.images), len(train.images), index.num_classes) == expected
    assert len(val.images) > 0 and {i.id for i in train.images}.isdisjoint(i.id for i in val.images)


def test_a_dict_spec_is_not_changed_by_overrides(tmp_path):
    spec = yaml.safe_load((REPO / "configs/detection/quickstart.yaml").read_text())
    spec["data"]["root"] = str(tmp_path)
    before = copy.deepcopy(spec)
    config = load_config(spec, ["train.optimizer.lr=0.5", "data.options.num_images=3"])
    assert config.train.optimizer.lr == 0.5 and config.data.options["num_images"] == 3
    assert spec == before


def test_a_bad_override_names_the_value_the_spec_had_not_the_schema_default(tmp_path, capsys):
    """The quick start says max_epochs: 18; `--max-epochs 0` must not answer with the schema's 12."""
    from cvtrain.cli import main

    spec = REPO / "configs/detection/quickstart.yaml"
    assert main(["fit", "-c", str(spec), "--max-epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("error: argument max_epochs=0: 'train.max_epochs' = 0: Input should be "
                                               "greater than 0 (the spec says 18)")
    with pytest.raises(ConfigError) as caught:
        load_config(spec, ["train.max_epochs=0"])
    assert caught.value.hint == "the spec says 18"
    with pytest.raises(ConfigError) as caught:  # an earlier override set it: that value is what was replaced
        load_config(spec, ["train.max_epochs=5"], max_epochs=0)
    assert caught.value.hint == "the earlier override 'train.max_epochs=5' says 5"
    with pytest.raises(ConfigError) as caught:  # the spec does not set batch_size: the schema default it is
        load_config(write(tmp_path / "spec.yaml", MINIMAL), ["train.batch_size=0"])
    assert caught.value.hint == "the default is 4"
    with pytest.raises(ConfigError) as caught:  # a value written in the spec itself: the default, and its line
        load_config(write(tmp_path / "bad.yaml", MINIMAL.replace("max_epochs: 3", "max_epochs: -3")))
    assert str(caught.value).endswith("bad.yaml:8: 'train.max_epochs' = -3: Input should be greater than 0 "
                                      "(the default is 12)")


# ------------------------------------------------- what README's "Specs and overrides" states, pinned
def test_a_relative_root_override_starts_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    (tmp_path / "work").mkdir()
    spec = write(tmp_path / "specs" / "spec.yaml", MINIMAL)
    monkeypatch.chdir(tmp_path / "work")
    assert load_config(spec).data.root == (tmp_path / "specs" / "data").resolve()  # in the file: the file's folder
    assert load_config(spec, ["data.root=mine"]).data.root == (tmp_path / "work" / "mine").resolve()
    as_dict = yaml.safe_load(MINIMAL)  # a dict spec has no folder: its root is taken as given, from the cwd
    assert Path(load_config(as_dict).data.root).resolve() == (tmp_path / "work" / "data").resolve()


def test_the_warmup_is_capped_at_half_the_run():
    from cvtrain.config import SchedulerConfig
    from cvtrain.tasks.common import lr_factor

    schedule = SchedulerConfig(name="constant", warmup_steps=1000, warmup_factor=0.001)
    assert [round(lr_factor(step, 10, schedule), 4) for step in range(7)] == [0.001, 0.2008, 0.4006, 0.6004, 0.8002,
                                                                             1.0, 1.0]
    assert lr_factor(50, 2000, schedule) < 0.1  # a long run keeps its 1000 warm-up steps


def test_voc_classes_are_the_sorted_names_found_when_the_spec_lists_none(tmp_path):
    from cvtrain.data.formats.voc import read_voc

    (tmp_path / "Annotations").mkdir()
    for stem, name in (("a", "zebra"), ("b", "ant"), ("c", "zebra")):
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>10</width><height>10</height></size>"
            f"<object><name>{name}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object></annotation>")
    assert read_voc(tmp_path / "Annotations", root=tmp_path).class_names == ["ant", "zebra"]
