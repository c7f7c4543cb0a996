"""The sweep: cheap checks, the dataset check once, then trials until the budget is spent.

With ``--parallel P`` the command starts P worker processes that each run this same loop against the
shared storage, and watches the study; on a cluster every node runs the same ``cvtrain sweep`` command
with a shared ``--storage``. Optuna's storage hands out the trials: there is no scheduler here.

Budget: ``--trials N`` is the number of trials with an outcome (complete, pruned, failed, diverged) the
study should hold. A worker starts a trial while done + running < N, and waits while the remaining ones
run elsewhere (one of them may be a killed trial that the heartbeat will queue again).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtrain.config import Config, save_config
from cvtrain.errors import ConfigError
from cvtrain.sweep.space import Space
from cvtrain.sweep.study import (
    build_storage,
    counts,
    default_storage,
    is_journal,
    open_study,
    requeue_interrupted,
    require_optuna,
    retried_from,
    shown,
)
from cvtrain.sweep.trial import (
    Outcome,
    failure,
    fit_here,
    fit_in_child,
    needs_own_process,
    read_outcome,
    resumable,
    trial_config,
    write_hparams,
)

if TYPE_CHECKING:
    import optuna

    from cvtrain.sweep.results import SweepResult

log = logging.getLogger("cvtrain")
SEGMENTATION_METRICS = ("mIoU", "pixel_accuracy", "mean_accuracy", "baseline_mIoU", "baseline_pixel_accuracy")


class TrialFailed(Exception):
    """A trial that failed or diverged; recorded on the trial, and the sweep goes on."""


@dataclass
class Sweep:
    """Everything a worker needs to run trials of one study."""

    config: Config  # the base spec, with its sweep section
    space: Space
    sweep_dir: Path
    storage: str
    study_name: str
    metric: str
    trials: int
    gpus_per_trial: int | None
    trial_checks: bool  # trials check their dataset themselves (only under checks.on_error: drop)
    worker: int  # 0 for the first or only worker; added to the sampler's seed
    started: float = 0.0


def run_sweep(config: Config, *, trials: int, sweep_dir: str | os.PathLike | None = None, storage: str | None = None,
              study: str | None = None, parallel: int = 1, gpus_per_trial: int | None = None,
              skip_checks: bool = False, worker: int | None = None, where: str | None = None) -> SweepResult:
    """Run (or continue) the sweep a spec's ``sweep`` section describes.

    Args:
        config: the spec, flags applied, with a ``sweep`` section.
        trials: trials with an outcome the study should hold when the command ends.
        sweep_dir: where trials, the study and the results go (default ``runs/<name>-sweep``).
        storage: an Optuna storage URL shared by workers (default SQLite in ``sweep_dir``).
        study: the study's name in that storage (default: the sweep folder's name).
        parallel: worker processes on this machine.
        gpus_per_trial: GPUs each trial trains on (default 1 on a CUDA machine, else the spec's devices).
        skip_checks: do not check the dataset first.
        worker: set in the worker processes ``parallel`` starts: they neither check nor write the results.
        where: the spec file, for error messages.

    Returns:
        The ``SweepResult`` (written as ``sweep.json``, ``sweep.html`` and ``best.yaml`` unless ``worker``).

    Raises:
        ConfigError: no sweep section, a space the spec refuses, a study started from another spec, a
            storage that cannot be opened, more GPUs than the machine has; all before any training.
    """
    sweep = config.sweep
    if sweep is None:
        raise ConfigError("the spec has no sweep section", where=where,
                          hint="add sweep: {space: {train.optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}}} "
                               "(docs/sweep.md)")
    if trials < 1 or parallel < 1:
        raise ConfigError(f"--trials {trials} and --parallel {parallel} must be at least 1")
    optuna = require_optuna()
    space = Space(sweep)
    space.check(config, where)
    space.check_enqueued(sweep.enqueue, where)
    metric = _metric(config, where)
    folder = Path(sweep_dir) if sweep_dir is not None else Path("runs") / f"{config.name or 'spec'}-sweep"
    url = storage or default_storage(folder)
    gpus = _gpus_per_trial(gpus_per_trial, parallel if worker is None else 1, config)
    plan = Sweep(config, space, folder, url, study or folder.name, metric, trials, gpus,
                 trial_checks=not skip_checks and config.checks.on_error == "drop",
                 worker=_worker_number(worker, shared=storage is not None), started=time.time())
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial; failures without tracebacks
    try:
        return _run(plan, parallel, skip_checks, worker, where)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(plan: Sweep, parallel: int, skip_checks: bool, worker: int | None, where: str | None) -> SweepResult:
    config, folder, url = plan.config, plan.sweep_dir, plan.storage
    the_study = open_study(config, build_storage(url, config.sweep), plan.study_name, plan.space, worker=plan.worker,
                           where=where)
    _check_folder(folder, the_study)
    if worker is None:
        folder.mkdir(parents=True, exist_ok=True)
        _write_spec(config, folder / "spec.yaml")
        print(f"sweep folder: {folder}\nstudy:        {plan.study_name} in {shown(url)}\n"
              f"TensorBoard:  tensorboard --logdir {folder}   (HParams: the trials side by side)")
        if not skip_checks:
            _check_dataset(config, folder)
        elif parallel > 1:
            from cvtrain.data.loading import build_index

            build_index(config.data)  # generated datasets (format: shapes) are written once, before the workers
    if worker is None:  # --parallel's workers leave this to the command that started them: once, not per worker
        requeue_interrupted(the_study, config.sweep.retries)
    if parallel > 1 and worker is None:
        _run_workers(plan, the_study, parallel, skip_checks)
    else:
        work(plan, the_study)
    from cvtrain.sweep.results import collect

    return collect(the_study, plan, write=worker is None)


def _worker_number(worker: int | None, *, shared: bool) -> int:
    """This worker's number, which the sampler adds to its seed: --parallel's index, the SLURM array task or the
    Kubernetes Indexed Job's index; on a shared storage without either, a number drawn from host and process."""
    if worker is not None:
        return worker
    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if shared:
        return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000
    return 0


def _metric(config: Config, where: str | None) -> str:
    """The metric to optimise: the spec's, or the task's main one; refused now when the task has no such metric."""
    from cvtrain.evaluation.coco import STAT_NAMES
    from cvtrain.tasks import TASKS

    default = TASKS[config.task].monitor.split("/", 1)[1]
    metric = config.sweep.metric or default
    if config.task == "semantic_segmentation":
        known = SEGMENTATION_METRICS
    else:
        known = ("mAP", *STAT_NAMES) + (tuple(f"segm_{name}" for name in STAT_NAMES)
                                        if config.task == "instance_segmentation" else ())
    if metric not in known:
        import difflib

        close = difflib.get_close_matches(metric, known, n=1)
        raise ConfigError(f"sweep.metric {metric!r} is not a validation metric of {config.task}", where=where,
                          hint=f"did you mean {close[0]!r}?" if close else f"metrics: {', '.join(known)}")
    return metric


def _gpus_per_trial(requested: int | None, parallel: int, config: Config) -> int | None:
    """One GPU per trial on a CUDA machine unless the spec or flags say otherwise; never more than there are."""
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    trainer = config.trainer
    if requested is None:
        untouched = trainer.gpus is None and trainer.devices == "auto" and \
            trainer.accelerator in ("auto", "gpu", "cuda")
        return 1 if available and untouched else None
    if requested < 0:
        raise ConfigError(f"--gpus-per-trial {requested} must be 0 (CPU) or more")
    if requested * parallel > available and requested > 0:
        raise ConfigError(f"--gpus-per-trial {requested} with --parallel {parallel} needs {requested * parallel} "
                          f"GPU(s); this machine has {available}", hint="lower --parallel or --gpus-per-trial")
    return requested


def _check_folder(folder: Path, study: optuna.Study) -> None:
    """A sweep folder with trial folders but a study without trials belongs to another study: refuse to mix."""
    if folder.is_dir() and any(folder.glob("trial-*")) and not study.get_trials(deepcopy=False):
        raise ConfigError("the sweep folder holds trials of another study", where=str(folder),
                          hint="give another --sweep-dir, or the --storage/--study those trials belong to")


def _write_spec(config: Config, path: Path) -> None:
    """The sweep's resolved spec (flags applied): what the workers and ``cvtrain sweep -c`` on rerun start from."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_config(config, temporary)
    os.replace(temporary, path)


def _check_dataset(config: Config, folder: Path) -> None:
    """``fit``'s dataset checks, once for the whole sweep; the report goes into the sweep folder."""
    from cvtrain.api import _check_before_fit
    from cvtrain.data.loading import build_index

    _check_before_fit(build_index(config.data, images_needed=True), config, folder)


# ------------------------------------------------------------------------------------------------- worker
def work(plan: Sweep, study: optuna.Study) -> None:
    """Run trials of ``study`` until it holds ``plan.trials`` outcomes (or the grid has run every point)."""
    optuna = require_optuna()
    from optuna.storages import fail_stale_trials

    sweep = plan.config.sweep
    objective = Objective(plan)
    heartbeat = not is_journal(plan.storage)  # build_storage gives every RDB storage a heartbeat
    waiting_said = False
    while True:
        now = counts(study)
        if now.done >= plan.trials:
            return
        grid = study.sampler
        if isinstance(grid, optuna.samplers.GridSampler) and now.waiting == 0 and now.running == 0 \
                and grid.is_exhausted(study):
            points = math.prod(len(values) for values in plan.space.grid().values())
            print(f"the grid's {points} points have all run ({now.done} trials)")
            return
        if now.done + now.running >= plan.trials:
            if not heartbeat:
                print(f"{now.running} trial(s) still running elsewhere; this worker stops (journal storage has no "
                      "heartbeat: a killed worker's trial stays 'running'; rerun with a larger --trials to replace it)")
                return
            if not waiting_said:
                print(f"waiting for {now.running} running trial(s); one whose worker was killed is run again after "
                      f"{2 * sweep.heartbeat_seconds} s without a heartbeat")
                waiting_said = True
            time.sleep(min(5.0, float(sweep.heartbeat_seconds)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
            continue
        waiting_said = False
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)


class Objective:
    """Optuna's objective: one trial, a normal ``fit`` in ``<sweep>/trial-NNN``; failures are recorded, not raised
    past the study (Optuna marks the trial failed and the sweep goes on)."""

    def __init__(self, plan: Sweep):
        self.plan = plan
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.finished = 0  # trials this process ran, for the time left
        self.first_started: float | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        optuna = require_optuna()
        plan = self.plan
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        origin = retried_from(frozen)
        run_dir = plan.sweep_dir / f"trial-{(trial.number if origin is None else origin):03d}"
        trial.set_user_attr("status", "running")
        trial.set_user_attr("worker", self.identity)
        trial.set_user_attr("run_dir", str(run_dir))
        started = time.time()
        self.first_started = self.first_started or started
        values: dict[str, Any] = {}
        try:
            values = plan.space.suggest(trial)
            config = trial_config(plan.config, values, plan.gpus_per_trial)
            resume = origin is not None and resumable(run_dir)
            print(f"trial {trial.number}: {_values(values)}" + (f" (continues trial {origin})" if origin is not None
                                                                 else ""))
            if needs_own_process(config):
                pruned = fit_in_child(config, run_dir, plan.metric, resume=resume, skip_checks=not plan.trial_checks,
                                      storage=plan.storage, study=plan.study_name,
                                      trial_id=frozen._trial_id)  # the storage id optuna.trial.Trial takes
            else:
                pruned = fit_here(config, run_dir, trial, plan.metric, resume=resume,
                                  skip_checks=not plan.trial_checks)
            outcome = read_outcome(run_dir, plan.metric, plan.config.sweep.direction)
            outcome.resumed = resume
            if pruned is not None and outcome.status == "complete":
                outcome.status, outcome.pruned_epoch = "pruned", pruned
        except Exception as error:  # a user error, a divergence, a bug or CUDA out of memory: recorded
            outcome = failure(error, run_dir)
        except BaseException:  # Ctrl-C, SIGTERM: the trial is queued again when the sweep is rerun
            trial.set_user_attr("status", "interrupted")
            raise
        outcome.seconds = round(time.time() - started, 1)
        for key, value in outcome.attributes().items():
            trial.set_user_attr(key, value)
        if outcome.status in ("complete", "pruned"):
            try:
                write_hparams(run_dir, values, outcome, plan.metric)
            except Exception as error:  # TensorBoard is a view; the trial's result stands without it
                log.warning(f"trial {trial.number}: HParams not written to TensorBoard ({error})")
        self._announce(trial, outcome)
        if outcome.status == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {outcome.pruned_epoch}")
        if outcome.status != "complete":
            raise TrialFailed(outcome.error)
        return outcome.value

    def _announce(self, trial: optuna.Trial, outcome: Outcome) -> None:
        plan = self.plan
        self.finished += 1
        done = min(counts(trial.study).done + 1, plan.trials)  # this trial is told to the study after it returns
        eta = ""
        if done < plan.trials:
            per_trial = (time.time() - self.first_started) / self.finished
            eta = f", about {_duration(per_trial * (plan.trials - done))} left"
        if outcome.status in ("complete", "pruned"):
            what = f"{plan.metric} {outcome.value:.4f} after {outcome.epochs} epoch(s)"
            if outcome.status == "pruned":
                what = f"pruned after epoch {outcome.pruned_epoch}; {what}"
        else:
            what = f"{outcome.status}: {outcome.error}"
        print(f"trial {trial.number}: {what} in {_duration(outcome.seconds)} [{done}/{plan.trials} done{eta}]")


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in values.items())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------------ parallel workers
def _run_workers(plan: Sweep, study: optuna.Study, parallel: int, skip_checks: bool) -> None:
    """Start ``parallel`` worker processes on the shared storage and show the study's progress until they end."""
    from tqdm import tqdm

    command = [sys.executable, "-m", "cvtrain", "sweep", "-c", str(plan.sweep_dir / "spec.yaml"),
               "--trials", str(plan.trials), "--sweep-dir", str(plan.sweep_dir), "--storage", plan.storage,
               "--study", plan.study_name]
    if plan.gpus_per_trial is not None:
        command += ["--gpus-per-trial", str(plan.gpus_per_trial)]
    if skip_checks:
        command.append("--skip-checks")
    workers: list[tuple[subprocess.Popen, Path]] = []
    before = counts(study).done
    try:
        for index in range(parallel):
            log_path = plan.sweep_dir / f"worker-{index}.log"
            with open(log_path, "ab") as output:
                process = subprocess.Popen(command + ["--worker-index", str(index)], stdout=output,
                                           stderr=subprocess.STDOUT, env=_worker_env(index, parallel, plan))
            workers.append((process, log_path))
        print(f"{parallel} workers started; their output: {plan.sweep_dir / 'worker-*.log'}")
        with tqdm(total=plan.trials, initial=min(before, plan.trials), desc="trials", unit="trial") as bar:
            while any(process.poll() is None for process, _ in workers):
                time.sleep(1.0)
                now = counts(study)
                bar.update(max(0, min(now.done, plan.trials) - bar.n))
                bar.set_postfix(running=now.running, refresh=True)
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.terminate()
        for process, _ in workers:
            process.wait()
    for process, log_path in workers:
        if process.returncode != 0:
            lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["(no output)"]
            print(f"a worker exited with code {process.returncode}: {lines[-1]} (see {log_path})", file=sys.stderr)


def _worker_env(index: int, parallel: int, plan: Sweep) -> dict[str, str]:
    """Each worker's own GPUs, and a fair share of the CPU threads."""
    env = dict(os.environ)
    if plan.gpus_per_trial:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        import torch

        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        share = plan.gpus_per_trial
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[index * share:(index + 1) * share])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return env


