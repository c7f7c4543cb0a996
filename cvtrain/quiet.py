"""What the command line hides of its libraries: Lightning's banners and tips, known harmless warnings."""
from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries(configure_logging: bool = True) -> None:
    """Silence Lightning's INFO banners and tips ("GPU available", the logger advert) and known harmless warnings.

    Args:
        configure_logging: also log cvtrain's messages as plain lines (the command line); the Python API, which
            must not reconfigure a notebook's logging, passes False.
    """
    if configure_logging:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="albumentations")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # cvtrain logs every trainer.log_every_n_steps and at every validation; short epochs are not a mistake
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
