"""Runs the malformed-input corpus (tests/data/bad) and classifies each answer.

Used by ``tests/test_bad_inputs.py`` (which asserts the answer each case must get) and by
``scripts/bad_input_table.py`` (which counts the answers, for any checkout, into docs/reliability.md).

Every case runs ``python -m cvtrain <argv>`` in a child process. Importing torch, torchvision and
Lightning costs several seconds per process, which for 100 cases would be minutes, so the children are
forked from one process that has done the imports once (``CliForkServer``); each child then runs the
``cvtrain`` module as ``python -m`` does, with its own working directory, stdout and stderr.

An answer is one of:

- ``refused``: exit 2, exactly one line ``error: <where>: <what> (<hint>)`` on stderr, no traceback;
- ``reported``: ``cvtrain check`` exits 0 or 1 and its ``report.json`` holds the case's finding code;
- ``accepted``: a valid but odd input (``answer: accepted`` in cases.yaml, e.g. ``$`` in class names) that
  ``check`` reads and reports on without a traceback (exit 0 or 1);
- ``silent``: exit 0 or 1 and none of the above: the input slipped through;
- ``crashed``: a traceback, or an exit code no answer above allows.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

CORPUS = Path(__file__).resolve().parent / "data" / "bad"
KINDS = ("specs", "coco", "voc", "images", "masks", "checkpoints", "missing", "findings")
ANSWERS = ("refused", "reported", "accepted", "silent", "crashed")

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


def manifest() -> dict[str, dict]:
    """``cases.yaml``: case -> ``{"run": argv, "expect": fragments, "code": finding code (reported cases)}``."""
    return yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))


def child_environment() -> dict[str, str]:
    """The environment of the children: one OpenMP thread (two cores are shared; spinning threads slow every step)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


class CliForkServer:
    """Runs ``python -m cvtrain <argv>`` in processes forked from one that imported cvtrain already."""

    def __init__(self, scratch: Path, env: dict[str, str] | None = None):
        self.scratch = scratch
        self.count = 0
        # Started in the scratch folder: ``python -c`` puts its working directory first on sys.path, where a
        # checkout's cvtrain would shadow the one PYTHONPATH names.
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env or child_environment(), cwd=scratch)

    def run(self, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        """Run ``cvtrain <argv>`` in ``cwd``; its exit code, stdout and stderr."""
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
        """End the server (it exits when its input closes)."""
        self.process.stdin.close()
        self.process.wait(timeout=60)


def make_checkpoints(tmp: Path) -> dict[str, Path]:
    """A detection checkpoint (classes square, disc, triangle) and a segmentation one (background, shape)."""
    import numpy as np
    import torch
    from PIL import Image

    import cvtrain

    torch.set_num_threads(1)
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


@dataclass
class Outcome:
    """What one case did: its answer (one of ``ANSWERS``), the process's result, and what it changed."""

    case: str
    answer: str
    done: subprocess.CompletedProcess
    corpus_changed: bool
    out: Path
    report: dict | None

    @property
    def lines(self) -> list[str]:
        """stderr's non-empty lines."""
        return self.done.stderr.strip().splitlines()

    @property
    def summary(self) -> str:
        """The one line the table shows: the error line, the finding's message, or the end of the output."""
        if self.answer == "refused":
            return self.lines[0]
        if self.answer == "reported" and self.report is not None:
            return next(f"{f['code']}: {f['message']}" for f in self.report["findings"] if f["code"] == self.code)
        if self.answer == "crashed":
            tail = [line for line in self.lines if line.strip()]
            return tail[-1] if tail else f"exit {self.done.returncode}"
        return f"exit {self.done.returncode}"

    code: str | None = None


def run_case(case: str, entry: dict, server: CliForkServer, checkpoints: dict[str, Path], tmp: Path) -> Outcome:
    """Run one case on a copy of the corpus in ``tmp`` and classify its answer."""
    corpus = tmp / "corpus"
    shutil.copytree(CORPUS, corpus, symlinks=True)
    out = tmp / "out"
    values = {"{out}": str(out), **{f"{{{name}}}": str(path) for name, path in checkpoints.items()}}
    before = snapshot(corpus)
    done = server.run([values.get(part, part) for part in entry["run"]], cwd=corpus)
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    lines = done.stderr.strip().splitlines()
    code = entry.get("code")
    if "Traceback" in done.stderr or done.returncode not in (0, 1, 2):
        answer = "crashed"
    elif done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        answer = "refused"
    elif done.returncode == 2:
        answer = "crashed"  # exit 2 with several lines or none: not the one-line answer
    elif code and report is not None and any(f["code"] == code for f in report["findings"]):
        answer = "reported"
    elif entry.get("answer") == "accepted" and report is not None:
        answer = "accepted"
    else:
        answer = "silent"
    return Outcome(case, answer, done, snapshot(corpus) != before, out, report, code)
