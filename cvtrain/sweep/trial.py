"""One trial: the spec with the trial's values, a normal ``fit`` in ``runs/<sweep>/trial-NNN``, and its outcome.

A trial on one device runs ``cvtrain.api.fit`` in the worker's own process. A trial on several devices
(``--gpus-per-trial 2``, ``--devices 2``) runs in a child process, ``python -m cvtrain.sweep.trial``:
Lightning's DDP launcher starts the other ranks by running the current command again, which must be that
trial and not the whole sweep.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvtrain.config import Config, load_config, save_config
from cvtrain.errors import CvtrainError

OUTCOME_FILE = ".sweep-trial.json"  # a child process's pruning decision and error, for the worker that waits on it


@dataclass
class Outcome:
    """How a trial ended, as the sweep records it (also as the trial's Optuna user attributes)."""

    status: str  # complete | pruned | failed | diverged | interrupted
    value: float | None = None  # the trial's best validation value of the sweep's metric
    ci95: list[float] | None = None  # [low, high] when metrics.json holds '<metric>_ci95' for that epoch
    epochs: int = 0  # epochs validated
    seconds: float = 0.0
    error: str | None = None  # one line, for failed and diverged trials
    metrics: dict[str, float] = field(default_factory=dict)  # every validation scalar of the chosen epoch
    pruned_epoch: int | None = None
    resumed: bool = False  # a retried trial that continued its killed run from a checkpoint

    def attributes(self) -> dict[str, Any]:
        return asdict(self)


def trial_config(base: Config, values: dict[str, Any], gpus_per_trial: int | None) -> Config:
    """The base spec with the trial's values; no ``sweep`` section, so it is a plain ``fit`` spec."""
    tree = base.model_dump(mode="json")
    tree["sweep"] = None
    tree["run_dir"] = None
    overrides = dict(values)
    if gpus_per_trial is not None:
        overrides["trainer.gpus"] = gpus_per_trial
    return load_config(tree, overrides)


def needs_own_process(config: Config) -> bool:
    """True when the trial trains on more than one device, so Lightning starts DDP processes."""
    trainer = config.trainer
    devices = trainer.devices if isinstance(trainer.devices, int) else 1
    return (trainer.gpus or 0) > 1 or devices > 1 or trainer.num_nodes > 1


def read_outcome(run_dir: Path, metric: str, direction: str) -> Outcome:
    """The trial's value from its ``metrics.json``: the best validation of ``metric`` over its epochs
    (the later epoch on a tie, as ``best.ckpt`` is chosen), with its interval when the file has one."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return Outcome("failed", error="no validation ran (no metrics.json)")
    data = json.loads(path.read_text(encoding="utf-8"))
    history = data.get("history") or []
    scored = [entry for entry in history if _usable(entry.get(metric))]
    epochs = history[-1]["epoch"] + 1 if history else 0
    if not scored:
        known = sorted(k for k in (history[-1] if history else {}) if k not in ("epoch", "step"))
        why = (f"metric {metric!r} is not among the validation metrics ({', '.join(known)})" if history and
               metric not in history[-1] else f"metric {metric!r} was never scored (pycocotools -1: no objects of "
                                                "that size, or no validation)")
        return Outcome("failed", epochs=epochs, error=why)
    sign = 1.0 if direction == "maximize" else -1.0
    chosen = max(reversed(scored), key=lambda entry: sign * entry[metric])  # reversed: later epoch wins a tie
    best = data.get("best") or {}
    if best.get("epoch") == chosen["epoch"]:
        chosen = {**chosen, **{k: v for k, v in best.items() if k != "per_class"}}
    interval = chosen.get(f"{metric}_ci95")
    scalars = {k: float(v) for k, v in chosen.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}
    return Outcome("complete", value=float(chosen[metric]), epochs=epochs, metrics=scalars,
                   ci95=[float(interval[0]), float(interval[1])] if _is_interval(interval) else None)


def _usable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_interval(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)


def failure(error: BaseException, run_dir: Path) -> Outcome:
    """A trial that raised: diverged, a user error (one line) or a bug (traceback in ``error.txt``)."""
    from cvtrain.errors import DivergenceError

    if isinstance(error, DivergenceError):
        return Outcome("diverged", error=error.one_line())
    if isinstance(error, CvtrainError):
        return Outcome("failed", error=error.one_line())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return Outcome("failed", error=f"{type(error).__name__}: {first} (traceback in {run_dir / 'error.txt'})")


def resumable(run_dir: Path) -> bool:
    """True when a killed trial's run directory holds a checkpoint to continue from."""
    from cvtrain.engine.checkpoints import find_resume_checkpoint
    from cvtrain.errors import CheckpointError

    try:
        find_resume_checkpoint(run_dir, quiet=True)
        return True
    except CheckpointError:
        return False


def fit_here(config: Config, run_dir: Path, trial: Any, metric: str, *, resume: bool, skip_checks: bool) -> int | None:
    """``fit`` in this process with the pruning callback; returns the epoch it was pruned at, if it was.

    A retried trial resumes its killed run (``resume``); without a checkpoint it starts that run again.
    """
    from cvtrain.api import fit
    from cvtrain.sweep.pruning import PruningCallback

    pruning = PruningCallback(trial, metric)
    fit(config, run_dir=run_dir, resume="auto" if resume else None, overwrite=run_dir.exists() and not resume,
        skip_checks=skip_checks, callbacks=[pruning])
    return pruning.pruned_epoch


def fit_in_child(config: Config, run_dir: Path, metric: str, *, resume: bool, skip_checks: bool,
                 storage: str, study: str, trial_id: int, env: dict[str, str] | None = None) -> int | None:
    """``fit`` in ``python -m cvtrain.sweep.trial`` (DDP trials); returns the epoch it was pruned at, if it was.

    Raises:
        CvtrainError: the child's error line (``DivergenceError`` when it exited with code 3).
    """
    from cvtrain.errors import DivergenceError

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir.parent / f".{run_dir.name}.yaml"
    save_config(config, spec)
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "cvtrain.sweep.trial", "--spec", str(spec), "--run-dir", str(run_dir),
               "--metric", metric, "--storage", storage, "--study", study, "--trial-id", str(trial_id)]
    command += ["--resume"] * resume + ["--skip-checks"] * skip_checks
    child = subprocess.Popen(command, env=env)
    try:
        code = child.wait()
    except BaseException:
        child.terminate()  # Ctrl-C or the worker stopping: the child and its DDP ranks stop with it
        child.wait()
        raise
    finally:
        spec.unlink(missing_ok=True)
    report_path = run_dir / OUTCOME_FILE
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    if code == DivergenceError.exit_code:
        raise DivergenceError(report.get("error") or "training diverged", where=str(run_dir))
    if code != 0:
        raise CvtrainError(report.get("error") or f"the trial's process exited with code {code}", where=str(run_dir))
    return report.get("pruned_epoch")


