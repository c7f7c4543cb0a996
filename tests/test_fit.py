"""End to end on a tiny generated dataset: fit, the run directory, evaluate, predict, the CLI, DDP on gloo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.io import read_image

import cvtrain
from cvtrain.cli import main
from cvtrain.config import load_config
from cvtrain.data.formats.shapes import make_shapes

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(tmp: Path, **train) -> Path:
    spec = {
        "task": "detection",
        "data": {"format": "shapes", "root": str(tmp / "shapes"), "val_fraction": 0.25,
                 "options": {"num_images": 16, "image_size": 96, "seed": 1}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
        "train": {"max_epochs": 6, "batch_size": 4, "image_size": 96, "num_workers": 0,
                  "optimizer": {"name": "adamw", "lr": 0.003}, "scheduler": {"name": "constant", "warmup_steps": 0},
                  **train},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.0, "hue": 0.0},
        "eval": {"num_log_images": 2},
        "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    result = cvtrain.fit(tiny_spec(tmp), run_dir=tmp / "run")
    return tmp, result


def test_fit_writes_the_run_directory(fitted):
    tmp, result = fitted
    run = result.run_dir
    assert run == tmp / "run"
    for name in ("config.yaml", "run.json", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0
    assert info["versions"]["torch"] == torch.__version__
    assert info["dataset_fingerprint"].startswith("sha256:")
    assert {"command", "git", "host"} <= set(info)
    assert info["git"]["commit"] is None or len(info["git"]["commit"]) == 40
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 6
    assert set(metrics["best"]["per_class"]["bbox"]) == {"square", "disc", "triangle"}
    assert result.metrics["mAP"] == metrics["best"]["mAP"]
    # The saved config replays the run.
    assert load_config(run / "config.yaml") == load_config(tmp / "tiny.yaml", run_dir=tmp / "run")


def test_loss_falls_and_tensorboard_has_everything(fitted):
    _, result = fitted
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    losses = [event.value for event in events.Scalars("train/loss")]
    assert len(losses) >= 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert "val/mAP" in tags["scalars"] and "val/AP50" in tags["scalars"]
    assert any(tag.startswith("lr-") for tag in tags["scalars"])
    assert "val/image_0" in tags["images"]


def test_evaluate_reproduces_the_validation_score(fitted):
    tmp, result = fitted
    evaluation = cvtrain.evaluate(checkpoint=result.best_checkpoint, out=tmp / "eval", accelerator="cpu")
    assert evaluation.metrics["mAP"] == pytest.approx(result.metrics["mAP"], abs=1e-9)
    assert evaluation.num_images == 4
    written = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert written["scalars"]["AP50"] == evaluation.metrics["AP50"]


def test_evaluate_command_prints_scores_and_na_where_pycocotools_has_no_ground_truth(fitted, capsys):
    tmp, result = fitted
    assert main(["evaluate", "--checkpoint", str(result.best_checkpoint), "--out", str(tmp / "eval-cli")]) == 0
    scores = next(line for line in capsys.readouterr().out.splitlines() if " mAP " in line)
    assert f"mAP {result.metrics['mAP']:.4f}" in scores
    # 96 px images hold no object over 96 x 96 px: pycocotools scores APl -1, which is no score at all
    assert json.loads((tmp / "eval-cli" / "metrics.json").read_text())["scalars"]["APl"] == -1
    assert "APl n/a" in scores and "-1.0000" not in scores


def test_predict_writes_results_and_drawings(fitted):
    tmp, result = fitted
    source = tmp / "shapes" / "images"
    out = tmp / "pred"
    prediction = cvtrain.predict(checkpoint=result.best_checkpoint, source=source, out=out, accelerator="cpu")
    results = json.loads(prediction.predictions_file.read_text())
    assert prediction.num_images == 16
    assert len(list((out / "images").glob("*.jpg"))) == 16
    assert results and {"image_id", "file_name", "category_id", "category_name", "bbox", "score"} <= set(results[0])
    assert all(0 <= r["bbox"][0] <= 96 and r["bbox"][2] >= 0 for r in results)
    with pytest.raises(cvtrain.CvtrainError, match="not empty"):
        cvtrain.predict(checkpoint=result.best_checkpoint, source=source, out=out)


def test_predict_score_threshold_decides_what_is_drawn(fitted):
    tmp, result = fitted
    source = tmp / "shapes" / "images" / sorted(p.name for p in (tmp / "shapes" / "images").iterdir())[0]
    drawn = {}
    for threshold in (0.0, 1.0):
        out = tmp / f"pred-threshold-{threshold}"
        prediction = cvtrain.predict(checkpoint=result.best_checkpoint, source=source, out=out, accelerator="cpu",
                                     score_threshold=threshold)
        assert json.loads(prediction.predictions_file.read_text())  # the JSON keeps every detection either way
        drawn[threshold] = read_image(str(out / "images" / f"{source.stem}.jpg"))
    # nothing scores 1.0, so that drawing has no red box outlines; at 0.0 every detection is drawn
    red = {t: int(((d[0] > 200) & (d[1] < 60) & (d[2] < 60)).sum()) for t, d in drawn.items()}
    assert red[0.0] > red[1.0] + 100, red


def test_predict_skips_an_unreadable_image_and_says_when_nothing_passed_the_threshold(fitted, tmp_path):
    tmp, result = fitted
    folder = tmp_path / "photos"
    folder.mkdir()
    images = sorted((tmp / "shapes" / "images").iterdir())[:3]
    for image in images:
        shutil.copy(image, folder / image.name)
    broken = folder / images[1].name
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    done = subprocess.run([sys.executable, "-m", "cvtrain", "predict", "--checkpoint", str(result.best_checkpoint),
                           "--source", str(folder), "--out", str(tmp_path / "out"), "--accelerator", "cpu",
                           "--score-threshold", "1.0"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "on 2 images" in done.stdout and "none at score >= 1: the images in" in done.stdout, done.stdout
    assert "skipped 1 unreadable image(s)" in done.stderr
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [item["file"] for item in skipped] == [str(broken)] and "truncated" in skipped[0]["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        f"{image.stem}.jpg" for image in (images[0], images[2]))


def test_evaluate_runs_on_one_device_whatever_the_checkpoint_trained_on(fitted, tmp_path):
    tmp, result = fitted
    payload = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    payload["hyper_parameters"]["config"]["trainer"].update(gpus=4, num_nodes=2, strategy="ddp", amp="fp16")
    moved = tmp_path / "from-a-gpu-server.ckpt"
    torch.save(payload, moved)
    evaluation = cvtrain.evaluate(checkpoint=moved, out=tmp_path / "eval")
    assert evaluation.metrics["mAP"] == pytest.approx(result.metrics["mAP"], abs=1e-9)


def test_new_run_directory_instead_of_overwriting(fitted, tmp_path, monkeypatch):
    tmp, result = fitted
    with pytest.raises(cvtrain.CvtrainError, match="already holds a run"):
        cvtrain.fit(tmp / "tiny.yaml", run_dir=result.run_dir)


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "cvtrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_fast_dev_run(tmp_path):
    spec = tiny_spec(tmp_path)
    done = cli("fit", "-c", str(spec), "--fast-dev-run", "--run-dir", str(tmp_path / "smoke"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best validation" in done.stdout
    # --run-dir keeps the run's files there, but a smoke run writes no checkpoint, and says so
    assert (tmp_path / "smoke" / "config.yaml").is_file() and not (tmp_path / "smoke" / "checkpoints").exists()
    assert "best checkpoint: none (a fast dev run writes no checkpoints)" in done.stdout
    assert "None" not in done.stdout


def test_cli_fast_dev_run_without_run_dir_leaves_nothing_behind(tmp_path):
    """README: --fast-dev-run writes nothing. Not in the working directory, not beside the spec or the data, and
    its temporary folder is gone at the end."""
    (tmp_path / "spec").mkdir()
    spec = tiny_spec(tmp_path / "spec")
    make_shapes(tmp_path / "spec" / "shapes", num_images=16, image_size=96, seed=1)
    (tmp_path / "work").mkdir()
    (tmp_path / "tmp").mkdir()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cvtrain", "fit", "-c", str(spec), "--fast-dev-run"],
                          cwd=tmp_path / "work", capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best validation" in done.stdout  # it trained and validated
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert "None" not in done.stdout and "run directory" not in done.stdout
    assert "fast dev run: nothing kept" in done.stdout


def test_the_api_in_a_notebook_shows_no_lightning_banners(tmp_path):
    """A notebook calls the API, not the CLI: it must not get Lightning's banners, tips and adverts either, nor
    warnings (shown here as a careful notebook shows them: every warning, once, with -W default)."""
    spec = tiny_spec(tmp_path, max_epochs=1, limit_train_batches=2)
    code = (f"import cvtrain\nresult = cvtrain.fit({str(spec)!r}, run_dir='nb')\nprint(result.metrics['mAP'])\n"
            f"smoke = cvtrain.fit({str(spec)!r}, fast_dev_run=True)\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    both = done.stdout + done.stderr
    for banner in ("GPU available", "TPU available", "HPU available", "💡", "Tip:", "litlogger", "LitLogger",
                   "litmodels", "LeafSpec", "PossibleUserWarning", "DeprecationWarning", "Warning", "warn("):
        assert banner not in both, (banner, both[-3000:])
    assert "run directory: nb" in done.stdout  # cvtrain's own lines stay
    assert (tmp_path / "nb" / "checkpoints" / "best.ckpt").is_file()


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    spec = tiny_spec(tmp_path)
    done = cli("fit", "-c", str(spec), "train.max_epoch=2", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: override 'train.max_epoch=2': unknown key 'train.max_epoch' (did you mean 'train.max_epochs'?)"]


def test_gpus_flag_without_gpus_is_a_clear_error(tmp_path):
    if torch.cuda.device_count() >= 64:
        pytest.skip("this machine has 64 GPUs")
    done = cli("fit", "-c", str(tiny_spec(tmp_path)), "--gpus", "64", cwd=tmp_path)
    assert done.returncode == 2
    assert "--gpus 64 asked for 64 GPU(s) but this machine has" in done.stderr


def test_ddp_on_cpu_with_two_processes(tmp_path):
    make_shapes(tmp_path / "shapes", num_images=16, image_size=96, seed=1)
    spec = tiny_spec(tmp_path)
    done = cli("fit", "-c", str(spec), "--accelerator", "cpu", "--devices", "2", "--max-steps", "2",
               "--run-dir", str(tmp_path / "ddp"), cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["last"]["mAP"] >= 0.0


def test_a_last_batch_of_one_is_dropped_for_a_batchnorm_model(tmp_path):
    """SSDlite's BatchNorm on 1x1 maps fails on one image ("Expected more than 1 value per channel"): with 5 training
    images and batches of 4, the last batch of one is dropped instead of crashing; 6 images keep their batch of 2."""
    for images, batches in ((7, 1), (8, 2)):  # val_fraction 0.25: 5 and 6 training images
        spec = yaml.safe_load(tiny_spec(tmp_path).read_text())
        spec["data"]["root"] = str(tmp_path / f"shapes-{images}")
        spec["data"]["options"]["num_images"] = images
        spec["train"]["max_epochs"] = 1
        result = cvtrain.fit(spec, run_dir=tmp_path / f"run-{images}")
        state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
        assert state["global_step"] == batches
