"""The run directory: where a run's config, provenance, metrics, logs and checkpoints live.

```
runs/<name>/
  config.yaml        resolved spec; `cvtrain fit -c runs/<name>/config.yaml` replays the run
  run.json           run id, command line, seed, git commit and dirty flag, versions, host, dataset fingerprint
  metrics.json       final and per-epoch validation metrics, per-class AP
  checkpoints/       last.ckpt, best.ckpt, step-*.ckpt (each stamped with the run id)
  tensorboard/       event files
```
Only rank 0 writes here. Which folder is the run's is decided once, by rank 0
(``choose_run_dir``), and handed to the other processes: through the
environment to the DDP processes Lightning starts (``shared_with_workers``; honoured only by a child of the
process that set it), and by a broadcast once the process group exists (``broadcast_run_dir``) for those
started by torchrun or SLURM.

A new run claims its folder with one ``mkdir``, which fails if another process got there first, so two runs
started at the same moment never share ``runs/<name>-N``. ``--overwrite`` renames the old run to
``<name>.replaced-<time>`` before the new one starts (nothing of it can be resumed) and deletes it once the new
run has a checkpoint (``delete_replaced``).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from cvtrain.atomic import fsync_folder, write_json
from cvtrain.config.schema import RUN_NAME
from cvtrain.errors import ConfigError, CvtrainError

RUN_DIR_ENV = "CVTRAIN_RUN_DIR"  # "<pid>:<path>": the run directory rank 0 chose, for the DDP processes it starts
SKIPPED_FILE = "skipped.jsonl"  # items replaced under data.on_unreadable: skip
REPLACED = ".replaced-"  # runs/x.replaced-20250101T120000: an overwritten run, until the new one has a checkpoint


def is_rank_zero() -> bool:
    """True in the process that writes (global rank 0), and outside any distributed run."""
    return getattr(rank_zero_only, "rank", 0) == 0


@contextlib.contextmanager
def shared_with_workers(run_dir: Path) -> Iterator[None]:
    """Hand ``run_dir`` to the DDP processes Lightning starts while the block runs (they inherit the environment).

    The value names this process, so that only its own children follow it: a ``CVTRAIN_RUN_DIR`` inherited from
    anywhere else (a shell, a notebook, a training run that starts ``cvtrain``) is ignored.
    """
    os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
    try:
        yield
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


def inherited_run_dir() -> Path | None:
    """The run directory handed down by the parent process through ``shared_with_workers``, if it did."""
    value = os.environ.get(RUN_DIR_ENV, "")
    pid, _, path = value.partition(":")
    if pid.isdigit() and path and int(pid) == os.getppid():
        return Path(path)
    return None


def broadcast_run_dir(trainer: pl.Trainer, run_dir: Path) -> Path:
    """Rank 0's run directory on every rank (under torchrun each rank chose its own before they could talk)."""
    return Path(trainer.strategy.broadcast(str(run_dir), src=0))


def choose_run_dir(requested: Path | None, name: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The run's directory, claimed for it: it never holds an earlier run unless resuming.

    - no ``requested``: ``runs/<name>``, else ``runs/<name>-2``, ``-3``, ...: the first one this process can create
      (``mkdir`` is atomic, so two runs started at once get two folders);
    - ``requested`` that holds a run: an error unless ``resume`` (continue it) or ``overwrite`` (the old run is
      moved aside to ``<dir>.replaced-<time>``, out of reach of ``--resume``, and a new one starts);
    - on ranks other than 0 nothing is checked or created: rank 0's choice arrives later.

    Raises:
        ConfigError: ``name`` is not one path segment, or both ``resume`` and ``overwrite`` are given.
        CvtrainError: ``requested`` holds a run and neither ``resume`` nor ``overwrite`` says what to do.
    """
    inherited = inherited_run_dir()
    if inherited is not None:
        return inherited
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other",
                          hint="--resume continues the run in the directory, --overwrite replaces it: give one")
    if requested is None and not RUN_NAME.fullmatch(name):
        raise ConfigError(f"run name {name!r} is not one path segment",
                          hint="use letters, digits, '-', '_' and '.' (not first), e.g. name=my-run")
    path = Path(requested) if requested is not None else Path("runs") / name
    if not is_rank_zero():
        # Under torchrun/srun every rank starts at once, and rank 0 may already have made the directory: only
        # rank 0 checks and chooses. The trainer broadcasts its choice (``MetricsFile.setup``); others create nothing.
        return path
    if resume:
        return path  # what it holds is checked when the checkpoint is chosen
    if requested is not None or overwrite:
        if holds_run(path):
            if not overwrite:
                raise CvtrainError("run directory already holds a run", where=str(path), hint=_holds_run_hint(path))
            aside = move_aside(path)
            print(f"replacing the run in {path}: moved to {aside} until this run writes its first checkpoint")
        claim(path, empty_is_free=True)
        return path
    suffix = 1
    while not claim(path):
        suffix += 1
        path = Path("runs") / f"{name}-{suffix}"
    return path


def claim(path: Path, *, empty_is_free: bool = False) -> bool:
    """Create ``path`` (and its parents); False when it exists already (another run created it first).

    With ``empty_is_free`` an existing empty folder counts as claimed too (a folder the user made for the run).
    """
    missing = [folder for folder in path.parents if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return empty_is_free and path.is_dir() and not any(path.iterdir())
    _CREATED_PARENTS[path] = missing
    return True


# For each folder ``claim`` created: the parent folders it had to create too (``runs/`` on a first run), which go
# when the folder is released unused, so that a failed first command leaves nothing behind.
_CREATED_PARENTS: dict[Path, list[Path]] = {}


def _release_parents(path: Path) -> None:
    for folder in _CREATED_PARENTS.pop(path, []):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only while empty: another run may have started in it meanwhile


def holds_run(path: Path) -> bool:
    """True when ``path`` exists and is not an empty folder."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir/checkpoints`` holds a ``.ckpt`` (whole or not: a cheap look, for hints)."""
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.ckpt"))


def _holds_run_hint(path: Path) -> str:
    if has_checkpoint(path):
        return "pass --resume to continue it, --overwrite to replace it, or another --run-dir"
    return "it has no checkpoint to resume from: pass --overwrite to start it again in place, or another --run-dir"


def move_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<path>.replaced-<UTC time>`` next to it (one atomic rename); returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}{REPLACED}{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}{REPLACED}{stamp}-{number}")
    os.rename(path, aside)
    fsync_folder(path.parent)
    return aside


