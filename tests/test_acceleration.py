"""Speed settings that must not change results: channels-last, torch.compile; and the input pipeline's choices
(workers, pinned memory, JPEG decoded at a reduced size, cudnn.benchmark only for fixed crops)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from cvtrain.config import load_config
from cvtrain.data.dataset import DetectionDataset
from cvtrain.data.files import read_image, read_image_reduced
from cvtrain.data.index import Annotation, Category, DatasetIndex, ImageRecord
from cvtrain.data.loading import build_index
from cvtrain.data.module import DataModule
from cvtrain.data.workers import MAX_AUTO_WORKERS, auto_num_workers, available_cores
from cvtrain.engine.acceleration import Acceleration, fixed_input_size, use_channels_last
from cvtrain.engine.trainer import build_trainer
from cvtrain.errors import ConfigError
from cvtrain.models import MODELS
from cvtrain.models.registry import register_model
from cvtrain.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


def segmentation_spec(root: Path, **train) -> dict:
    """LR-ASPP on 8 generated 64 x 48 image/mask pairs (3 classes, an unlabelled border), batch 2, 64 px crops."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for number in range(8):
        mask = np.zeros((48, 64), dtype=np.uint8)
        y, x = rng.integers(4, 20, size=2)
        mask[y:y + 20, x:x + 24] = 1 + number % 2
        mask[:, :2] = 255
        image = np.clip(mask[..., None] * 90 + rng.integers(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"f{number}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"f{number}.png")
    return {
        "task": "semantic_segmentation",
        "data": {"format": "masks", "root": str(root), "classes": ["background", "box", "other"],
                 "ignore_index": 255, "val_fraction": 0.25},
        "model": {"name": "lraspp_mobilenet_v3_large"},
        "train": {"max_epochs": 1, "batch_size": 2, "image_size": 64, "num_workers": 0, "deterministic": True,
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                  "scheduler": {"name": "constant", "warmup_steps": 0}, **train},
        "augment": {"scale": [0.75, 1.25], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 0},
        "trainer": {"accelerator": "cpu", "devices": 1},
    }


class Losses(pl.Callback):
    """Each step's loss, and the memory order of the convolution weights (``nhwc``: all of them channels-last;
    ``nchw``: all of them not; a depthwise or 1 x 1 weight is both)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.layouts: set[str] = set()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.losses.append(float(outputs["loss"]))
        weights = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
        if all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
            self.layouts.add("nhwc")
        if all(w.is_contiguous() for w in weights):
            self.layouts.add("nchw")


def train(spec: dict, run_dir: Path, steps: int, **train_options) -> tuple[list[float], dict, Losses, float, bool]:
    """``steps`` optimizer steps of the spec's task through ``build_trainer``: the losses, the final weights, the
    recorder, the seconds it took, whether the model was compiled."""
    spec = copy.deepcopy(spec)
    spec["train"].update(train_options)
    config = load_config(spec)
    pl.seed_everything(0, verbose=False)
    index = build_index(config.data)
    task = TASKS[config.task](config.model_dump(mode="json"), index.class_names, [c.id for c in index.categories])
    recorder = Losses()
    trainer = build_trainer(config, run_dir, callbacks=[recorder], logger=False, checkpoints=False, max_steps=steps,
                            limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(task, datamodule=DataModule(config, index))
    weights = {name: value.detach().clone() for name, value in task.model.state_dict().items()}
    compiled = task.model._compiled_call_impl is not None
    return recorder.losses, weights, recorder, time.perf_counter() - started, compiled


def assert_same_training(first, second, *, first_loss: float, losses: float, weights: float) -> None:
    """The same first loss (same weights, only the kernels differ) to ``first_loss`` relative, the next losses to
    ``losses`` relative, every final weight and buffer to ``weights`` absolute. A layout or graph that computed
    something else would be off by far more: the losses by tenths, the weights by the lr-sized steps they took."""
    (losses_a, weights_a, *_), (losses_b, weights_b, *_) = first, second
    np.testing.assert_allclose(losses_b[0], losses_a[0], rtol=first_loss)
    np.testing.assert_allclose(losses_b, losses_a, rtol=losses)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=weights, msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Three steps of LR-ASPP in NCHW order, the default on the CPU."""
    root = tmp_path_factory.mktemp("seg")
    spec = segmentation_spec(root / "data")
    return spec, root, train(spec, root / "plain", 3, channels_last="auto")


def test_channels_last_trains_as_the_default_layout_does(reference):
    spec, root, plain = reference
    assert plain[2].layouts == {"nchw"}  # auto is off on the CPU
    last = train(spec, root / "last", 3, channels_last=True)
    assert last[2].layouts == {"nhwc"}  # every convolution's weight really is channels-last
    # Measured (oneDNN's NHWC and NCHW kernels add in different orders): first loss 4e-7 relative, the third
    # 5e-5; weights 4e-4 apart after three steps, BatchNorm's running variances 8e-4.
    assert_same_training(plain, last, first_loss=1e-5, losses=5e-4, weights=5e-3)


class TinySegmenter(torch.nn.Module):
    """Two convolutions and a 1 x 1 classifier, upsampled to the input: a semantic model inductor compiles in
    seconds (LR-ASPP, the smallest registered one, takes minutes on two cores: see docs/benchmarks.md)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.body(images))
        return {"out": torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                                       align_corners=False)}


@pytest.fixture
def tiny_segmenter():
    name = "test_tiny_segmenter"
    register_model(name, "semantic_segmentation",
                   lambda *, weights=None, weights_backbone=None, num_classes: TinySegmenter(num_classes))
    yield name
    MODELS.pop(name)


def test_compiled_model_trains_as_the_eager_one(reference, tiny_segmenter):
    """torch.compile (inductor, C++ on the CPU) on a two-convolution segmenter: three steps on 64 px crops, equal
    to eager within float tolerance. Compiling forward and backward is most of this test's time: 22 s of CPU
    (gcc included) on the development machine."""
    spec, root, _ = reference
    spec = {**spec, "model": {"name": tiny_segmenter}}
    eager = train(spec, root / "eager", 3)
    compiled = train(spec, root / "compiled", 3, compile=True)
    assert compiled[4] and not eager[4]  # the model really was compiled
    # Measured: losses 1e-7 apart (relative), weights 1e-7 (inductor fuses and reorders the same float32 math).
    assert_same_training(eager, compiled, first_loss=1e-5, losses=1e-5, weights=1e-5)


def test_compile_is_refused_for_detection_models_at_load_time(tmp_path):
    spec = {"data": {"format": "shapes", "root": str(tmp_path)}, "model": {"name": "ssdlite320_mobilenet_v3_large"}}
    with pytest.raises(ConfigError, match="train.compile supports semantic segmentation models only.*data-dependent"):
        load_config(spec, ["train.compile=true"])


def test_channels_last_auto_and_cudnn_benchmark_follow_device_precision_and_input_size(tmp_path):
    assert use_channels_last("auto", "cuda", True, "semantic_segmentation")
    assert not use_channels_last("auto", "cuda", False, "semantic_segmentation")  # FP32: no tensor cores to feed
    assert not use_channels_last("auto", "cpu", True, "semantic_segmentation")
    assert not use_channels_last("auto", "cuda", True, "detection")  # not measured faster yet
    assert use_channels_last(True, "cpu", False, "detection") and not use_channels_last(False, "cuda", True, "x")
    segmentation = load_config(segmentation_spec(tmp_path))
    assert fixed_input_size(segmentation)  # scale jitter crops to train.image_size squared
    assert not fixed_input_size(load_config(segmentation_spec(tmp_path), ["augment.scale=[1, 1]"]))
    detection = load_config({"data": {"format": "shapes", "root": str(tmp_path)},
                             "model": {"name": "ssdlite320_mobilenet_v3_large"}})
    assert not fixed_input_size(detection)  # detectors resize each image to its own size
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    task = TASKS["semantic_segmentation"](segmentation.model_dump(mode="json"), ["a", "b", "c"], [0, 1, 2])
    acceleration = Acceleration(segmentation)
    acceleration.setup(trainer, task, "fit")
    assert not acceleration.benchmark  # cudnn.benchmark is for CUDA only


# ------------------------------------------------------------------ the input pipeline
def test_num_workers_auto_is_the_cores_per_process_less_one_capped(tmp_path):
    cores = available_cores()
    assert auto_num_workers(1) == max(0, min(MAX_AUTO_WORKERS, cores - 1))
    assert auto_num_workers(cores) == 0  # one process per core: nothing left for workers
    assert auto_num_workers(10_000) == 0
    config = load_config(segmentation_spec(tmp_path), ["train.num_workers=auto"])
    module = DataModule(config, build_index(config.data))
    assert module.num_workers == auto_num_workers(1)
    described = module.describe_workers()
    assert f"{module.num_workers} worker process(es) (train.num_workers auto: {cores} cores" in described
    loader = module.val_dataloader()
    assert loader.num_workers == module.num_workers and loader.persistent_workers == (module.num_workers > 0)
    assert not loader.pin_memory  # no trainer on a GPU: nothing to pin for


def test_large_jpeg_is_decoded_at_a_reduced_scale_with_its_boxes_scaled(tmp_path):
    """A 1000 x 800 JPEG for 200 px training decodes at 1/4 scale (250 x 200, still >= 200 on its long side)."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((800, 1000, 3), dtype=np.uint8)
    pixels[200:600, 100:500] = (220, 40, 40)  # a red box at x 100-500, y 200-600
    pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "big.jpg", quality=92)
    Image.fromarray(pixels).save(tmp_path / "images" / "big.png")

    reduced, size = read_image_reduced(tmp_path / "images" / "big.jpg", 200)
    assert size == (800, 1000) and reduced.shape == (200, 250, 3)
    assert read_image_reduced(tmp_path / "images" / "big.jpg", 500)[0].shape == (400, 500, 3)
    assert read_image_reduced(tmp_path / "images" / "big.jpg", 501)[0].shape == (800, 1000, 3)  # 1/2 < 501 px
    assert read_image_reduced(tmp_path / "images" / "big.png", 200)[0].shape == (800, 1000, 3)  # PNG: no draft
    full = read_image(tmp_path / "images" / "big.jpg")
    # libjpeg's reduced decode is an average of 4 x 4 blocks: close to the full decode averaged the same way
    pooled = full.reshape(200, 4, 250, 4, 3).mean(axis=(1, 3))
    assert np.abs(reduced.astype(float) - pooled).mean() < 3

    index = DatasetIndex(
        root=tmp_path, task="detection", categories=[Category(id=1, name="box")],
        images=[ImageRecord(id=1, file_name="images/big.jpg", width=1000, height=800)],
        annotations=[Annotation(id=1, image_id=1, category_id=1, bbox=[100.0, 200.0, 400.0, 400.0])])
    image, target = DetectionDataset(index, decode_size=200)[0]
    assert tuple(image.shape) == (3, 200, 250) and target["orig_size"] == (800, 1000)
    np.testing.assert_allclose(target["boxes"].numpy(), [[25.0, 50.0, 125.0, 150.0]])
    whole, whole_target = DetectionDataset(index)[0]
    assert tuple(whole.shape) == (3, 800, 1000)
    np.testing.assert_allclose(whole_target["boxes"].numpy(), [[100.0, 200.0, 500.0, 600.0]])
