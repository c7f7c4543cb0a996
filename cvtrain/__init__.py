"""cvtrain: config-driven training of detectors and segmenters on PyTorch.

    import cvtrain
    result = cvtrain.fit("configs/detection/quickstart.yaml", ["train.max_epochs=2"])
    cvtrain.evaluate(checkpoint=result.best_checkpoint)
    cvtrain.check("configs/detection/quickstart.yaml")  # the dataset checks fit runs first
"""
__version__ = "0.1.0"

from cvtrain.api import EvaluateResult, FitResult, PredictResult, check, evaluate, fit, predict  # noqa: E402
from cvtrain.config import Config, load_config, save_config  # noqa: E402
from cvtrain.errors import CvtrainError, RunInterrupted  # noqa: E402

__all__ = [
    "Config",
    "CvtrainError",
    "EvaluateResult",
    "FitResult",
    "PredictResult",
    "RunInterrupted",
    "check",
    "evaluate",
    "fit",
    "load_config",
    "predict",
    "save_config",
    "__version__",
]
