"""Preloaded by the fork server that starts cvtrain's worker processes (``cvtrain.data.workers.worker_context``).

Imported there once, the data modules need no import in each worker. When the server is started by
``worker_context`` (``CVTRAIN_WORKER_SERVER`` set), it also ignores the stop signals: a Ctrl-C or SIGTERM sent to the
whole process group must not end it while the main process finishes its graceful stop, which may start workers.
Imported anywhere else, this module changes nothing.
"""
from __future__ import annotations

import os
import signal

# First, before the imports below (seconds: torch), during which a Ctrl-C to the process group would end the server.
if os.environ.pop("CVTRAIN_WORKER_SERVER", None) == "1":  # data.workers.SERVER_VARIABLE
    for _name in ("SIGHUP", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):  # data.workers.STOP_SIGNALS
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), signal.SIG_IGN)

import cvtrain.data.dataset  # noqa: E402,F401  (what workers unpickle: datasets, transforms, collate functions)
import cvtrain.data.module  # noqa: E402,F401
import cvtrain.data.transforms  # noqa: E402,F401
