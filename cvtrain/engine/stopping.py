"""Graceful stops: a signal ends ``fit`` with a checkpoint, one line and the exit code 128 + the signal's number.

Ctrl-C (SIGINT, 130), ``timeout``/Kubernetes/SLURM pre-emption (SIGTERM, 143) and SLURM's ``--signal=USR1@90``
(SIGUSR1, 138) are the signals of ``trainer.stop_signals``. docs/reliability.md says what each does for users;
here is how:

- ``StopSignals``, a context manager around ``fit``, owns the handlers. Before training starts in a lone process
  a signal stops at once (``Stop``, a ``KeyboardInterrupt``): there is nothing to save. Once training may run, and
  in every process of a multi-process run, the handler only records the signal: a handler runs between two
  arbitrary bytecodes, where neither a checkpoint nor a collective operation is safe.
- ``StopAtSafePoint``, a callback, acts on it where the loop is consistent and the ranks are in step. At the end
  of every training batch the ranks agree (one all-reduce) whether any of them got a signal; if so, rank 0 writes
  ``last.ckpt`` through ``Trainer.save_checkpoint`` (the whole state: weights, optimizer, scaler, schedulers,
  loops, data order, RNG states, the metrics so far) exactly where a periodic checkpoint would be written, and
  every rank raises Lightning's ``SIGTERMException``. Lightning's exception path then runs the ``on_exception``
  hooks (the progress bars close), shuts the DataLoader workers down and finalizes the logger. When a validation
  follows the batch, it runs first (a checkpoint taken before it would lose it on resume); then the callback sets
  Lightning's ``received_sigterm`` on every rank, and Lightning stops right after ``ModelCheckpoint`` has written
  ``last.ckpt``. On the run's very last batch or validation nothing is stopped: the run finishes.
- ``SignalConnector`` stands in for Lightning's: Lightning's SIGTERM handler broadcasts from inside the handler
  and listens to rank 0 only, so this one registers no handler and ``received_sigterm`` is only ever set in step
  on every rank. It keeps Lightning's SLURM requeue: with ``SLURMEnvironment(auto_requeue=True)`` (the default on
  SLURM) a stop on its ``requeue_signal`` (SIGUSR1) runs Lightning's requeue handler at the safe point, whose
  checkpoint becomes ``last.ckpt`` and which requeues the job (``scontrol requeue``).
- A second signal stops at once: a thread woken through ``signal.set_wakeup_fd`` prints the line, kills the child
  processes (DataLoader workers, DDP processes) and exits, even while the main thread waits in a collective. In a
  notebook, where exiting would kill the kernel, ``Stop`` is raised in the main thread instead.

DataLoader workers ignore the stop signals (``data.workers``): only the main process decides.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvtrain.atomic import fsync_folder
from cvtrain.engine.checkpoints import CheckpointInfo, find_resume_checkpoint, validation_follows
from cvtrain.engine.rundir import fit_command, is_rank_zero, slurm_job_id
from cvtrain.errors import CheckpointError, RunInterrupted


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1."""
    return 128 + int(signum)


class Stop(KeyboardInterrupt):
    """Raised in the main thread when a signal stops ``fit`` at once (before training, or a second signal in a
    notebook)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@dataclass
class StopPoint:
    """Where a run stopped and what it left."""

    signum: int
    epoch: int | None = None  # None: before training started
    step: int | None = None
    checkpoint: Path | None = None  # the checkpoint to continue from; None when the run has none
    requeued: str | None = None  # the SLURM job requeued after the stop
    at_once: bool = False  # a second signal: stopped without saving


def stop_line(point: StopPoint, run_dir: Path | None, flags: tuple[str, ...] = ()) -> str:
    """The one line a stop prints: where, which checkpoint, and the command that continues the run."""
    where = f"at epoch {point.epoch} step {point.step}" if point.epoch is not None else "before training started"
    parts = [f"interrupted {where}" + (" (stopped at once by a second signal)" if point.at_once else "")]
    if point.checkpoint is not None and run_dir is not None:
        parts.append(f"checkpoint {point.checkpoint}")
        if point.requeued:
            parts.append(f"SLURM job {point.requeued} requeued to continue from it")
        parts.append("continue with: " + fit_command(run_dir, *flags, "--resume"))
    elif run_dir is not None and (run_dir / "config.yaml").is_file():
        parts.append("no checkpoint yet")
        parts.append("start it again with: " + fit_command(run_dir, *flags, "--overwrite"))
    else:
        parts.append("nothing was written")
    return "; ".join(parts)


def in_a_group() -> bool:
    """True in a process of a multi-process run (DDP children, torchrun, srun): a stop must wait for the others."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


