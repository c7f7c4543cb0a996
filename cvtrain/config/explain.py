"""One line for a spec that does not validate: the key, where it was set, and the closest valid key.

``explain`` is the only place a pydantic ``ValidationError`` becomes a user's
error, for whole specs, dataset files (``section="data"``) and the checks of
``cvtrain check`` (``section="checks"``) alike.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from cvtrain.config.schema import Config
from cvtrain.errors import ConfigError, shown


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the last key of ``loc``."""
    model: Any = Config
    parts = list(loc[:-1])
    while parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        if get_origin(field.annotation) is dict and parts:
            parts.pop(0)  # the free-form key of a dict section, e.g. a split name
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is dict:
        value = get_args(annotation)[1]
        return _inner_model(value) if isinstance(value, type) and issubclass(value, BaseModel) else None
    if origin is Union or str(origin) == "types.UnionType":
        for arg in get_args(annotation):
            inner = _inner_model(arg)
            if inner is not None:
                return inner
    return None


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        inner = _inner_model(field.annotation)
        if inner is not None and get_origin(field.annotation) is not dict:
            keys.extend(_all_keys(inner, prefix + name + "."))
    return keys


def _yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the key ``loc`` in YAML ``text`` (or of its closest parent)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return line


def explain(error: ValidationError, *, source: str = "<dict>", origin: dict[str, str] | None = None,
            text: str | None = None, section: str | None = None,
            data_file: tuple[str, str] | None = None,
            earlier: dict[str, tuple[Any, str]] | None = None) -> ConfigError:
    """The first problem of ``error`` as a ``ConfigError``: ``unknown key 'train.max_epoch' ... did you mean ...``.

    Args:
        error: what pydantic raised while validating a ``Config`` or one of its sections.
        source: the file (or ``<dict>``) the values came from.
        origin: dotted key -> where it was set (an override, an argument, a ``--data`` file); wins over ``source``.
        text: the YAML text of ``source``, to name the line of the key.
        section: the section that was validated on its own (``"data"``, ``"checks"``); None for a whole spec.
        data_file: ``(path, YAML text)`` of a ``--data`` file that gave the ``data`` section, to name its line.
        earlier: dotted key -> (value, who set it: ``"the spec"``, ...) for keys an override or argument replaced:
            the hint for a bad value names what the spec said rather than the schema default.

    Returns:
        The error to raise (the caller raises it ``from None``).

    >>> from cvtrain.config.schema import TrainConfig
    >>> try:
    ...     TrainConfig.model_validate({"max_epochs": 0})
    ... except ValidationError as error:
    ...     print(explain(error, section="train", origin={"train.max_epochs": "override 'train.max_epochs=0'"},
    ...                   earlier={"train.max_epochs": (18, "the spec")}))
    override 'train.max_epochs=0': 'train.max_epochs' = 0: Input should be greater than 0 (the spec says 18)
    """
    first = error.errors()[0]
    steps = tuple(first["loc"])
    # not pydantic's own steps (function-after[...], tagged-union[...]); an unknown key is the user's, whatever it is
    kept = steps[-1:] if first["type"] == "extra_forbidden" else ()
    inner = tuple(part for part in steps[: len(steps) - len(kept)]
                  if not (isinstance(part, str) and re.match(r"(function-[a-z]+|tagged-union)\[", part))) + kept
    loc = ((section,) if section else ()) + inner
    dotted = ".".join(str(part) for part in loc)
    origin = origin or {}
    where = source
    for key, label in origin.items():
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + ".") and first["type"] == "missing":
            where = label
            if key == "data" and data_file is not None and len(inner) > 1:
                line = _yaml_line(data_file[1], inner[1:])
                where = f"{data_file[0]}:{line}" if line else where
            break
    else:
        if text is not None and inner:
            line = _yaml_line(text, inner)
            if line:
                where = f"{source}:{line}"
    hint = None
    if first["type"] == "extra_forbidden":
        holder = _model_at(loc)
        candidates = list(holder.model_fields) if holder else []
        close = difflib.get_close_matches(str(loc[-1]), candidates, n=1, cutoff=0.6)
        parent = ".".join(str(p) for p in loc[:-1])
        if close:
            hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
        else:
            anywhere = difflib.get_close_matches(
                str(loc[-1]), [k.split(".")[-1] for k in _all_keys()], n=1, cutoff=0.75
            )
            full = [
                k for k in _all_keys() if anywhere and k.endswith("." + anywhere[0]) or k == (anywhere or [None])[0]
            ]
            if full:
                hint = f"did you mean '{full[0]}'?"
            elif candidates:
                hint = f"valid keys here: {', '.join(candidates)}"
        message = f"unknown key {dotted!r}"
    elif first["type"] == "missing":
        message = f"missing required key {dotted!r}"
        hint = "see configs/ for complete specs"
    else:
        value = first.get("input")
        message = (
            f"{dotted!r} = {shown(value)}: {first['msg'].removeprefix('Value error, ')}"
            if dotted
            else first["msg"].removeprefix("Value error, ")
        )
        holder = _model_at(loc) if loc else None
        field = holder.model_fields.get(str(loc[-1])) if holder else None
        default = field.default if field is not None else None
        if dotted in (earlier or {}):  # the user replaced a value they had: name it, not the schema's default
            value, setter = (earlier or {})[dotted]
            hint = f"{setter} says {value!r}"
        elif default not in (None, PydanticUndefined):
            hint = f"the default is {default!r}"
        else:
            hint = "see configs/ for complete specs"
    return ConfigError(message, where=where, hint=hint)
