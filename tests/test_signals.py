"""Real signals to a real ``cvtrain fit``: SIGINT, SIGTERM and SIGUSR1 at chosen moments, 1 and 2 gloo processes.

Each stopped run must exit 128 + the signal's number, print exactly one line (``interrupted at epoch E step S;
checkpoint P; continue with: cvtrain fit ... --resume``) and no traceback, leave a checkpoint that loads safely and
holds the whole training state, and the printed command must end with the weights and validations of an
uninterrupted run, bit for bit (CPU, one thread, ``train.deterministic``). The moments are found by watching the
process, never by sleeping: a DataLoader worker process appearing (loader start), the progress bar (mid-epoch,
validation), a checkpoint's temporary file (checkpoint write).

The signal goes to the process group, as Ctrl-C in a terminal and ``timeout`` send it (DataLoader workers and DDP
processes get it too), except where a test says it goes to one process (Kubernetes sends SIGTERM to PID 1 only).
Each row of the table in docs/reliability.md is printed (``pytest -s``) as ``TABLE | ...``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import cvtrain
from cvtrain.cli import main
from cvtrain.data.formats.shapes import make_shapes
from cvtrain.engine.checkpoints import inspect_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
LINE = re.compile(r"interrupted at epoch (\d+) step (\d+); checkpoint (\S+); (?:SLURM job (\S+) requeued to continue "
                  r"from it; )?continue with: (cvtrain fit .* --resume)")
STEPS = 4  # 12 training images in batches of 3; 2 epochs, a validation after each
DDP = ("--accelerator", "cpu", "--devices", "2", "train.batch_size=2")  # 2 processes x 2 images: 3 steps per epoch


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_spec(folder: Path) -> Path:
    """16 generated 64 px images, SSDlite from scratch, 2 epochs of 4 steps, one DataLoader worker, periodic
    checkpoints every 3 steps."""
    folder.mkdir(parents=True, exist_ok=True)
    make_shapes(folder / "shapes", num_images=16, image_size=64, seed=1)
    spec = {
        "task": "detection",
        "data": {"format": "shapes", "root": str(folder / "shapes"), "val_fraction": 0.25,
                 "options": {"num_images": 16, "image_size": 64, "seed": 1}},
        "model": {"name": "ssdlite320_mobilenet_v3_large", "weights": None, "options": {"score_thresh": 0.01}},
        "train": {"max_epochs": 2, "batch_size": 3, "image_size": 64, "num_workers": 1, "deterministic": True,
                  "checkpoint_every_n_steps": 3, "optimizer": {"name": "adamw", "lr": 0.003},
                  "scheduler": {"name": "cosine", "warmup_steps": 2}},
        "augment": {"scale": [1.0, 1.0], "color_jitter": 0.2, "hue": 0.02, "hflip": 0.5},
        "eval": {"num_log_images": 0},
        "trainer": {"log_every_n_steps": 1, "accelerator": "cpu"},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Fit:
    """``cvtrain fit`` in a process group of its own (a terminal's foreground job), its output read as it comes."""

    def __init__(self, *arguments: str, cwd: Path, env: dict[str, str] | None = None):
        self.process = subprocess.Popen([sys.executable, "-m", "cvtrain", "fit", *arguments], cwd=cwd,
                                        env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
        self.cwd = cwd
        self.streams = {"out": [], "err": []}
        self.readers = [threading.Thread(target=self._read, args=(pipe, self.streams[name]), daemon=True)
                        for name, pipe in (("out", self.process.stdout), ("err", self.process.stderr))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, chunks: list[str]) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            chunks.append(chunk.decode(errors="replace"))

    def text(self, name: str) -> str:
        return "".join(self.streams[name])

    def wait_until(self, condition, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"cvtrain ended before {what}: {self.text('err')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout} s")
            time.sleep(0.001)

    def wait_for_output(self, pattern: str) -> None:
        """Wait for ``pattern`` on stdout, where Lightning's progress bars go."""
        self.wait_until(lambda: re.search(pattern, self.text("out")), repr(pattern))

    def send(self, number: int, *, group: bool = True) -> None:
        if group:
            os.killpg(self.process.pid, number)
        else:
            self.process.send_signal(number)

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=60)
        return self.process.returncode, self.text("err")


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def ended(pid: int) -> bool:
    """The process is gone, or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def loader_started(fit: Fit) -> bool:
    """A DataLoader worker exists: a child of the fit process's fork server (``cvtrain.data.workers``; the dataset
    check of this small set decodes in the main process, so the server's children are the loader's workers)."""
    for child in children(fit.process.pid):
        try:
            server = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"multiprocessing.forkserver" in server and any(
                    Path(f"/proc/{worker}/cmdline").read_bytes() == server for worker in children(child)):
                return True  # a process forked by the server (not a program its imports run, like ldconfig)
        except OSError:
            continue
    return False


def writing_checkpoint(run: Path, pid: int) -> bool:
    """A checkpoint is being written: its temporary file (``.last.ckpt.tmp-<pid>``) exists."""
    folder = run / "checkpoints"
    return folder.is_dir() and any(name.startswith(".") and name.endswith(f".tmp-{pid}") for name in os.listdir(folder))


def stop_line(err: str) -> str:
    """The one line a stop printed: the last line of stderr, and no other line says 'interrupted'."""
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert sum("interrupted" in line for line in lines) == 1, lines[-5:]
    return lines[-1]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(run: Path, whole: Path) -> None:
    """The final weights equal the uninterrupted run's tensor for tensor, and so do the validations."""
    a, b = weights(run / "checkpoints" / "last.ckpt"), weights(whole / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    history = [json.loads((folder / "metrics.json").read_text())["history"] for folder in (run, whole)]
    assert len(history[0]) == 2 and history[0] == history[1]


def table(signal_name: str, moment: str, processes: int, code: int, line: str, checkpoint: str, equal: str) -> None:
    print(f"\nTABLE | {signal_name} | {moment} | {processes} | {code} | {line} | {checkpoint} | {equal}")


def resume_in_process(command: str, cwd: Path, monkeypatch) -> None:
    """Run the printed ``continue with`` command, as printed, through the CLI's ``main`` (in this process)."""
    words = shlex.split(command)
    assert words[:2] == ["cvtrain", "fit"]
    monkeypatch.chdir(cwd)
    assert main(words[1:]) == 0


# --------------------------------------------------------------- references
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals")
    write_spec(path)
    return path


@pytest.fixture(scope="module")
def whole(folder) -> Path:
    """The uninterrupted run every stopped and continued run must equal (one process)."""
    torch.set_num_threads(1)
    result = cvtrain.fit(folder / "spec.yaml", run_dir=folder / "whole")
    assert inspect_checkpoint(result.last_checkpoint).global_step == 2 * STEPS
    return result.run_dir


@pytest.fixture(scope="module")
def whole_ddp(folder) -> Path:
    """The uninterrupted run on 2 gloo processes (each takes 6 of the 12 images, 2 at a time: 3 steps per epoch)."""
    done = subprocess.run([sys.executable, "-m", "cvtrain", "fit", "-c", "spec.yaml", "--run-dir", "whole-ddp", *DDP],
                          cwd=folder, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "whole-ddp"


# ------------------------------------------------------------ one process
MOMENTS = {
    "loader start": lambda fit, run: fit.wait_until(lambda: loader_started(fit), "DataLoader worker"),
    "mid-epoch": lambda fit, run: fit.wait_for_output(r"Epoch 1: +[1-7][0-9]%"),
    "validation": lambda fit, run: fit.wait_for_output(r"Validation DataLoader 0"),
    "checkpoint write": lambda fit, run: fit.wait_until(lambda: writing_checkpoint(run, fit.process.pid),
                                                        "checkpoint write"),
}


@pytest.mark.parametrize(("signal_name", "moment"), [("SIGINT", "loader start"), ("SIGTERM", "mid-epoch"),
                                                     ("SIGINT", "validation"), ("SIGTERM", "checkpoint write")])
def test_a_signal_stops_with_a_checkpoint_one_line_and_the_signals_code(signal_name, moment, folder, whole, tmp_path,
                                                                        monkeypatch):
    number = getattr(signal, signal_name)
    run = tmp_path / "run"
    fit = Fit("-c", str(folder / "spec.yaml"), "--run-dir", str(run), cwd=tmp_path)
    MOMENTS[moment](fit, run)
    fit.send(number)
    code, err = fit.finish()
    assert code == 128 + number, err[-3000:]
    line = stop_line(err)
    match = LINE.fullmatch(line)
    assert match, line
    epoch, step, checkpoint = int(match[1]), int(match[2]), Path(match[3])
    assert checkpoint == run / "checkpoints" / "last.ckpt"
    info = inspect_checkpoint(checkpoint)  # weights_only load; optimizer, schedulers, loops, epoch, step, config
    assert (info.epoch, info.global_step) == (epoch, step)
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    # the whole training state: RNG states, the run's id, the position in the data order, the metrics so far
    assert {"cvtrain_rng", "cvtrain_run_id", "optimizer_states", "lr_schedulers", "loops"} <= set(payload)
    assert payload["DataModule"]["train_order"] and "MetricsFile" in payload["callbacks"]
    if moment == "validation":  # the validation ran to its end and is kept; the stop came right after it
        assert (epoch, step) == (0, STEPS)
        assert [entry["epoch"] for entry in json.loads((run / "metrics.json").read_text())["history"]] == [0]
    if moment == "mid-epoch":
        assert epoch == 1 and step % STEPS != 0
    if moment == "loader start":
        assert (epoch, step) == (0, 1)  # the first step ends, then the run stops
    assert not list((run / "checkpoints").glob(".*tmp*"))  # no write was left half done
    resume_in_process(match[5], tmp_path, monkeypatch)
    assert_same_run(run, whole)
    table(signal_name, moment, 1, code, "yes", f"last.ckpt at epoch {epoch} step {step}", "yes")


def test_a_signal_before_training_stops_at_once_and_names_the_command_that_starts_again(folder, whole, tmp_path,
                                                                                       monkeypatch):
    """During the dataset checks there is nothing to save: the run stops at once, says so, and the command it
    prints starts the run again in place (a new run, equal to the uninterrupted one)."""
    run = tmp_path / "run"
    fit = Fit("-c", str(folder / "spec.yaml"), "--run-dir", str(run), cwd=tmp_path)
    fit.wait_until(lambda: "decoding images" in fit.text("err"), "the dataset checks")
    fit.send(signal.SIGSTOP)  # frozen inside the checks; the signal is handled there when it continues
    fit.send(signal.SIGTERM)
    fit.send(signal.SIGCONT)
    code, err = fit.finish()
    assert code == 143, err[-3000:]
    line = stop_line(err)
    command = f"cvtrain fit -c {run}/config.yaml --run-dir {run} --overwrite"
    assert line == f"interrupted before training started; no checkpoint yet; start it again with: {command}"
    assert not (run / "checkpoints").exists()
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    assert_same_run(run, whole)
    table("SIGTERM", "dataset checks (before training)", 1, code, "yes", "none (nothing trained yet)",
          "yes (started again in place)")


def pending(pid: int, number: int) -> bool:
    """Whether signal ``number`` waits to be delivered to process ``pid`` (``ShdPnd`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (number - 1) & 1)
    return False


def test_a_second_ctrl_c_stops_at_once_with_one_line(folder, whole, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit = Fit("-c", str(folder / "spec.yaml"), "--run-dir", str(run), cwd=tmp_path)
    fit.wait_for_output(r"Validation DataLoader 0")  # the first Ctrl-C waits for the validation's end
    fit.send(signal.SIGINT)
    fit.wait_until(lambda: not pending(fit.process.pid, signal.SIGINT), "the first SIGINT delivered")
    fit.send(signal.SIGINT)  # two signals sent at once would merge into one
    stopped = time.monotonic()
    code, err = fit.finish()
    assert code == 130 and time.monotonic() - stopped < 30, err[-3000:]
    line = stop_line(err)
    assert " (stopped at once by a second signal);" in line, line
    match = LINE.fullmatch(line.replace(" (stopped at once by a second signal)", ""))
    assert match and (int(match[1]), int(match[2])) == (0, STEPS), line
    # nothing was saved: the line names the newest whole checkpoint on disk, the periodic one of step 3
    named = Path(match[3])
    assert named == run / "checkpoints" / "step-00000003.ckpt"
    assert inspect_checkpoint(named).global_step == 3
    assert not children(fit.process.pid)  # the DataLoader workers went with it
    resume_in_process(match[5], tmp_path, monkeypatch)
    assert_same_run(run, whole)
    table("SIGINT x2", "validation", 1, code, "yes", "none new; names step-00000003.ckpt", "yes")


def test_sigusr1_on_slurm_saves_requeues_and_the_requeued_job_continues(folder, whole, tmp_path, monkeypatch):
    """``sbatch --signal=USR1@90``: Lightning's SLURM plugin requeues the job after the checkpoint; the requeued
    job runs the same command and continues the run (found by the job id in run.json)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    fit = Fit("-c", str(folder / "spec.yaml"), cwd=tmp_path, env=slurm)  # no --run-dir: runs/spec
    fit.wait_for_output(r"Epoch 1: +[1-7][0-9]%")
    fit.send(signal.SIGUSR1)
    code, err = fit.finish()
    assert code == 128 + signal.SIGUSR1, err[-3000:]
    match = LINE.fullmatch(stop_line(err))
    assert match and match[4] == "4242", stop_line(err)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    run = tmp_path / "runs" / "spec"
    assert Path(match[3]) == Path("runs/spec/checkpoints/last.ckpt")
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's checkpoint became last.ckpt
    # SLURM starts the same batch script again, with SLURM_RESTART_COUNT=1
    for key, value in {**slurm, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", str(folder / "spec.yaml")]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["spec"]  # continued, not runs/spec-2
    assert json.loads((run / "run.json").read_text())["resumed_from"] == "runs/spec/checkpoints/last.ckpt"
    assert_same_run(run, whole)
    table("SIGUSR1 (SLURM)", "mid-epoch", 1, code, "yes", f"last.ckpt at step {match[2]}; job requeued", "yes")


# ----------------------------------------------------------- two processes
@pytest.mark.parametrize(("signal_name", "moment", "group"), [("SIGTERM", "mid-epoch", True),
                                                              ("SIGINT", "validation", False)])
def test_ddp_ranks_stop_together_and_rank_zero_writes(signal_name, moment, group, folder, whole_ddp, tmp_path):
    """``--accelerator cpu --devices 2``: both ranks stop at the same step; the signal reaches both (a process
    group) or rank 0 alone, and the ranks agree before anyone stops."""
    number = getattr(signal, signal_name)
    run = tmp_path / "run"
    fit = Fit("-c", str(folder / "spec.yaml"), "--run-dir", str(run), *DDP, cwd=tmp_path)
    if moment == "mid-epoch":
        fit.wait_for_output(r"Epoch 1: +[1-7][0-9]%")
    else:
        fit.wait_for_output(r"Validation DataLoader 0")
    rank_one = [child for child in children(fit.process.pid) if b"LOCAL_RANK=1" in Path(f"/proc/{child}/environ")
                .read_bytes()]
    assert len(rank_one) == 1
    fit.send(number, group=group)
    code, err = fit.finish()
    assert code == 128 + number, err[-3000:]
    match = LINE.fullmatch(stop_line(err))
    assert match, stop_line(err)
    epoch, step = int(match[1]), int(match[2])
    info = inspect_checkpoint(Path(match[3]))
    assert (info.epoch, info.global_step) == (epoch, step)
    if moment == "validation":
        assert (epoch, step) == (0, 3)
    else:
        assert epoch == 1 and step % 3 != 0
    deadline = time.monotonic() + 60  # rank 1 ends too, just after rank 0 (see stopping.wait_for_parent)
    while not ended(rank_one[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended(rank_one[0])
    done = subprocess.run([sys.executable, "-m", "cvtrain", *shlex.split(match[5])[1:]], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, whole_ddp)
    table(signal_name + ("" if group else " (rank 0 only)"), moment, 2, code, "yes",
          f"last.ckpt at epoch {epoch} step {step}", "yes")