class StopSignals:
    """The stop signals' handlers while ``fit`` runs (a context manager; inactive outside the main thread).

    Args:
        names: signal names (``trainer.stop_signals``).
        exit_at_once: on a second signal, exit the process from a watcher thread (default: unless in a notebook,
            where ``Stop`` is raised in the main thread instead).
    """

    def __init__(self, names: Iterable[str], *, exit_at_once: bool | None = None):
        self.signums = [int(getattr(signal, name)) for name in names if hasattr(signal, name)]
        self.first: int | None = None  # the first stop signal received (or agreed on by the ranks)
        self.deferred = in_a_group()  # record signals for the safe point instead of stopping at once
        self.exit_at_once = not _in_notebook() if exit_at_once is None else exit_at_once
        self.trainer: pl.Trainer | None = None  # set once training is being set up
        self.point: StopPoint | None = None  # set by StopAtSafePoint when it stops the run
        self.run_dir: Path | None = None
        self.flags: tuple[str, ...] = ()
        self.resumed_from: CheckpointInfo | None = None
        self.parent = os.getppid()
        self._previous: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._watching = False
        self._pipe: tuple[int, int] | None = None
        self._previous_wakeup = -1
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> StopSignals:
        if not self.signums or threading.current_thread() is not threading.main_thread():
            return self
        for number in self.signums:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handle)
        if self.exit_at_once:
            self._start_watcher()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            self._closing = True
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._stop_watcher()

    def describe(self, run_dir: Path, flags: tuple[str, ...] = (), resumed_from: CheckpointInfo | None = None) -> None:
        """What the stop line names: the run directory, the flags the continue command repeats, the resume point."""
        self.run_dir, self.flags, self.resumed_from = run_dir, flags, resumed_from

    def defer(self) -> None:
        """From now on a first signal is only recorded; ``StopAtSafePoint`` acts on it (training is starting)."""
        self.deferred = True

    # --------------------------------------------------------------- handlers
    def _handle(self, signum: int, frame: Any) -> None:
        if self.first is None:
            self.first = signum
            if not self.deferred:
                raise Stop(signum)
            return
        if not self._watching:  # with a watcher, the watcher thread exits at once
            raise Stop(signum)

    def _start_watcher(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        try:
            self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read)
            os.close(write)
            return
        self._pipe = (read, write)
        self._watching = True
        self._thread = threading.Thread(target=self._watch, args=(read,), name="cvtrain-stop-watcher", daemon=True)
        self._thread.start()

    def _stop_watcher(self) -> None:
        if self._pipe is None:
            return
        read, write = self._pipe
        self._pipe = None
        self._watching = False
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(self._previous_wakeup)
        os.close(write)  # the watcher reads end-of-file and returns
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(read)

    def _watch(self, read: int) -> None:
        seen = 0
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in self.signums:
                    seen += 1
                    if seen >= 2:
                        self._exit_at_once(number)

    def _exit_at_once(self, signum: int) -> None:
        """The second signal: print the line (rank 0), kill the children, exit. Runs in the watcher thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            if is_rank_zero():
                sys.stderr.write(stop_line(self.at_once_point(signum), self.run_dir, self.flags) + "\n")
                sys.stderr.flush()
        except BaseException:
            pass
        finally:
            self._kill_children()
            if not is_rank_zero():
                wait_for_parent(self.parent, timeout=5)
            os._exit(exit_code(signum))

    def _kill_children(self) -> None:
        launcher = getattr(getattr(self.trainer, "strategy", None), "launcher", None)
        for process in getattr(launcher, "procs", None) or []:  # DDP processes Lightning started
            with contextlib.suppress(Exception):
                process.kill()
        with contextlib.suppress(Exception):
            for child in multiprocessing.active_children():  # DataLoader workers, check pools
                child.kill()

    # ------------------------------------------------------------ the result
    def at_once_point(self, signum: int) -> StopPoint:
        """Where a run stopped without saving: the trainer's position and the newest whole checkpoint on disk."""
        epoch = step = None
        checkpoint = None
        if self.trainer is not None:
            epoch, step = self.trainer.current_epoch, self.trainer.global_step
        elif self.resumed_from is not None:
            epoch, step = self.resumed_from.epoch, self.resumed_from.global_step
        if self.run_dir is not None and is_rank_zero():
            with contextlib.suppress(CheckpointError, OSError):
                checkpoint = find_resume_checkpoint(self.run_dir, quiet=True, clean=False).path
        return StopPoint(signum, epoch, step, checkpoint, at_once=self.trainer is not None)

    def interruption(self, error: BaseException) -> RunInterrupted | None:
        """``error`` as the ``RunInterrupted`` a signal caused, or None when it is a real error."""
        if isinstance(error, RunInterrupted):
            return error
        if isinstance(error, SIGTERMException) and self.point is not None:
            point = self.point
        elif isinstance(error, Stop):
            point = self._before_training(error.signum) if self.trainer is None else self.at_once_point(error.signum)
        elif self.first is not None and isinstance(error, (KeyboardInterrupt, SystemExit, SIGTERMException)):
            point = self.at_once_point(self.first)  # Lightning turned a Stop into sys.exit(1)
        else:
            return None
        return RunInterrupted(stop_line(point, self.run_dir, self.flags), exit_code=exit_code(point.signum),
                              checkpoint=point.checkpoint, quiet=not is_rank_zero())

    def _before_training(self, signum: int) -> StopPoint:
        resumed = self.resumed_from
        if resumed is None:
            return StopPoint(signum)
        return StopPoint(signum, resumed.epoch, resumed.global_step, resumed.path)


