"""Models by name: ``registry`` (the builders), ``weights`` (where pretrained files come from), ``freezing``."""
from __future__ import annotations

from cvtrain.models.registry import MODELS, ModelEntry, build_model, register_model

__all__ = ["MODELS", "ModelEntry", "build_model", "register_model"]
