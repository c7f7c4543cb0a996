"""The base of every config section."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys, NaN and infinity are refused; assignments are validated."""

    # NaN and inf are refused everywhere: a NaN learning rate is never what anyone meant.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)
