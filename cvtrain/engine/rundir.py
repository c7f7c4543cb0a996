"""The run directory: where a run's config, provenance, metrics, logs and checkpoints live.

```
runs/<name>/
  config.yaml        resolved spec; `cvtrain fit -c runs/<name>/config.yaml` replays the run
  run.json           command line, seed, git commit and dirty flag, versions, host, dataset fingerprint
  metrics.json       final and per-epoch validation metrics, per-class AP
  checkpoints/       last.ckpt, best.ckpt
  tensorboard/       event files
```
Only rank 0 writes here. Which folder is the run's is decided once, by rank 0
(``choose_run_dir``), and handed to the other processes: through the
environment to the DDP processes Lightning starts (``shared_with_workers``), and by
a broadcast once the process group exists (``broadcast_run_dir``) for those
started by torchrun or SLURM.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from cvtrain.atomic import write_json
from cvtrain.errors import CvtrainError

RUN_DIR_ENV = "CVTRAIN_RUN_DIR"  # lets DDP worker processes agree on the run directory rank 0 chose
SKIPPED_FILE = "skipped.jsonl"  # items replaced under data.on_unreadable: skip


def is_rank_zero() -> bool:
    """True in the process that writes (global rank 0), and outside any distributed run."""
    return getattr(rank_zero_only, "rank", 0) == 0


@contextlib.contextmanager
def shared_with_workers(run_dir: Path) -> Iterator[None]:
    """Hand ``run_dir`` to the DDP processes Lightning starts while the block runs (they inherit the environment)."""
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


def broadcast_run_dir(trainer: pl.Trainer, run_dir: Path) -> Path:
    """Rank 0's run directory on every rank (under torchrun each rank chose its own before they could talk)."""
    return Path(trainer.strategy.broadcast(str(run_dir), src=0))


def choose_run_dir(requested: Path | None, name: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """A run directory that holds no earlier run, unless resuming or overwriting is asked for.

    ``runs/<name>`` when free, else ``runs/<name>-2``, ``-3``, ... . An explicit
    ``--run-dir`` that already holds a run is an error unless ``--resume`` or
    ``--overwrite`` says what to do with it.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    if not is_rank_zero():
        # Under torchrun/srun every rank starts at once, and rank 0 may already have made the directory: only
        # rank 0 checks and chooses. The trainer broadcasts its choice (``MetricsFile.setup``); others create nothing.
        return Path(requested) if requested is not None else Path("runs") / name
    if requested is not None:
        path = Path(requested)
        if _holds_run(path) and not (resume or overwrite):
            raise CvtrainError("run directory already holds a run", where=str(path),
                               hint="pass --resume to continue it, --overwrite to replace it, or another --run-dir")
        return path
    base = Path("runs") / name
    if resume or overwrite or not _holds_run(base):
        return base
    suffix = 2
    while _holds_run(base.with_name(f"{name}-{suffix}")):
        suffix += 1
    return base.with_name(f"{name}-{suffix}")


def _holds_run(path: Path) -> bool:
    return path.exists() and any(path.iterdir())


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
        **extra,
    })
