"""The spec's ``sweep`` section: what ``cvtrain sweep`` searches, by which metric, with which sampler and pruner.

```yaml
sweep:
  metric: mAP                  # default: the task's main validation metric (mAP, or mIoU)
  space:                       # any spec key, dotted
    train.optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}   # float range (log scale)
    train.batch_size: {low: 4, high: 16, step: 4}                 # int range (both ends ints)
    model.name: [ssdlite320_mobilenet_v3_large, fasterrcnn_mobilenet_v3_large_fpn]   # choices
    augment.scale: [[0.8, 1.2], [0.5, 1.5]]                       # choices may be lists
  sampler: tpe                 # tpe | random | grid, or {name: tpe, seed: 0, startup_trials: 10}
  pruner: median               # median | successive_halving | none, or {name: median, startup_trials: 3, ...}
```
The space is checked against the rest of the spec when the sweep starts (``space.py``), before anything trains.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cvtrain.config.base import StrictModel


class RangeConfig(StrictModel):
    """A numeric range; integers when ``low``, ``high`` (and ``step``) are all integers."""

    low: int | float
    high: int | float
    log: bool = False  # sample on a log scale (low must be > 0)
    step: int | float | None = Field(None, gt=0)  # a grid of low, low + step, ... up to high; not with log

    @model_validator(mode="after")
    def _consistent(self) -> RangeConfig:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range takes log or step, not both")
        return self

    @property
    def is_int(self) -> bool:
        """True when every bound is an integer: the trial gets an ``int``."""
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))


class SamplerConfig(StrictModel):
    """Which Optuna sampler proposes the trials."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = 0  # the same proposals on every rerun; parallel workers add their index to it
    startup_trials: int = Field(10, ge=0)  # tpe: trials drawn at random before TPE models the space


class PrunerConfig(StrictModel):
    """Which Optuna pruner stops unpromising trials after a validation."""

    name: Literal["median", "successive_halving", "none"] = "median"
    startup_trials: int = Field(3, ge=0)  # median: trials that finish before any is pruned
    warmup_epochs: int = Field(0, ge=0)  # median: validations a trial runs before it can be pruned
    min_epochs: int = Field(1, ge=1)  # successive_halving: epochs before the first rung
    reduction_factor: int = Field(3, ge=2)  # successive_halving: 1 / fraction of trials kept at each rung


class SweepConfig(StrictModel):
    """The search of ``cvtrain sweep`` (see docs/sweep.md)."""

    space: dict[str, RangeConfig | list[Any]]  # dotted spec key -> {low, high[, log, step]} or a list of values
    metric: str | None = None  # validation metric to optimise (a key of metrics.json); default: the task's
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)  # trials to run first, e.g. the values you trust
    retries: int = Field(1, ge=0)  # times a trial killed mid-way is run again (it resumes from its checkpoint)
    heartbeat_seconds: int = Field(60, ge=1)  # a trial silent for twice this long is taken as killed

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `sampler: grid` for {name: grid}

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("the space is empty: name at least one spec key, e.g. train.optimizer.lr")
        for key, entry in value.items():
            if isinstance(entry, list) and not entry:
                raise ValueError(f"'{key}' has no values")
            if key == "sweep" or key.startswith("sweep.") or key in ("run_dir", "name"):
                raise ValueError(f"'{key}' cannot be searched")
        return value

    @model_validator(mode="after")
    def _grid_and_queue(self) -> SweepConfig:
        if self.sampler.name == "grid":
            for key, entry in self.space.items():
                if isinstance(entry, RangeConfig) and entry.step is None:
                    raise ValueError(f"the grid sampler needs values or a step for '{key}' "
                                     "(a list, or {low, high, step})")
            if self.enqueue:
                raise ValueError("enqueue does not combine with the grid sampler, which runs every point once")
        for number, trial in enumerate(self.enqueue):
            unknown = sorted(set(trial) - set(self.space))
            if unknown:
                raise ValueError(f"enqueue[{number}] sets '{unknown[0]}', which is not in the space")
        return self