def wait_for_parent(parent: int, timeout: float = 60.0) -> None:
    """Wait until the process ``parent`` is no longer this one's parent (it exited), at most ``timeout`` seconds.

    A DDP process Lightning started exits after the launcher: Lightning's process observer kills the launcher
    (before it prints its line) as soon as it sees a child end with a non-zero code.
    """
    deadline = time.monotonic() + timeout
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.02)


class SignalConnector(_SignalConnector):
    """Lightning's signal connector without its handlers: ``StopSignals`` owns them.

    ``received_sigterm`` is set by ``StopAtSafePoint`` on every rank at once, so Lightning's loops stop at their
    own safe points; the SLURM requeue is Lightning's (``save_and_requeue``).
    """

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self._original_handlers = {}

    def requeue_signal(self) -> int | None:
        """The signal after which Lightning's SLURM plugin requeues the job, or None (not on SLURM, or disabled)."""
        environment = self.trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            return int(environment.requeue_signal)
        return None

    def save_and_requeue(self, signum: int) -> Path:
        """Lightning's SLURM requeue handler, run at a safe point: it saves a checkpoint and (rank 0) requeues the
        job with ``scontrol requeue``. Returns the checkpoint's path (``<run>/hpc_ckpt_<n>.ckpt``)."""
        path = Path(self.trainer._checkpoint_connector.hpc_save_path(self.trainer.default_root_dir))
        self._slurm_sigusr_handler_fn(signum, None)
        return path


class StopAtSafePoint(pl.Callback):
    """Stops training where the loop is consistent once a stop signal arrived (see the module's docstring).

    Args:
        signals: the ``StopSignals`` of this ``fit``.
        run_dir: the run directory; the stop writes ``checkpoints/last.ckpt`` in it.
    """

    def __init__(self, signals: StopSignals, run_dir: Path):
        self.signals = signals
        self.checkpoint = Path(run_dir) / "checkpoints" / "last.ckpt"
        self.signum = 0  # agreed stop signal, waiting for the validation to end
        self.requeue_after = False

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        self.signals.trainer = trainer
        self.signals.defer()
        trainer._signal_connector = SignalConnector(trainer)  # Lightning registers its handlers after setup

    def _agreed(self, trainer: pl.Trainer) -> int:
        """The stop signal any rank received (the highest number), 0 when none did; a collective on every rank."""
        mine = self.signals.first or 0
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            value = torch.tensor([mine], dtype=torch.int64, device=trainer.strategy.root_device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            mine = int(value.item())
        if mine and self.signals.first is None:
            self.signals.first = mine
        return mine

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signum:
            return  # stopping after the validation that follows this batch
        signum = self._agreed(trainer)
        if not signum or _finishing(trainer):
            return
        if validation_follows(trainer):
            self.signum = signum
            return
        requeue = isinstance(trainer._signal_connector, SignalConnector) and \
            trainer._signal_connector.requeue_signal() == signum
        requeued = None
        if requeue:
            saved = trainer._signal_connector.save_and_requeue(signum)
            requeued = slurm_job_id()
            if trainer.is_global_zero:
                self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, self.checkpoint)
                fsync_folder(self.checkpoint.parent)
        else:
            trainer.save_checkpoint(self.checkpoint)
        self.signals.point = StopPoint(signum, trainer.current_epoch, trainer.global_step, self.checkpoint, requeued)
        raise SIGTERMException()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        signum = self.signum or self._agreed(trainer)
        self.signum = 0
        if not signum or _finishing(trainer):
            return
        # Lightning raises SIGTERMException once this batch's hooks are done, after ModelCheckpoint's last.ckpt
        trainer._signal_connector.received_sigterm = True
        connector = trainer._signal_connector
        self.requeue_after = isinstance(connector, SignalConnector) and connector.requeue_signal() == signum
        self.signals.point = StopPoint(signum, trainer.current_epoch, trainer.global_step, self.checkpoint,
                                       slurm_job_id() if self.requeue_after else None)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if self.requeue_after and isinstance(exception, SIGTERMException):
            # the requeue of a stop after a validation: last.ckpt is ModelCheckpoint's; the handler's copy goes
            self.requeue_after = False
            saved = trainer._signal_connector.save_and_requeue(self.signals.point.signum)
            if trainer.is_global_zero:
                saved.unlink(missing_ok=True)


def _finishing(trainer: pl.Trainer) -> bool:
    """True on the run's last training batch (and its validation): a stop there would save nothing more than the
    finished run does, so the run finishes."""
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps != -1 and trainer.global_step >= max_steps:
        return True
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    max_epochs = trainer.max_epochs
    return bool(last_batch and max_epochs is not None and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs)
