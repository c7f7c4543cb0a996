"""Typed, validated specs: ``schema`` (the sections), ``load`` (YAML, overrides, ``--data``), ``explain`` (errors).

    from cvtrain.config import load_config
    config = load_config("configs/detection/quickstart.yaml", ["train.max_epochs=2"])
"""
from __future__ import annotations

from cvtrain.config.explain import explain
from cvtrain.config.load import (
                                 API_KEYS,
                                 load_config,
                                 load_data_description,
                                 parse_override,
                                 read_yaml,
                                 resolve_root,
                                 save_config,
                                 set_path,
)
from cvtrain.config.schema import (
                                 AugmentConfig,
                                 ChecksConfig,
                                 Config,
                                 DataConfig,
                                 EvalConfig,
                                 ModelConfig,
                                 OptimizerConfig,
                                 SchedulerConfig,
                                 SplitConfig,
                                 StrictModel,
                                 Task,
                                 TrainConfig,
                                 TrainerConfig,
)

__all__ = ["API_KEYS", "AugmentConfig", "ChecksConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig",
           "OptimizerConfig", "SchedulerConfig", "SplitConfig", "StrictModel", "Task", "TrainConfig", "TrainerConfig",
           "explain", "load_config", "load_data_description", "parse_override", "read_yaml", "resolve_root",
           "save_config", "set_path"]
