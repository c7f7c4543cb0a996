"""``cvtrain sweep``: hyperparameter search on Optuna, each trial a normal ``cvtrain fit`` run.

- ``config.py``: the spec's ``sweep:`` section (search space, metric, sampler, pruner).
- ``space.py``: that space checked against the spec and turned into Optuna distributions.
- ``study.py``: storage (SQLite in the sweep folder by default), sampler, pruner, the study itself.
- ``pruning.py``: the Lightning callback reporting each validation to the trial.
- ``trial.py``: one trial: its spec, its ``fit``, what it recorded (in this process or a child one).
- ``runner.py``: the sweep: checks once, then trials until the budget is spent, in one or several workers.
- ``results.py`` and ``report.py``: the trial table, ``best.yaml``, ``sweep.json``, ``sweep.html``.

Importing this package does not import Optuna (an optional extra: ``pip install 'cvtrain[sweep]'``).
"""
from __future__ import annotations

import sys
import types


class _SweepPackage(types.ModuleType):
    """This package, callable as the function ``cvtrain.sweep`` (``cvtrain.sweep.runner.sweep``).

    ``import cvtrain`` loads its verbs on first use; importing a submodule of this package makes the package
    the attribute ``cvtrain.sweep``, so the package itself must answer a call as the function does.
    """

    def __call__(self, *args, **kwargs):
        from cvtrain.sweep.runner import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _SweepPackage
