"""The search space: checked against the spec before anything trains, then sampled through Optuna.

Each dotted spec key is one Optuna parameter of the same name, so Optuna's plots and importances speak
in spec keys. Choices that Optuna cannot store (lists such as ``augment.scale: [[0.8, 1.2], [0.5, 1.5]]``)
are stored as their JSON text and turned back into values when the trial's spec is built.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvtrain.config.sweep import RangeConfig, SweepConfig
from cvtrain.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from cvtrain.config import Config

PLAIN = (type(None), bool, int, float, str)  # what Optuna's storages keep as a categorical value


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: itself when plain, else its JSON text."""
    return value if isinstance(value, PLAIN) else json.dumps(value)


@dataclass(frozen=True)
class Parameter:
    """One searched spec key."""

    key: str
    range: RangeConfig | None = None
    choices: tuple[Any, ...] = ()  # the values as written in the spec

    def grid(self) -> list[Any]:
        """Every value the grid sampler visits (as Optuna stores them)."""
        if self.range is None:
            return [encode(choice) for choice in self.choices]
        low, high, step = self.range.low, self.range.high, self.range.step
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        if self.range.is_int:
            return [int(low + i * step) for i in range(count)]
        return [float(f"{low + i * step:.12g}") for i in range(count)]

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value, drawn by the study's sampler (or fixed by an enqueued or retried trial)."""
        if self.range is None:
            chosen = trial.suggest_categorical(self.key, [encode(choice) for choice in self.choices])
            return self.decode(chosen)
        spec = self.range
        if spec.is_int:
            return trial.suggest_int(self.key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(self.key, float(spec.low), float(spec.high), log=spec.log,
                                   step=None if spec.step is None else float(spec.step))

    def decode(self, stored: Any) -> Any:
        """The spec value behind a stored parameter value."""
        if self.range is not None:
            return stored
        for choice in self.choices:
            if encode(choice) == stored:
                return choice
        raise KeyError(f"{stored!r} is not a choice of {self.key}")

    def contains(self, value: Any) -> bool:
        """True when ``value`` (as written in a spec) is one this parameter can take."""
        if self.range is None:
            return any(encode(value) == encode(choice) for choice in self.choices)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            self.range.low <= value <= self.range.high

    def ends(self) -> list[Any]:
        """Values that stand for the whole parameter when checking it against the spec."""
        return [self.range.low, self.range.high] if self.range is not None else list(self.choices)


class Space:
    """The ``sweep.space`` of a spec, as Optuna parameters.

    Args:
        sweep: the spec's ``sweep`` section.
    """

    def __init__(self, sweep: SweepConfig):
        self.parameters = [Parameter(key, entry) if isinstance(entry, RangeConfig)
                           else Parameter(key, None, tuple(entry)) for key, entry in sweep.space.items()]

    @property
    def keys(self) -> list[str]:
        return [parameter.key for parameter in self.parameters]

    def check(self, config: Config, where: str | None = None) -> None:
        """Build the spec with every end of every range and every choice, so a key or value that cannot be
        trained fails now, in milliseconds, rather than as a failed trial an hour in.

        Raises:
            ConfigError: naming the searched key, the value and what the spec says about it.
        """
        from cvtrain.config import load_config

        tree = config.model_dump(mode="json")
        for parameter in self.parameters:
            for value in parameter.ends():
                try:
                    load_config(tree, {parameter.key: value})
                except ConfigError as error:
                    raise ConfigError(f"sweep.space '{parameter.key}' = {value!r}: {error.message}", where=where,
                                      hint=error.hint) from None

    def check_enqueued(self, trials: list[dict[str, Any]], where: str | None = None) -> None:
        """Every enqueued value must lie in the space (Optuna would otherwise warn and run it anyway)."""
        by_key = {parameter.key: parameter for parameter in self.parameters}
        for number, trial in enumerate(trials):
            for key, value in trial.items():
                if not by_key[key].contains(value):
                    raise ConfigError(f"sweep.enqueue[{number}] '{key}' = {value!r} is outside the space", where=where,
                                      hint="give a value the space holds, or widen the space")

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """``{spec key: value}`` for one trial."""
        return {parameter.key: parameter.suggest(trial) for parameter in self.parameters}

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space."""
        return {parameter.key: parameter.grid() for parameter in self.parameters}

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        """Spec values as Optuna stores them (for ``enqueue_trial``)."""
        return {key: encode(value) for key, value in values.items()}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stored parameter values back to spec values (params outside the space are kept as they are)."""
        by_key = {parameter.key: parameter for parameter in self.parameters}
        return {key: by_key[key].decode(value) if key in by_key else value for key, value in params.items()}
