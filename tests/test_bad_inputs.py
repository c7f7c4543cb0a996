"""The malformed-input corpus (tests/data/bad): every case through the CLI gives one line, exit 2, and writes nothing.

Each case runs ``python -m cvtrain ...`` in a child process. Importing torch,
torchvision and Lightning costs several seconds per process, which for 80
cases would be minutes, so the children are forked from one process that has
done the imports once (``CliForkServer``); each child then runs the
``cvtrain`` module as ``python -m`` does, with its own working directory,
stdout and stderr. ``test_fork_server_answers_as_python_dash_m`` checks that
this gives the same output as a fresh ``python -m cvtrain``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cvtrain

CORPUS = Path(__file__).resolve().parent / "data" / "bad"
MANIFEST = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
KINDS = ("specs", "coco", "voc", "images", "masks", "checkpoints", "missing")

SERVER = r"""
import json, os, runpy, sys, traceback
import cvtrain.api, cvtrain.cli  # the slow imports, once

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                handle = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(handle, fd)
                os.close(handle)
            sys.argv = ["cvtrain", *request["argv"]]
            try:
                runpy.run_module("cvtrain", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()  # what the interpreter does with an uncaught exception
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


def child_environment() -> dict[str, str]:
    # One OpenMP thread: the machine's two cores are shared, and spinning threads slow every step tenfold.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


class CliForkServer:
    """Runs ``python -m cvtrain <argv>`` in processes forked from one that imported cvtrain already."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.count = 0
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=child_environment())

    def run(self, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        self.count += 1
        stdout, stderr = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        code = json.loads(self.process.stdout.readline())
        return subprocess.CompletedProcess(
            argv, code, stdout.read_text(errors="replace"), stderr.read_text(errors="replace")
        )

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = CliForkServer(tmp_path_factory.mktemp("cli-output"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A detection checkpoint (classes square, disc, triangle) and a segmentation one (background, shape)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("checkpoints")
    detection = {"task": "detection", "data": {"format": "shapes", "root": str(tmp / "shapes"), "val_fraction": 0.25,
                                               "options": {"num_images": 4, "image_size": 64, "seed": 1}},
                 "model": {"name": "ssdlite320_mobilenet_v3_large"}}
    root = tmp / "masks"
    for position in range(4):
        image = np.full((64, 64, 3), 40 * position, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 10:30] = 1
        for folder, array in (("images", image), ("masks", mask)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"m{position}.png")
    segmentation = {
        "task": "semantic_segmentation",
        "model": {"name": "lraspp_mobilenet_v3_large"},
        "data": {"format": "masks", "root": str(root), "classes": ["background", "shape"], "val_fraction": 0.25},
    }
    made = {}
    for name, spec in (("detection", detection), ("segmentation", segmentation)):
        spec.update(train={"max_epochs": 1, "batch_size": 3, "image_size": 64, "num_workers": 0},
                    trainer={"accelerator": "cpu"}, run_dir=str(tmp / name))
        made[f"{name}.ckpt"] = cvtrain.fit(spec).last_checkpoint
    return made


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder under ``folder``."""
    state: dict[str, tuple[int, int] | None] = {}
    for path in folder.rglob("*"):
        stat = path.lstat()
        state[str(path.relative_to(folder))] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return state


def expand(argv: list[str], checkpoints: dict[str, Path], out: Path) -> list[str]:
    values = {"{out}": str(out), **{f"{{{name}}}": str(path) for name, path in checkpoints.items()}}
    return [values.get(part, part) for part in argv]


def test_every_corpus_entry_has_a_case_and_every_case_a_file():
    entries = {f"{kind}/{path.name}" for kind in KINDS for path in (CORPUS / kind).iterdir()
               if not path.name.startswith("_")}
    assert entries == set(MANIFEST)
    assert len(MANIFEST) >= 40


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_bad_input_gives_one_line_and_writes_nothing(case, server, checkpoints, tmp_path):
    entry = MANIFEST[case]
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus, symlinks=True)
    out = tmp_path / "out"
    before = snapshot(corpus)
    done = server.run(expand(entry["run"], checkpoints, out), cwd=corpus)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: ") and line.endswith(")"), line  # "error: <where>: <what> (<hint>)"
    for fragment in entry["expect"]:
        assert fragment in line, (fragment, line)
    assert snapshot(corpus) == before
    assert not out.exists()
    assert not (corpus / "PWNED").exists()


def test_fork_server_answers_as_python_dash_m(server, tmp_path):
    """A case through a fresh ``python -m cvtrain`` prints the same and exits the same as through the fork server."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    argv = MANIFEST["coco/syntax_error.json"]["run"]
    fresh = subprocess.run([sys.executable, "-m", "cvtrain", *argv], cwd=corpus, capture_output=True, text=True,
                           env=child_environment(), timeout=300)
    forked = server.run(argv, cwd=corpus)
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (forked.returncode, forked.stdout, forked.stderr)


def test_debug_flag_shows_the_traceback(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    argv = MANIFEST["coco/syntax_error.json"]["run"]
    done = subprocess.run([sys.executable, "-m", "cvtrain", *argv, "--debug"], cwd=corpus, capture_output=True,
                          text=True, env=child_environment(), timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("cvtrain.errors.DataError: ")
