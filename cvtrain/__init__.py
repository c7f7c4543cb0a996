"""cvtrain: config-driven training of detectors and segmenters on PyTorch.

    import cvtrain
    result = cvtrain.fit("configs/detection/quickstart.yaml", ["train.max_epochs=2"])
    cvtrain.evaluate(checkpoint=result.best_checkpoint)
    cvtrain.check("configs/detection/quickstart.yaml")  # the dataset checks fit runs first
    cvtrain.test("configs/detection/quickstart.yaml", result.best_checkpoint)  # the spec's model tests
    cvtrain.sweep("spec_with_a_sweep_section.yaml", trials=8)  # Optuna over spec keys (docs/sweep.md)
    cvtrain.audit("configs/detection/quickstart.yaml")  # label errors found by fold models

``cvtrain.sweep`` is the function; the package behind it is imported as ``from cvtrain.sweep.runner import ...``.
"""
__version__ = "0.1.0"

# The names below are imported on first use (PEP 562), so that ``import cvtrain`` and the command line's argument
# parsing and config validation load no torch: ``cvtrain --help`` and a config error answer at once.
_LAZY = {
    "EvaluateResult": "cvtrain.api",
    "FitResult": "cvtrain.api",
    "PredictResult": "cvtrain.api",
    "audit": "cvtrain.api",
    "check": "cvtrain.api",
    "evaluate": "cvtrain.api",
    "fit": "cvtrain.api",
    "predict": "cvtrain.api",
    "test": "cvtrain.api",
    "Config": "cvtrain.config",
    "load_config": "cvtrain.config",
    "save_config": "cvtrain.config",
    "CvtrainError": "cvtrain.errors",
    "RunInterrupted": "cvtrain.errors",
    "sweep": "cvtrain.sweep.runner",  # the verb on top of fit; its package stays cvtrain.sweep.*
}


def __getattr__(name: str):
    """Import the public names of the package on first use (``cvtrain.fit`` imports torch then, not before).

    The value is kept as the attribute, also over a subpackage of the same name (``cvtrain.sweep``) that the import
    has just set: the name is the function (and the package answers a call as it does, ``cvtrain/verbs.py``).
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cvtrain' has no attribute {name!r}")
    import pkgutil

    value = globals()[name] = pkgutil.resolve_name(f"{module}:{name}")
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Config",
    "CvtrainError",
    "EvaluateResult",
    "FitResult",
    "PredictResult",
    "audit",
    "RunInterrupted",
    "check",
    "evaluate",
    "fit",
    "load_config",
    "predict",
    "save_config",
    "sweep",
    "test",
    "__version__",
]
