"""The Optuna study behind a sweep: its storage, sampler and pruner, and how many trials it still needs.

Optuna's storage is the only coordination between workers: each worker asks the storage for a trial,
runs it and tells the storage how it ended, so any number of workers on any number of machines can share
one study. RDB storages (SQLite, PostgreSQL, MySQL) run with Optuna's heartbeat: a trial whose worker
died is failed after two silent heartbeats and queued again with the same parameters
(``RetryHeartbeatStaleTrialCallback``), up to ``sweep.retries`` times.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtrain.config.sweep import SweepConfig
from cvtrain.errors import ConfigError
from cvtrain.sweep.space import Space

if TYPE_CHECKING:
    import optuna

    from cvtrain.config import Config

SPEC_ATTR = "cvtrain_spec"  # study user attribute: the spec the study was started from (flattened)
FINAL = ("complete", "pruned", "failed", "diverged")  # trial outcomes that spend the budget
# Keys that may differ between the machines and reruns of one study: where data and runs live, the
# devices and precision, the dataset check settings.
LOCAL_KEYS = ("data.root", "run_dir", "name", "trainer", "checks")


def require_optuna():
    """Import Optuna, or say how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("cvtrain sweep needs Optuna, which is not installed",
                          hint="pip install 'cvtrain[sweep]'") from None
    return optuna


def default_storage(sweep_dir: Path) -> str:
    """SQLite in the sweep folder: nothing to set up, resumable, safe for the workers of one machine."""
    return f"sqlite:///{sweep_dir.resolve() / 'study.db'}"


def is_journal(url: str) -> bool:
    """``journal:<file>`` (or a path ending in ``.log``): Optuna's journal file, for shared file systems."""
    return url.startswith("journal:") or ("://" not in url and url.endswith(".log"))


def shown(url: str) -> str:
    """The storage URL without its password, for messages."""
    if is_journal(url):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def build_storage(url: str, sweep: SweepConfig):
    """An Optuna storage for ``url``.

    Raises:
        ConfigError: the URL cannot be opened (driver missing, server unreachable, bad syntax).
    """
    optuna = require_optuna()
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if is_journal(url):
                path = Path(url.removeprefix("journal:")).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                return JournalStorage(JournalFileBackend(str(path)))
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # SQLite: several workers write to one file; wait for the lock rather than fail after 5 s.
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat_seconds,
                              grace_period=2 * sweep.heartbeat_seconds,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=sweep.retries, inherit_intermediate_values=True))
        except ImportError as error:
            raise ConfigError(f"cannot open storage {shown(url)}: {error}",
                              hint="install the database driver (psycopg2-binary for PostgreSQL, pymysql for MySQL)")\
                from None
        except Exception as error:  # SQLAlchemy's errors: bad URL, server down, no permission
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"cannot open storage {shown(url)}: {first[:200]}",
                              hint="check --storage (e.g. postgresql://user@host/db, sqlite:///path.db, "
                                   "journal:/shared/path.log)") from None


def build_sampler(sweep: SweepConfig, space: Space, worker: int = 0):
    """The spec's sampler. Workers other than the first add their index to the seed: with the same seed
    and the same history, two workers would propose the same trial at the same moment."""
    optuna = require_optuna()
    spec = sweep.sampler
    seed = None if spec.seed is None else spec.seed + worker
    if spec.name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=spec.seed)  # the grid's order is the study's
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


def build_pruner(sweep: SweepConfig):
    """The spec's pruner; a trial's steps are its validation epochs."""
    optuna = require_optuna()
    spec = sweep.pruner
    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
    if spec.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs,
                                                      reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists stay values)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def spec_fingerprint(config: Config) -> dict[str, Any]:
    """What must stay the same across the workers and reruns of one study."""
    flat = flatten(config.model_dump(mode="json"))
    return {key: value for key, value in flat.items()
            if not any(key == local or key.startswith(local + ".") for local in LOCAL_KEYS)}


def open_study(config: Config, storage, name: str, space: Space, *, worker: int = 0,
               where: str | None = None) -> optuna.Study:
    """Create the study, or load it when it exists and was started from the same spec.

    A new study gets the spec's ``sweep.enqueue`` trials first.

    Raises:
        ConfigError: the study exists but was started from another spec (another space, metric, schedule...).
    """
    optuna = require_optuna()
    sweep = config.sweep
    study = optuna.create_study(storage=storage, study_name=name, direction=sweep.direction,
                                sampler=build_sampler(sweep, space, worker), pruner=build_pruner(sweep),
                                load_if_exists=True)
    mine = spec_fingerprint(config)
    recorded = study.user_attrs.get(SPEC_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_ATTR, json.dumps(mine, sort_keys=True, default=str))
        for values in sweep.enqueue:
            # skip_if_exists: workers of a job array may all create the study at the same moment
            study.enqueue_trial(space.stored(values), skip_if_exists=True)
        return study
    if study.direction.name.lower() != sweep.direction:
        raise ConfigError(f"study {name!r} maximises or minimises otherwise than sweep.direction={sweep.direction}",
                          where=where, hint="start a new sweep with another --sweep-dir or --study")
    before = json.loads(recorded)
    for key in sorted(set(before) | set(mine)):
        if before.get(key) != mine.get(key):
            raise ConfigError(f"study {name!r} was started from another spec: '{key}' was {before.get(key)!r}, "
                              f"now {mine.get(key)!r}", where=where,
                              hint="put the spec back to continue it, or start a new sweep with another --sweep-dir")
    return study


def retried_from(trial) -> int | None:
    """The killed trial a trial runs again (Optuna's ``RetryHeartbeatStaleTrialCallback.retried_trial_number``)."""
    optuna = require_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


@dataclass
class Counts:
    """Where a study stands against its budget."""

    done: int  # trials with an outcome: complete, pruned, failed or diverged
    running: int
    waiting: int  # queued: enqueued, or a killed trial to run again


def counts(study: optuna.Study) -> Counts:
    """How many trials are done, running and waiting. A trial killed with its worker is neither: it is queued
    again (heartbeat) or, past ``sweep.retries``, replaced by a new one."""
    from optuna.trial import TrialState

    done = running = waiting = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            running += 1
        elif trial.state == TrialState.WAITING:
            waiting += 1
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or trial.user_attrs.get("status") in FINAL:
            done += 1
    return Counts(done, running, waiting)


def requeue_interrupted(study: optuna.Study, retries: int) -> int:
    """Queue again the trials stopped by Ctrl-C or a SIGTERM (Optuna fails them at once; a killed worker's are
    queued by the heartbeat instead). Returns how many were queued."""
    optuna = require_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    queued = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {number for trial in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(trial)}
        again = RetryHeartbeatStaleTrialCallback(max_retry=retries, inherit_intermediate_values=True)
        for trial in trials:
            if trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "interrupted" \
                    and trial.number not in retried:
                again(study, trial)
                queued += 1
    return queued