def sweep(spec: Any, overrides: Any = None, *, trials: int, data: str | os.PathLike | None = None,
          parallel: int = 1, gpus_per_trial: int | None = None, storage: str | None = None, study: str | None = None,
          sweep_dir: str | os.PathLike | None = None, skip_checks: bool = False, worker: int | None = None,
          **arguments: Any):
    """Search the spec's ``sweep.space`` with Optuna; every trial is a normal ``fit`` in ``<sweep_dir>/trial-NNN``.

    Rerunning with the same spec and folder continues the study: finished trials are kept, a trial killed
    mid-way runs again from its last checkpoint. See docs/sweep.md.

    Args:
        spec: YAML spec path, dict or ``Config`` with a ``sweep`` section.
        overrides: ``key=value`` overrides, as for ``fit`` (they apply to every trial).
        trials: trials with an outcome (complete, pruned, failed, diverged) the study should hold at the end.
        data: dataset description YAML replacing the spec's ``data`` section.
        parallel: worker processes on this machine, sharing the study through its storage.
        gpus_per_trial: GPUs per trial (default 1 on a CUDA machine); more than 1 trains each trial with DDP.
        storage: Optuna storage URL shared by workers on several machines (``postgresql://...``,
            ``journal:/shared/sweep.log``); default ``sqlite:///<sweep_dir>/study.db``.
        study: the study's name in the storage (default: the sweep folder's name).
        sweep_dir: folder of the sweep (default ``runs/<spec name>-sweep``).
        skip_checks: do not check the dataset first (by default it is checked once, for all trials).
        worker: set by ``parallel`` in the processes it starts (no checks, no result files).
        **arguments: flags applied to every trial: ``amp``, ``accelerator``, ``devices``, ``seed``,
            ``max_epochs``, ``max_steps``.

    Returns:
        ``SweepResult``: ``.trials`` (the table), ``.best``, ``.best_spec`` (``best.yaml``), ``.report``
        (``sweep.html``), ``.comparison`` (the best trial's lead against noise); a table in a notebook.

    Raises:
        ConfigError: a missing or invalid sweep section, a study started from another spec, a storage that
            cannot be opened; all before anything trains.
    """
    from cvtrain.config import load_config

    config = load_config(spec, overrides, data=data, **arguments)
    where = str(spec) if isinstance(spec, (str, os.PathLike)) else None
    return run_sweep(config, trials=trials, sweep_dir=sweep_dir, storage=storage, study=study, parallel=parallel,
                     gpus_per_trial=gpus_per_trial, skip_checks=skip_checks, worker=worker, where=where)
