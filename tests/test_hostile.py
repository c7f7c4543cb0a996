"""Input from other people: checkpoints that would run code, YAML tags, escaping paths, decompression bombs,
nonsense specs."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import cvtrain
from cvtrain.config import load_config
from cvtrain.data.dataset import DetectionDataset
from cvtrain.data.files import read_image
from cvtrain.data.formats.coco import read_coco
from cvtrain.engine.checkpoints import (
    AtomicCheckpointIO,
    find_resume_checkpoint,
    inspect_checkpoint,
    load_pretrained,
    read_checkpoint,
)
from cvtrain.errors import CheckpointError, ConfigError, DataError
from cvtrain.models import build_model

PACKAGE = Path(cvtrain.__file__).parent
CORPUS = Path(__file__).resolve().parent / "data" / "bad"
SPEC = {"task": "detection", "data": {"format": "coco", "root": "."},
        "model": {"name": "ssdlite320_mobilenet_v3_large"}, "trainer": {"accelerator": "cpu"}}


class WritesAFile:
    """Unpickling this calls ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """A checkpoint shaped like cvtrain's whose config, once unpickled, writes a marker file."""
    marker = tmp_path / "marker"
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    payload = {"state_dict": {}, "optimizer_states": [], "lr_schedulers": [], "loops": {}, "epoch": 0,
               "global_step": 1, "hyper_parameters": {"config": WritesAFile(marker), "class_names": ["a"]}}
    torch.save(payload, path)
    return path, marker


def test_the_hostile_checkpoint_really_runs_code_when_loaded_unsafely(hostile):
    path, marker = hostile
    torch.load(path, weights_only=False)  # what a careless loader would do
    assert marker.read_text() == "code ran"


def test_every_checkpoint_loader_refuses_code_and_runs_none(hostile, tmp_path):
    path, marker = hostile
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    weights = load_config(spec, {"model.weights": str(path)})
    refusals = [
        lambda: read_checkpoint(path),  # evaluate and predict
        lambda: inspect_checkpoint(path),  # fit --resume <path>
        lambda: find_resume_checkpoint(path.parent.parent),  # fit --resume (auto)
        lambda: cvtrain.evaluate(checkpoint=path),
        lambda: cvtrain.predict(checkpoint=path, source=tmp_path),
        lambda: cvtrain.fit(spec, resume=str(path), run_dir=tmp_path / "resumed"),
        lambda: load_pretrained(build_model(weights.model, 3, 64), weights.model),  # model.weights
    ]
    for refuse in refusals:
        with pytest.raises(CheckpointError, match="safely|no valid checkpoint"):
            refuse()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)  # what Lightning restores from
    assert not marker.exists()
    assert not (tmp_path / "resumed").exists()


def calls(tree: ast.AST, module: str, names: set[str]) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module and node.func.attr in names]


def test_the_package_loads_no_pickle_or_yaml_unsafely():
    """Every ``torch.load`` passes ``weights_only=True``; YAML is only ``safe_load``; no pickle, eval or exec."""
    loads = 0
    for source in PACKAGE.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for call in calls(tree, "torch", {"load"}):
            loads += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{source}:{call.lineno}: torch.load without weights_only=True"
        assert not calls(tree, "yaml", {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"}), source
        assert not calls(tree, "pickle", {"load", "loads"}), source
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id in ("eval", "exec")], source
    assert loads == 1  # one torch.load site (engine/checkpoints.py), which every checkpoint and weights read uses


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']",
                                 "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
                                 "!!python/name:os.system"])
def test_yaml_python_tags_are_refused_in_specs_and_inert_in_overrides(tag, tmp_path):
    marker = tmp_path / "marker"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC) + "name: " + tag.format(marker=marker) + "\n")
    with pytest.raises(ConfigError, match="refused YAML tag"):
        load_config(spec)
    spec.write_text(yaml.safe_dump(SPEC))
    # data.options takes any text (run names are one path segment since issue 12, so the tag goes here)
    config = load_config(spec, ["data.options.note=" + tag.format(marker=marker)])
    assert config.data.options["note"] == tag.format(marker=marker)  # kept as plain text, never constructed
    assert not marker.exists()


def coco_index(root: Path, file_name: str):
    (root / "images").mkdir(parents=True, exist_ok=True)
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name, "width": 16, "height": 16}],
                                       "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    return read_coco(annotations, root=root, images="images")


@pytest.mark.parametrize("file_name", ["../../secret.png", "/etc/hostname", "a/../../../secret.png"])
def test_annotation_paths_that_escape_the_dataset_root_are_refused(file_name, tmp_path):
    root = tmp_path / "dataset"
    Image.new("RGB", (16, 16)).save(tmp_path / "secret.png")
    dataset = DetectionDataset(coco_index(root, file_name))
    with pytest.raises(DataError, match="escapes the dataset root"):
        dataset[0]


@pytest.mark.parametrize(
    ("case", "pixels"), [("png_bomb", "10000000000"), ("png_bomb_under_pillow_limit", "400000000")]
)
def test_decompression_bombs_are_refused_before_decoding(case, pixels):
    bomb = CORPUS / "images" / case / "images" / "a.png"
    assert bomb.stat().st_size < 100  # a header that claims billions of pixels
    with pytest.raises(DataError, match=rf"too large to decode safely: Image size \({pixels} pixels\)"):
        read_image(bomb)


@pytest.mark.parametrize(("override", "key"), [
    ("train.max_epochs=-3", "train.max_epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.optimizer.lr=.nan", "train.optimizer.lr"),
    ("train.optimizer.lr=-0.1", "train.optimizer.lr"),
    ("train.optimizer.lr=.inf", "train.optimizer.lr"),
    ("train.num_workers=-1", "train.num_workers"),
    ("train.image_size=100000", "train.image_size"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("augment.hflip=2", "augment.hflip"),
    ("model.name=resnet9000", "model.name"),
    ("data.format=yolov9", "data.format"),
    ("data.on_unreadable=ignore", "data.on_unreadable"),
    ("train.checkpoint_every_n_steps=0", "train.checkpoint_every_n_steps"),
])
def test_nonsense_spec_values_are_refused_when_the_config_loads(override, key, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    with pytest.raises(ConfigError) as refused:
        load_config(spec, [override])
    assert refused.value.where.startswith(f"override '{key}=")  # names where the value came from
    assert f"'{key}' = " in refused.value.message and refused.value.hint
