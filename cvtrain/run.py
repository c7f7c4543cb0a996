"""The run directory: where a run's config, provenance, metrics, logs and checkpoints live.

```
runs/<name>/
  config.yaml        resolved spec; `cvtrain fit -c runs/<name>/config.yaml` replays the run
  run.json           command line, seed, git commit and dirty flag, versions, host, dataset fingerprint
  metrics.json       final and per-epoch validation metrics, per-class AP
  checkpoints/       last.ckpt, best.ckpt
  tensorboard/       event files
```
Only rank 0 writes here.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from cvtrain.errors import CvtrainError

RUN_DIR_ENV = "CVTRAIN_RUN_DIR"  # lets DDP worker processes agree on the run directory rank 0 chose


def is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


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
    import torch
    import torchvision

    import cvtrain

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "cvtrain": cvtrain.__version__}


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def write_run_info(run_dir: Path, *, config, fingerprint: str, argv: list[str] | None = None, **extra: Any) -> None:
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


class MetricsFile(pl.Callback):
    """Keeps ``metrics.json`` current after every validation, so a killed run still has its numbers."""

    def __init__(self, path: Path):
        self.path = path
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.started = time.time()

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        # Every rank picked a run directory before the processes could talk; rank 0's is the run's.
        self.path = Path(trainer.strategy.broadcast(str(self.path), src=0))

    def state_dict(self) -> dict[str, Any]:
        # Saved in checkpoints, so that a resumed run's metrics.json keeps the epochs before the interruption
        # (and the best of all of them), as they were when the checkpoint was written.
        return {"history": self.history, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = state_dict.get("best")

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = getattr(module, "last_metrics", {}) or {}
        if not metrics:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics.get("scalars", {})}
        self.history.append(entry)
        key = module.monitor.split("/", 1)[1]
        if self.best is None or entry.get(key, float("-inf")) >= self.best.get(key, float("-inf")):
            self.best = {**entry, "per_class": metrics.get("per_class", {})}
        write_json(self.path, {
            "monitor": module.monitor,
            "best": self.best,
            "last": {**entry, "per_class": metrics.get("per_class", {})},
            "history": self.history,
            "elapsed_seconds": round(time.time() - self.started, 1),
        })
