"""Worker processes that leave stopping to the main process.

A Ctrl-C in a terminal, ``timeout`` and SLURM send their signal to every process of the job, DataLoader workers
included. A worker that dies of it makes the main process raise ``DataLoader worker (pid ...) is killed by signal``
with a page of traceback, in the middle of the graceful stop the main process was about to make. So workers ignore
the stop signals (``ignore_stop_signals``), and the main process holds those signals back while it starts them
(``signals_held``): a signal that arrives while a worker is being forked is delivered to the main process once the
workers exist, never to a worker that has not yet set its handlers.

Workers are started by a fork server (``worker_context``), not forked from the training process: the training
process has threads (the stop watcher, progress bars, queue feeders, TensorBoard), and a fork taken while one of
them is ending can deadlock the child inside ``os.fork`` on Python before 3.12 (CPython gh-112275: the worker
never starts and training waits for it forever). The server is a single-threaded process that ignores the stop
signals (``cvtrain.data.worker_server``, its first import) and imported the data modules once, so workers start
fast and safely.
Workers left running at exit (a run that failed while its loader was starting) are killed then: they ignore the
SIGTERM with which ``multiprocessing`` would end them, and it would wait for them forever.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing.context import BaseContext

from torch.utils.data import DataLoader

from cvtrain.data.worker_server import SERVER_VARIABLE, STOP_SIGNALS

MAX_AUTO_WORKERS = 8  # beyond this the decode of a step's batch rarely gets faster, and memory grows per worker


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, as under SLURM or taskset; else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_num_workers(processes: int) -> int:
    """``train.num_workers: auto``: the cores each of ``processes`` training processes on this machine gets,
    less one for the process itself (which runs the model), at most ``MAX_AUTO_WORKERS``.

    >>> auto_num_workers(1) == min(MAX_AUTO_WORKERS, available_cores() - 1)
    True
    """
    return max(0, min(MAX_AUTO_WORKERS, available_cores() // max(1, processes) - 1))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Block the stop signals in this thread while the block runs (processes forked inside inherit the block);
    signals that arrived meanwhile are delivered when it ends. A no-op where threads have no signal masks."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(*_: object) -> None:
    """In a worker process: ignore the stop signals, then unblock them (one held back since the fork is dropped)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# The server imports these once, in this order; the first makes it ignore the stop signals before the others load.
_SERVER_PRELOAD = ["cvtrain.data.worker_server", "cvtrain.data.dataset", "cvtrain.data.module",
                   "cvtrain.data.transforms"]
_exit_hook = False


def worker_context() -> BaseContext | None:
    """The ``multiprocessing`` context for worker processes: the fork server, started now if it is not running
    (None where the platform has none, e.g. Windows: its default, spawn, is safe too)."""
    global _exit_hook
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_SERVER_PRELOAD)
    previous = os.environ.get(SERVER_VARIABLE)
    os.environ[SERVER_VARIABLE] = "1"
    try:
        with signals_held():  # the server inherits the mask: no stop signal ends it before it ignores them
            forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(SERVER_VARIABLE, None)
        else:
            os.environ[SERVER_VARIABLE] = previous
    if not _exit_hook:
        atexit.register(kill_leftover_workers)  # runs before multiprocessing's own exit hook (registered earlier)
        _exit_hook = True
    return context


def kill_leftover_workers() -> None:
    """Kill the daemonic child processes still running (workers ignore the SIGTERM ``multiprocessing`` sends)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            with contextlib.suppress(Exception):
                child.kill()
                child.join(timeout=5)


class WorkerInit:
    """A DataLoader ``worker_init_fn``: ignore the stop signals, then seed as Lightning's own would.

    Lightning adds ``pl_worker_init_function`` only to loaders without a ``worker_init_fn``, so this one calls it
    when ``seed_everything(workers=True)`` asked for it (``PL_SEED_WORKERS``).

    Args:
        rank: the process's global rank, as Lightning passes it.
    """

    def __init__(self, rank: int = 0):
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals()
        if int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning_fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)


class WorkerLoader(DataLoader):
    """A ``DataLoader`` whose worker processes come from the fork server (``worker_context``) and start with the
    stop signals held back (see ``signals_held``); ``num_workers="auto"`` (``train.num_workers``' default) is
    ``auto_num_workers(1)``.

    Its workers ignore the stop signals (``WorkerInit``; give ``worker_init_fn=WorkerInit(rank)`` under DDP).
    """

    def __init__(self, *args, num_workers: int | str = 0, **kwargs):
        workers = auto_num_workers(1) if num_workers == "auto" else num_workers
        if workers > 0:
            kwargs.setdefault("worker_init_fn", WorkerInit())
            if kwargs.get("multiprocessing_context") is None:
                kwargs["multiprocessing_context"] = worker_context()
        super().__init__(*args, num_workers=workers, **kwargs)

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        with signals_held():
            return super()._get_iterator()
