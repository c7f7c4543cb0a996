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

from cvtrain.api import (  # noqa: E402
    EvaluateResult,
    FitResult,
    PredictResult,
    audit,
    check,
    evaluate,
    fit,
    predict,
    test,
)
from cvtrain.config import Config, load_config, save_config  # noqa: E402
from cvtrain.errors import CvtrainError, RunInterrupted  # noqa: E402
from cvtrain.sweep.runner import sweep  # noqa: E402  (the verb on top of fit; its package stays cvtrain.sweep.*)

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
