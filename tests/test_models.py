"""Model registry and builders: every shipped detector builds and trains a step; weights load offline."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from cvtrain.config import ModelConfig, load_config
from cvtrain.engine.checkpoints import load_pretrained
from cvtrain.errors import ConfigError
from cvtrain.models import MODELS, build_model, register_model

REPO = Path(__file__).resolve().parents[1]
DETECTORS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2",
             "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("fcos_resnet50_fpn", "detection", MODELS["fcos_resnet50_fpn"].builder)


def test_ssd300_min_image_size_is_the_smallest_input_it_takes():
    entry = MODELS["ssd300_vgg16"]
    model = entry.builder(weights=None, weights_backbone=None, num_classes=2).eval()
    with torch.no_grad():
        model.transform.fixed_size = (entry.min_image_size, entry.min_image_size)
        assert model([torch.rand(3, entry.min_image_size, entry.min_image_size)])[0]["boxes"].shape[1] == 4
        model.transform.fixed_size = (entry.min_image_size - 1, entry.min_image_size - 1)
        with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
            model([torch.rand(3, entry.min_image_size, entry.min_image_size)])


@pytest.mark.parametrize("name", DETECTORS)
def test_shipped_detector_builds_for_the_dataset_classes_and_trains(name):
    config = load_config(REPO / "configs" / "detection" / f"{name}.yaml", ["model.weights=null"])
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=2, image_size=96)
    images = [torch.rand(3, 80, 96), torch.rand(3, 96, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]  # a negative
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        output = model([torch.rand(3, 96, 96)])[0]
    assert output["labels"].numel() == 0 or int(output["labels"].max()) <= 2


def pretrained(model_config: ModelConfig, num_classes: int, image_size: int):
    """What fit does: the model built (and frozen for fine-tuning), then filled with ``model.weights``."""
    model = build_model(model_config, num_classes=num_classes, image_size=image_size)
    load_pretrained(model, model_config)
    return model


def test_local_weights_load_skip_the_class_head_and_freeze_the_backbone(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn"), num_classes=5, image_size=96)
    path = tmp_path / "pretrained.pth"
    torch.save(source.state_dict(), path)
    model = pretrained(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn", weights=str(path),
                                   trainable_backbone_layers=0), num_classes=2, image_size=96)
    own = model.state_dict()
    assert torch.equal(own["backbone.body.0.0.weight"], source.state_dict()["backbone.body.0.0.weight"])
    assert own["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # re-initialised for 2 classes + background
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert all(p.requires_grad for p in model.roi_heads.parameters())


def test_lightning_checkpoint_as_weights(tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig(name="ssdlite320_mobilenet_v3_large"), num_classes=2, image_size=96)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    model = pretrained(
        ModelConfig(name="ssdlite320_mobilenet_v3_large", weights=str(path)), num_classes=2, image_size=96
    )
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_torchvision_weights_offline_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: no download, even with internet
    with pytest.raises(ConfigError) as error:
        pretrained(ModelConfig(name="ssdlite320_mobilenet_v3_large", weights="COCO_V1"), num_classes=2, image_size=96)
    text = str(error.value)
    assert "cannot download" in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth") in text


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="COCO_V1"):
        pretrained(
            ModelConfig(name="ssdlite320_mobilenet_v3_large", weights="IMAGENET_V9"), num_classes=2, image_size=96
        )
