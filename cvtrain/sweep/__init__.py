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
from cvtrain.verbs import callable_package

callable_package(__name__, "cvtrain.sweep.runner:sweep")  # cvtrain.sweep(...) whichever was imported first