def replaced_runs(run_dir: Path) -> list[Path]:
    """The runs ``--overwrite`` moved aside from ``run_dir`` and that are not deleted yet."""
    return sorted(run_dir.parent.glob(f"{run_dir.name}{REPLACED}*"))


def delete_replaced(run_dir: Path) -> list[Path]:
    """Delete the runs moved aside from ``run_dir`` by ``--overwrite``; returns what was deleted."""
    deleted = []
    for aside in replaced_runs(run_dir):
        shutil.rmtree(aside, ignore_errors=True)
        deleted.append(aside)
    return deleted


@contextlib.contextmanager
def output_dir(requested: Path | None, name: str, *, overwrite: bool = False) -> Iterator[Path]:
    """A folder for a command's output (``check``, ``predict``), by the rules of run directories.

    Without ``requested``: the next free ``runs/<name>[-N]``, claimed with ``mkdir``. A ``requested`` folder that
    holds anything is refused unless ``overwrite``, which moves the old contents aside and deletes them once the
    block succeeds (and puts them back if it fails). When the block fails, the folder it was writing is removed, so
    no empty or half-written folder blocks the next try.

    Raises:
        CvtrainError: ``requested`` is not empty and ``overwrite`` is not set.
    """
    aside = None
    if requested is None:
        path, suffix = Path("runs") / name, 1
        while not claim(path):
            suffix += 1
            path = Path("runs") / f"{name}-{suffix}"
        created = True
    else:
        path = Path(requested)
        if holds_run(path):
            if not overwrite:
                raise CvtrainError("output folder is not empty", where=str(path),
                                   hint="give a new --out folder, or --overwrite to replace what it holds")
            aside = move_aside(path)
        created = not path.exists()
        if not claim(path, empty_is_free=True):
            raise CvtrainError("output folder was created by another process meanwhile", where=str(path),
                               hint="give another --out folder")
    try:
        yield path
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
            _release_parents(path)
        else:
            for child in path.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if aside is not None:
            os.rename(aside, path)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def release_if_empty(path: Path) -> None:
    """Remove ``path`` if it is an empty folder (a claimed folder a failed command wrote nothing into)."""
    with contextlib.suppress(OSError):
        path.rmdir()  # fails when anything is inside, which is what we want
        _release_parents(path)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir`` as a dict; empty when there is none or it cannot be read."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def fit_command(run_dir: Path, *flags: str) -> str:
    """The ``cvtrain fit`` command line that replays the run in ``run_dir`` from its ``config.yaml``, with ``flags``.

    >>> fit_command(Path("runs/x"), "--resume")
    'cvtrain fit -c runs/x/config.yaml --run-dir runs/x --resume'
    """
    return shlex.join(["cvtrain", "fit", "-c", str(run_dir / "config.yaml"), "--run-dir", str(run_dir), *flags])


def slurm_job_id() -> str | None:
    """This SLURM job's id (``<array job>_<task>`` for array jobs), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeued_run(requested: Path | None, name: str) -> Path | None:
    """After SLURM requeued this job (``SLURM_RESTART_COUNT`` > 0): the run directory its earlier start wrote.

    The run is recognised by the job id in its ``run.json``; with no ``requested`` folder, ``runs/<name>`` and
    ``runs/<name>-N`` are looked at.
    """
    job = slurm_job_id()
    if job is None or os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
        return None
    if requested is not None:
        candidates = [Path(requested)]
    else:
        base = Path("runs") / name
        candidates = [base, *sorted(base.parent.glob(f"{name}-*"))] if RUN_NAME.fullmatch(name) else []
    return next((path for path in candidates if read_run_info(path).get("slurm_job_id") == job), None)


def git_state(where: Path) -> dict[str, Any]:
    """The commit and dirty flag of the git repository around ``where``, if any."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str]:
    """Versions of Python, torch, torchvision, Lightning and cvtrain."""
    import torch
    import torchvision

    import cvtrain

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "cvtrain": cvtrain.__version__}


def write_run_info(run_dir: Path, *, config, fingerprint: str, argv: list[str] | None = None, **extra: Any) -> None:
    """Write ``run.json``: command, seed, git state, versions, host, dataset fingerprint and ``extra``."""
    write_json(run_dir / "run.json", {
        "command": argv if argv is not None else sys.argv,
        "cwd": os.getcwd(),
        "seed": config.train.seed,
        "git": git_state(Path.cwd()),
        "versions": versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "dataset_fingerprint": fingerprint,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slurm_job_id": slurm_job_id(),
        **extra,
    })