def write_hparams(run_dir: Path, values: dict[str, Any], outcome: Outcome, metric: str) -> None:
    """The trial's values and result in its own TensorBoard folder, for TensorBoard's HParams view across
    trials (``tensorboard --logdir runs/<sweep>``), beside the trial's curves."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    plain = {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
             for key, value in values.items()}
    plain["status"] = outcome.status
    scores = {f"sweep/{metric}": outcome.value if outcome.value is not None else float("nan"),
              "sweep/epochs": float(outcome.epochs)}
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    try:
        for summary in hparams(plain, scores):
            writer.file_writer.add_summary(summary)
        for name, value in scores.items():
            writer.add_scalar(name, value, global_step=0)
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------- child
def main(argv: list[str] | None = None) -> int:
    """``python -m cvtrain.sweep.trial``: one trial's ``fit`` on several devices, reporting to the study."""
    parser = argparse.ArgumentParser(prog="python -m cvtrain.sweep.trial")
    for name in ("--spec", "--run-dir", "--metric", "--storage", "--study", "--trial-id"):
        parser.add_argument(name, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--skip-checks", action="store_true")
    args = parser.parse_args(argv)
    from cvtrain.atomic import write_json
    from cvtrain.engine.rundir import is_rank_zero
    from cvtrain.quiet import quiet_libraries

    quiet_libraries()
    run_dir = Path(args.run_dir)
    rank_zero = is_rank_zero()
    try:
        config = load_config(Path(args.spec))
        trial = _trial(args) if rank_zero else None  # only rank 0 talks to the study; the others follow it
        pruned = fit_here(config, run_dir, trial, args.metric, resume=args.resume, skip_checks=args.skip_checks)
    except CvtrainError as error:
        if rank_zero:
            write_json(run_dir / OUTCOME_FILE, {"error": error.one_line()})
        print(f"error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    if rank_zero:
        write_json(run_dir / OUTCOME_FILE, {"pruned_epoch": pruned})
    return 0


def _trial(args: argparse.Namespace):
    import optuna

    from cvtrain.sweep.study import build_pruner, build_storage

    # The trial's spec has no sweep section; the study's pruner comes from the sweep's own spec.
    sweep = load_config(Path(args.run_dir).parent / "spec.yaml").sweep
    study = optuna.load_study(study_name=args.study, storage=build_storage(args.storage, sweep),
                              pruner=build_pruner(sweep))
    return optuna.trial.Trial(study, int(args.trial_id))


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
