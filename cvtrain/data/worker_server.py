"""Preloaded by the fork server that starts cvtrain's worker processes (``cvtrain.data.workers.worker_context``).

Imported there once, the data modules need no import in each worker. When the server is started by
``worker_context`` (``CVTRAIN_WORKER_SERVER`` set), it also ignores the stop signals: a Ctrl-C or SIGTERM sent to the
whole process group must not end it while the main process finishes its graceful stop, which may start workers.
Imported anywhere else, this module changes nothing.
"""
from __future__ import annotations

import os
import signal

import cvtrain.data.dataset  # noqa: F401  (what workers unpickle: datasets, transforms, collate functions)
import cvtrain.data.module  # noqa: F401
import cvtrain.data.transforms  # noqa: F401
import cvtrain.data.workers as workers

if os.environ.pop(workers.SERVER_VARIABLE, None) == "1":
    for number in workers.STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
