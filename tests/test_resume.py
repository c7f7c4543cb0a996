"""A run survives: SIGKILL and resume, corrupt checkpoints, crashes mid-write, divergence, files vanishing mid-run.

Training here is CPU FP32 with one thread (the machine's cores are shared) and
``train.deterministic``, so two runs that see the same batches end bit-identical.
"""
from __future__ import annotations

import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import cvtrain
from cvtrain.cli import main
from cvtrain.config import load_config
from cvtrain.data.formats.shapes import make_shapes
from cvtrain.data.loading import build_index
from cvtrain.data.sampling import EpochSampler
from cvtrain.engine.callbacks import RandomState
from cvtrain.engine.checkpoints import AtomicCheckpointIO, find_resume_checkpoint
from cvtrain.engine.rundir import choose_run_dir

STEPS_PER_EPOCH = 4  # 12 training images (16, a quarter for validation) in batches of 3


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_spec(tmp: Path, **train) -> Path:
    """16 generated images, SSDlite at 96 px, 3 epochs of 4 steps, with flips and colour jitter (seeded per item)."""
    spec = {
        "task": "detection",
        "data": {"format": "shapes", "root": str(tmp / "shapes"), "val_fraction": 0.25,
                 "options": {"num_images": 16, "image_size": 96, "seed": 1}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "options": {"score_thresh": 0.01}},
        "train": {"max_epochs": 3, "batch_size": 3, "image_size": 96, "num_workers": 0, "deterministic": True,
                  "optimizer": {"name": "adamw", "lr": 0.003}, "scheduler": {"name": "cosine", "warmup_steps": 2},
                  **train},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.2, "hue": 0.02, "hflip": 0.5},
        "eval": {"num_log_images": 0},
        "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }
    make_shapes(tmp / "shapes", num_images=16, image_size=96, seed=1)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cvtrain", *args], cwd=cwd, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(run: Path, whole: Path) -> None:
    """Every final tensor equal to the uninterrupted run's, and the same validation scores epoch by epoch."""
    a, b = weights(run / "checkpoints" / "last.ckpt"), weights(whole)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    history = [json.loads((folder / "metrics.json").read_text())["history"] for folder in (run, whole.parent.parent)]
    assert len(history[0]) == 3 and history[0] == history[1]


def step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


# ------------------------------------------------------------- kill and resume
@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def whole(tmp_module) -> Path:
    """An uninterrupted run: its final checkpoint is what every interrupted run must end with."""
    torch.set_num_threads(1)
    spec = write_spec(tmp_module, checkpoint_every_n_steps=3)
    result = cvtrain.fit(spec, run_dir=tmp_module / "whole")
    assert step_of(result.last_checkpoint) == 3 * STEPS_PER_EPOCH
    return result.last_checkpoint


@pytest.fixture(scope="module")
def killed(tmp_module) -> Path:
    """``cvtrain fit`` killed with SIGKILL right after its first periodic checkpoint in the middle of an epoch."""
    spec = write_spec(tmp_module, checkpoint_every_n_steps=3)
    run = tmp_module / "killed"
    process = cli("fit", "-c", str(spec), "--run-dir", str(run), cwd=tmp_module)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.ckpt")]
        if any(step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH for step in steps):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-3000:]
    return run


