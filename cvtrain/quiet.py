"""What the command line hides of its libraries: Lightning's banners and tips, known harmless warnings."""
from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Log cvtrain's messages as plain lines and silence Lightning's INFO banners and known harmless warnings."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="albumentations")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
