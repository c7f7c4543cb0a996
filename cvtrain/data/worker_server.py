"""The first module the fork server of cvtrain's worker processes imports (``cvtrain.data.workers.worker_context``),
and the home of what both sides must agree on: the stop signals and the variable that marks the server's start.

Imported with ``CVTRAIN_WORKER_SERVER=1`` (the server, started by ``worker_context``), it makes the process ignore
the stop signals, before the data modules that the server preloads next (seconds: torch): a Ctrl-C or SIGTERM sent
to the whole process group must not end the server while the main process makes its graceful stop, which may
start workers. Imported anywhere else, it changes nothing. It imports nothing heavy, so that it runs at once.
"""
from __future__ import annotations

import os
import signal

# Signals a job scheduler or a terminal sends to a whole process group or job; the main process decides about them.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))
SERVER_VARIABLE = "CVTRAIN_WORKER_SERVER"  # set while the fork server starts

if os.environ.pop(SERVER_VARIABLE, None) == "1":
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
