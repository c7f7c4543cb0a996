"""Worker processes that leave stopping to the main process.

A Ctrl-C in a terminal, ``timeout`` and SLURM send their signal to every process of the job, DataLoader workers
included. A worker that dies of it makes the main process raise ``DataLoader worker (pid ...) is killed by signal``
with a page of traceback, in the middle of the graceful stop the main process was about to make. So workers ignore
the stop signals (``ignore_stop_signals``), and the main process holds those signals back while it starts them
(``signals_held``): a signal that arrives while a worker is being forked is delivered to the main process once the
workers exist, never to a worker that has not yet set its handlers.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from torch.utils.data import DataLoader

# Signals a job scheduler or a terminal sends to a whole process group or job; the main process decides about them.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


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
    """A ``DataLoader`` whose worker processes start with the stop signals held back (see ``signals_held``).

    Give it ``worker_init_fn=WorkerInit(rank)`` so that the workers then ignore them.
    """

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        with signals_held():
            return super()._get_iterator()