def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(whole, killed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    assert step_of(run / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH  # the kill came after the first epoch
    process = cli("fit", "-c", str(killed.parent / "spec.yaml"), "--run-dir", str(run), "--resume", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    resumed = json.loads((run / "run.json").read_text())["resumed_from"]
    # Honest about the boundary: it resumed from a periodic checkpoint inside epoch 2, not from an epoch's end.
    assert Path(resumed).name.startswith("step-")
    assert step_of(Path(resumed)) % STEPS_PER_EPOCH != 0
    assert f"resuming from {resumed}" in stdout
    assert step_of(run / "checkpoints" / "last.ckpt") == 3 * STEPS_PER_EPOCH
    assert_same_run(run, whole)
    # the newest two periodic checkpoints stay, as the docs say (none at step 12: last.ckpt follows its validation)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000006.ckpt", "step-00000009.ckpt"]
    assert "exists and is not empty" not in stderr  # Lightning's warning, pointless when resuming


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(whole, killed, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    newest = find_resume_checkpoint(run)
    data = newest.path.read_bytes()
    newest.path.write_bytes(data[: len(data) // 2])
    previous = find_resume_checkpoint(run)
    assert previous.path != newest.path and previous.global_step < newest.global_step
    with caplog.at_level(logging.WARNING, logger="cvtrain"):
        result = cvtrain.fit(killed.parent / "spec.yaml", run_dir=run, resume="auto")
    assert any(f"skipping {newest.path}: cannot load checkpoint safely: the file is truncated" in record.getMessage()
               for record in caplog.records)
    assert json.loads((run / "run.json").read_text())["resumed_from"] == str(previous.path)
    assert_same_run(result.run_dir, whole)


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    old = {"state_dict": {"weight": torch.arange(10.0)}, "global_step": 1}
    AtomicCheckpointIO().save_checkpoint(old, path)
    pid = os.fork()
    if pid == 0:  # the child may write 64 KiB to a file; the kernel kills it (SIGXFSZ) in the middle of the write
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default
            resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
            AtomicCheckpointIO().save_checkpoint(
                {"state_dict": {"weight": torch.zeros(1_000_000)}, "global_step": 2}, path
            )
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ
    partial = list(tmp_path.glob(".last.ckpt.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size == 65536  # the new checkpoint was cut off mid-write
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["weight"], old["state_dict"]["weight"])


def test_resume_discovery_skips_partial_files_and_reports_when_nothing_is_left(killed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    (run / "checkpoints" / ".last.ckpt.tmp-12345").write_bytes(b"half a checkpoint")
    assert find_resume_checkpoint(run).path.name.startswith("step-")
    assert not list((run / "checkpoints").glob(".*tmp*"))  # the killed write's leftovers are removed
    for path in (run / "checkpoints").glob("*.ckpt"):
        path.write_bytes(b"")
    with pytest.raises(cvtrain.CvtrainError, match="nothing to resume: no valid checkpoint"):
        find_resume_checkpoint(run)


# ------------------------------------------------------ data order, RNG state
def test_data_order_and_augmentation_seeds_are_a_function_of_seed_and_epoch():
    dataset = list(range(10))
    first = list(EpochSampler(dataset, seed=7, batch_size=2))
    assert sorted(position for position, _ in first) == dataset
    assert list(EpochSampler(dataset, seed=7, batch_size=2)) == first
    later = EpochSampler(dataset, seed=7, batch_size=2)
    later.set_epoch(1)
    second = list(later)
    assert second != first and sorted(p for p, _ in second) == dataset
    resumed = EpochSampler(dataset, seed=7, batch_size=2, resume={"epoch": 1, "skip": 4})
    assert list(resumed) == second[4:]  # the rest of the interrupted epoch
    resumed.set_epoch(2)
    assert len(list(resumed)) == 10  # then whole epochs again
    ranks = [list(EpochSampler(dataset, seed=7, batch_size=2, num_replicas=3, rank=rank)) for rank in range(3)]
    assert {p for share in ranks for p, _ in share} == set(dataset) and [len(s) for s in ranks] == [4, 4, 4]


def test_rng_states_come_back_through_a_safe_checkpoint(tmp_path):
    saved: dict = {}
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    RandomState().on_save_checkpoint(None, None, saved)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    torch.save(saved, tmp_path / "state.ckpt")
    random.seed(9)  # as if restoring had drawn from the generators
    np.random.seed(9)
    torch.manual_seed(9)
    restorer = RandomState()
    restorer.on_load_checkpoint(None, None, torch.load(tmp_path / "state.ckpt", weights_only=True))
    restorer.on_train_batch_start(None, None, None, 0)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_fit_into_a_run_directory_that_holds_a_run_is_refused_and_changes_nothing(whole, tmp_module, monkeypatch):
    run = whole.parent.parent
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    with pytest.raises(cvtrain.CvtrainError, match="already holds a run.*--resume.*--overwrite"):
        cvtrain.fit(tmp_module / "spec.yaml", run_dir=run)
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before
    monkeypatch.chdir(tmp_module)
    short = ["train.max_epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1"]  # a fast dev run keeps
    first = cvtrain.fit(tmp_module / "spec.yaml", short)                                       # no run directory
    second = cvtrain.fit(tmp_module / "spec.yaml", short)
    assert (first.run_dir, second.run_dir) == (Path("runs/spec"), Path("runs/spec-2"))


# ------------------------------------------------------------- run directories
def test_overwrite_then_resume_continues_the_new_run_not_the_replaced_one(whole, killed, tmp_path):
    """The old run has step-6 in epoch 2; the new run (--overwrite) is killed right after its step 3. --resume must
    continue the new run from step 3, and end as an uninterrupted run does; nothing of the old run remains."""
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    assert step_of(run / "checkpoints" / "step-00000006.ckpt") == 6
    spec = str(killed.parent / "spec.yaml")
    process = cli("fit", "-c", spec, "--run-dir", str(run), "--overwrite", cwd=tmp_path)
    first = run / "checkpoints" / "step-00000003.ckpt"

    def new_run_wrote_step_3() -> bool:
        try:
            stamp = torch.load(first, weights_only=True, mmap=True)["cvtrain_run_id"]
            return stamp == json.loads((run / "run.json").read_text())["run_id"] != old_id
        except (OSError, ValueError, RuntimeError, KeyError):
            return False

    deadline = time.time() + 600
    while not new_run_wrote_step_3() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    new_id = json.loads((run / "run.json").read_text())["run_id"]
    assert new_id != old_id and not (run / "checkpoints" / "step-00000006.ckpt").exists()
    assert find_resume_checkpoint(run).path == first
    done = cli("fit", "-c", spec, "--run-dir", str(run), "--resume", cwd=tmp_path)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["resumed_from"] == str(first)
    assert_same_run(run, whole)
    assert not list(tmp_path.glob("run.replaced-*"))  # the replaced run is deleted once the new one has a checkpoint
    stamps = {torch.load(path, weights_only=True, mmap=True)["cvtrain_run_id"] for path in run.glob("checkpoints/*")}
    assert stamps == {new_id}


def test_a_run_without_checkpoint_points_to_the_one_command_that_works(tmp_path, capsys, monkeypatch):
    """No circle between '--resume' and 'already holds a run': both name the command that starts it again."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    run = Path("run")
    cvtrain.fit(spec, run_dir=run, fast_dev_run=True)  # config.yaml and run.json, no checkpoint (as an early stop)
    capsys.readouterr()
    assert main(["fit", "-c", str(spec), "--run-dir", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {run}: run directory already holds a run (it has no checkpoint to resume from: pass " \
                    "--overwrite to start it again in place, or another --run-dir)"
    assert main(["fit", "-c", str(spec), "--run-dir", str(run), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    command = "cvtrain fit -c run/config.yaml --run-dir run --overwrite"
    assert error == f"error: {run}: nothing to resume: the run stopped before writing its first checkpoint " \
                    f"(start it again in place: {command})"
    assert main([*command.split()[1:], "--fast-dev-run"]) == 0  # the command works
    assert main(["fit", "-c", str(spec), "--run-dir", "nowhere", "--resume"]) == 2
    assert "nothing to resume: the run directory does not exist" in capsys.readouterr().err
    assert not Path("nowhere").exists()


def test_runs_started_at_the_same_moment_get_two_folders(tmp_path):
    spec = write_spec(tmp_path)
    short = ("train.max_epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1")  # --fast-dev-run keeps
    runs = [cli("fit", "-c", str(spec), *short, cwd=tmp_path) for _ in range(2)]                # no run directory
    outputs = [process.communicate(timeout=600) for process in runs]
    assert [process.returncode for process in runs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    chosen = sorted(line.split()[-1] for stdout, _ in outputs for line in stdout.splitlines()
                    if line.startswith("run directory: runs"))
    assert chosen == ["runs/spec", "runs/spec-2"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["spec", "spec-2"]


def test_run_names_are_one_path_segment_and_inherited_run_dirs_are_ignored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    for name in ("a/b", "../../x", ".hidden", "a b"):
        assert main(["fit", "-c", str(spec), f"name={name}"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"run name {name!r} is not one path segment" in error
        assert "letters, digits, '-', '_' and '.'" in error
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()
    (tmp_path / "runs" / "spec").mkdir(parents=True)
    (tmp_path / "runs" / "spec" / "config.yaml").write_text("an earlier run\n")
    # a shell's, a stranger's, this process's own: none is followed
    for number, inherited in enumerate(("runs/spec", "12345:runs/spec", f"{os.getpid()}:runs/spec"), start=2):
        monkeypatch.setenv("CVTRAIN_RUN_DIR", inherited)
        assert choose_run_dir(None, "spec") == Path(f"runs/spec-{number}")
        with pytest.raises(cvtrain.CvtrainError, match="already holds a run"):
            choose_run_dir(Path("runs/spec"), "spec")
    # only the process that set it (the parent of a DDP process Lightning starts) is followed
    monkeypatch.setenv("CVTRAIN_RUN_DIR", f"{os.getppid()}:runs/spec")
    assert choose_run_dir(None, "spec") == Path("runs/spec")


def test_check_and_predict_outputs_follow_the_run_directory_rules(whole, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = str(whole.parent.parent.parent / "spec.yaml")
    assert main(["check", "-c", spec]) == 0 and main(["check", "-c", spec]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["check-spec", "check-spec-2"]
    assert main(["check", "-c", spec, "--out", "runs/check-spec"]) == 2  # an explicit folder is not overwritten
    assert "output folder is not empty" in capsys.readouterr().err
    (tmp_path / "runs" / "check-spec" / "stale.txt").write_text("from before")
    assert main(["check", "-c", spec, "--out", "runs/check-spec", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "check-spec").iterdir()) == ["report.html", "report.json"]
    assert main(["check", "-c", spec, "--out", "bad", "checks.box_tolerence=1"]) == 2  # fails: no folder left
    assert not (tmp_path / "bad").exists()

    source = tmp_path / "photos"
    source.mkdir()
    for image in sorted((whole.parent.parent.parent / "shapes" / "images").glob("*.png"))[:5]:
        shutil.copy(image, source / image.name)
    (source / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # read in the second batch
    checkpoint = str(whole)
    assert main(["predict", "--checkpoint", checkpoint, "--source", "missing", "--out", "p"]) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (source / "zz-broken.png").rename(broken / "zz-broken.png")
    assert main(["predict", "--checkpoint", checkpoint, "--source", str(broken), "--out", "p"]) == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "runs" / "predict").exists()  # nothing half-written
    assert main(["predict", "--checkpoint", checkpoint, "--source", str(source)]) == 0
    assert main(["predict", "--checkpoint", checkpoint, "--source", str(source)]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").glob("predict*")) == ["predict", "predict-2"]


# ------------------------------------------------------------------ divergence
def test_nan_loss_stops_naming_the_step_causes_and_the_last_good_checkpoint(tmp_path, capsys):
    # The learning rate jumps a trillionfold after the first epoch (a multistep schedule with gamma 1e12).
    spec = write_spec(tmp_path, scheduler={"name": "multistep", "warmup_steps": 0, "milestones": [0.34], "gamma": 1e12})
    run = tmp_path / "run"
    code = main(["fit", "-c", str(spec), "--run-dir", str(run)])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3
    assert last_line.startswith(f"error: {run}: training diverged at step ")
    step = int(last_line.split("at step ")[1].split(" ")[0])
    assert step > STEPS_PER_EPOCH
    assert "learning rate" in last_line and "bad labels" in last_line
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last.ckpt'}" in last_line
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):  # nothing non-finite was saved
        assert all(torch.isfinite(value).all() for value in weights(checkpoint).values() if value.is_floating_point())
    assert step_of(run / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH


def test_fp16_scaler_rides_out_bad_steps_until_max_bad_steps(tmp_path, caplog):
    spec = write_spec(tmp_path, max_epochs=1)
    # On the CPU the first FP16 steps overflow at the initial loss scale: a tolerated bad step, then a second in a row.
    with caplog.at_level(logging.WARNING, logger="cvtrain"), pytest.raises(cvtrain.CvtrainError) as stop:
        cvtrain.fit(spec, ["trainer.max_bad_steps=2"], run_dir=tmp_path / "run", amp="fp16")
    assert stop.value.exit_code == 3
    assert "training diverged at step 2 (epoch 0): the FP16 loss scaler skipped 2 steps in a row" in str(stop.value)
    assert "trainer.max_bad_steps=2" in str(stop.value)


# ---------------------------------------------------------- data that vanishes
def break_files_after_first_checkpoint(run: Path, files: list[Path], how: str) -> threading.Thread:
    """Deletes (``how='delete'``) or corrupts ``files`` once the run's first epoch checkpoint is on disk."""
    def work() -> None:
        deadline = time.time() + 600
        while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.01)
        for path in files:
            path.unlink() if how == "delete" else path.write_bytes(b"\x89PNG\r\n\x1a\n broken")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("split", ["all", "val"])  # "val": the error comes while the validation bar is open
def test_images_vanishing_mid_run_stop_it_naming_the_file_with_the_checkpoint_intact(tmp_path, capsys, split):
    spec = write_spec(tmp_path, num_workers=1)  # the error crosses a DataLoader worker process
    run = tmp_path / "run"
    images = sorted((tmp_path / "shapes" / "images").glob("*.png"))
    if split == "val":
        val = build_index(load_config(spec).data).split("val")
        images = sorted(val.root / image.file_name for image in val.images)
    watcher = break_files_after_first_checkpoint(run, images, "delete")
    code = main(["fit", "-c", str(spec), "--run-dir", str(run)])
    watcher.join(timeout=60)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    named = last_line.removeprefix("error: ").split(": ")[0]
    assert Path(named) in images and last_line.endswith(
        ": image file not found (run 'cvtrain check' to list every missing file)"
    )
    assert step_of(run / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH


def test_unreadable_images_are_skipped_and_recorded_when_the_spec_says_so(tmp_path, caplog):
    spec = write_spec(tmp_path)
    config = load_config(spec, ["data.on_unreadable=skip"])
    train = build_index(config.data).split("train")
    broken = [
        train.root / image.file_name for image in train.images[0:6:5]
    ]  # not neighbours, so neither is the other's stand-in
    run = tmp_path / "run"
    watcher = break_files_after_first_checkpoint(run, broken, "corrupt")
    with caplog.at_level(logging.WARNING, logger="cvtrain"):
        result = cvtrain.fit(config, run_dir=run)
    watcher.join(timeout=60)
    assert step_of(result.last_checkpoint) == 3 * STEPS_PER_EPOCH  # the run went on to the end
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert {Path(entry["file"]) for entry in skipped} == set(broken)
    assert all(entry["error"].startswith("cannot decode image") for entry in skipped)
    assert 2 <= len(skipped) <= 4  # each broken image once per epoch after it broke (the first may have been read)
    assert any(f"{len(skipped)} unreadable item(s) were skipped" in r.getMessage() for r in caplog.records)
