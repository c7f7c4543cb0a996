"""Reading specs: YAML files, ``key=value`` overrides, ``--data`` dataset files and their roots.

Precedence, lowest first: schema defaults < spec file < ``--data`` dataset file
< ``key=value`` overrides < explicit API/CLI arguments. YAML is read with
``yaml.safe_load`` only, and an unknown or ill-typed key fails at load time
naming the file, the line, the key and the closest valid key.

Relative paths inside a file (``data.root``) are resolved against that file's
folder, so a spec works from any working directory; relative paths given as
overrides are resolved against the working directory.
"""
from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cvtrain.config.explain import explain
from cvtrain.config.schema import Config, DataConfig
from cvtrain.errors import ConfigError, name_problem, shown
from cvtrain.yamltext import safe_load

API_KEYS = {  # API/CLI argument -> config path
    "seed": "train.seed",
    "max_epochs": "train.max_epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "amp": "trainer.amp",
    "gpus": "trainer.gpus",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "fast_dev_run": "trainer.fast_dev_run",
    "run_dir": "run_dir",
}


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` a file; errors name the file, line and column."""
    return read_yaml_text(path)[0]


def read_yaml_text(path: Path) -> tuple[Any, str]:
    """``read_yaml`` and the file's text (which an error message reads for a key's line), from one read."""
    if not path.is_file():
        raise ConfigError("file not found", where=str(path), hint="check the path given to -c/--config or --data")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", where=str(path), hint="save the spec as UTF-8") from None
    try:
        return safe_load(text), text
    except yaml.constructor.ConstructorError as error:
        if "tag" not in (error.problem or ""):  # "found unhashable key" ({[1, 2]: x}): not a tag
            raise ConfigError(f"invalid YAML: {error.problem}", where=_at(path, error.problem_mark),
                              hint="fix the syntax at that position") from None
        raise ConfigError(f"refused YAML tag: {error.problem}", where=_at(path, error.problem_mark),
                          hint="specs are plain data; python/object tags are never executed") from None
    except yaml.YAMLError as error:
        where = _at(path, getattr(error, "problem_mark", None))
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", where=where, hint="fix the syntax at that position") from None


def _at(path: Path, mark: Any) -> str:
    """``path:line:column`` of a YAML error's mark, or the path alone."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)


def parse_override(text: str) -> tuple[str, Any]:
    """A ``key=value`` override as ``(dotted key, value)``; the value goes through ``yaml.safe_load`` (text that is
    not YAML stays a string). The key is checked when the config validates, not here.

    Raises:
        ConfigError: ``text`` is not ``key=value`` or the key has an empty part.

    >>> parse_override("train.optimizer.lr=0.01"), parse_override("augment.scale=[0.5,1.5]")
    (('train.optimizer.lr', 0.01), ('augment.scale', [0.5, 1.5]))
    >>> parse_override("train.max_epochs")
    Traceback (most recent call last):
    cvtrain.errors.ConfigError: override 'train.max_epochs' is not key=value (write e.g. train.max_epochs=3)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shown(text)} is not key=value", hint="write e.g. train.max_epochs=3")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # a plain string that is not valid YAML
    return key, value


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted == "a.b"``, creating sections on the way.

    Raises:
        ConfigError: a part of the path is a value, not a section.
    """
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {shown(dotted)}: {shown(part)} is not a section", hint="check the key")
        node = child
    node[parts[-1]] = value


def path_text(text: str, key: str, where: str | None = None) -> str:
    """``text`` if it can name a file; a NUL byte or a lone surrogate (which ``Path.resolve`` raises on) refused."""
    if name_problem(text) is None:
        return text
    raise ConfigError(f"{key} {shown(text)} is not a path (it holds a NUL byte or a lone surrogate)", where=where,
                      hint=f"write {key} as plain text: a folder's name")


def resolve_root(data: Any, base: Path, where: str | None = None) -> None:
    """Make a dataset section's ``root`` absolute: ``~`` and ``$VARS`` expanded, relative to ``base``."""
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        root = Path(os.path.expandvars(os.path.expanduser(path_text(data["root"], "data.root", where))))
        data["root"] = str(root if root.is_absolute() else (base / root).resolve())


def load_config(
    spec: str | os.PathLike | Mapping[str, Any] | Config,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    data: str | os.PathLike | None = None,
    **arguments: Any,
) -> Config:
    """Build a validated ``Config``.

    Args:
        spec: a YAML spec path, a dict, or a ``Config``.
        overrides: ``["train.optimizer.lr=0.01", ...]`` or ``{"train.optimizer.lr": 0.01}``.
        data: a dataset description YAML that replaces the spec's ``data`` section.
        **arguments: the CLI flags by name (``seed``, ``max_epochs``, ``amp``, ``gpus``, ...).

    Returns:
        The ``Config``: schema defaults < spec < ``data`` < overrides < arguments.

    Raises:
        ConfigError: one line naming the file, line, key and closest valid key.

    >>> spec = {"task": "detection", "data": {"format": "shapes", "root": "data/shapes"},
    ...         "model": {"name": "ssdlite320_mobilenet_v3_large"}}
    >>> config = load_config(spec, {"train.optimizer.lr": 0.01}, max_epochs=3)
    >>> config.train.optimizer.lr, config.train.max_epochs, config.train.batch_size
    (0.01, 3, 4)
    >>> load_config(spec, ["train.lr=0.01"])
    Traceback (most recent call last):
    cvtrain.errors.ConfigError: override 'train.lr=0.01': unknown key 'train.lr' (did you mean 'train.optimizer.lr'?)
    """
    origin: dict[str, str] = {}  # dotted key -> where it was set, for error messages
    source = "<dict>"
    text_lines: tuple[Path, str] | None = None
    data_file: tuple[str, str] | None = None
    if isinstance(spec, Config):
        tree = spec.model_dump(mode="json")
    elif isinstance(spec, Mapping):
        tree = copy.deepcopy(dict(spec))  # overrides must not reach into the caller's dict
    else:
        path = Path(spec)
        tree, text = read_yaml_text(path)
        source = str(path)
        if tree is None:
            raise ConfigError("spec is empty", where=source, hint="see configs/detection/ for examples")
        if not isinstance(tree, dict):
            raise ConfigError(f"spec is a {type(tree).__name__}, expected a mapping of sections", where=source,
                              hint="see configs/detection/ for examples")
        resolve_root(tree.get("data"), path.parent.resolve(), source)
        tree.setdefault("name", path.stem)
        text_lines = (path, text)
    if data is not None:
        data_path = Path(data)
        section, data_text = read_yaml_text(data_path)
        if not isinstance(section, dict):
            raise ConfigError("dataset file must be a mapping (format, root, splits, classes)", where=str(data_path),
                              hint="see 'Your own data' in README.md")
        resolve_root(section, data_path.parent.resolve(), str(data_path))
        tree["data"] = section
        origin["data"] = str(data_path)
        data_file = (str(data_path), data_text)
    # dotted key -> (value, who set it) before an override or argument replaced it: an error names that value
    earlier: dict[str, tuple[Any, str]] = {}

    def replace(key: str, value: Any, label: str) -> None:
        found, before = _get_path(tree, key)
        if found:
            setter = origin.get(key) or next((origin[k] for k in origin if key.startswith(k + ".")), None)
            if setter is None:
                setter = "the spec"
            elif setter.startswith(("override ", "argument ")):
                setter = "the earlier " + setter
            else:
                setter = f"the dataset file {setter}"
            earlier[key] = (before, setter)
        set_path(tree, key, value)
        origin[key] = label

    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides or ())
    for key, value in items:
        if key in ("data.root",) and isinstance(value, str):
            text = path_text(value, "data.root", f"override {shown(key + '=' + value)}")
            value = str(Path(text).expanduser().resolve())
        replace(key, value, f"override {shown(f'{key}={value}')}")
    for name, value in arguments.items():
        if value is None:
            continue
        if name not in API_KEYS:
            close = difflib.get_close_matches(name, list(API_KEYS), n=1)
            raise ConfigError(f"unknown argument {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                              hint=f"arguments: {', '.join(API_KEYS)}")
        replace(API_KEYS[name], str(value) if isinstance(value, Path) else value, f"argument {name}={value!r}")
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise explain(error, source=source, origin=origin, text=text_lines[1] if text_lines else None,
                      data_file=data_file, earlier=earlier) from None


def _get_path(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """``(True, tree["a"]["b"])`` for ``dotted == "a.b"`` when the tree sets it, else ``(False, None)``.

    >>> _get_path({"train": {"max_epochs": 18}}, "train.max_epochs"), _get_path({"train": {}}, "train.max_epochs")
    ((True, 18), (False, None))
    """
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config atomically; ``load_config(path)`` gives it back unchanged.

    >>> import tempfile
    >>> spec = {"task": "detection", "data": {"format": "shapes", "root": "/data/shapes"},
    ...         "model": {"name": "ssdlite320_mobilenet_v3_large"}}
    >>> path = Path(tempfile.mkdtemp()) / "config.yaml"
    >>> save_config(load_config(spec), path)
    >>> load_config(path) == load_config(spec)
    True
    """
    from cvtrain.atomic import write_text

    write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def load_data_description(path: Path, overrides: list[tuple[str, Any]] | None = None) -> Config | DataConfig:
    """A ``Config`` from a spec file, or a ``DataConfig`` from a dataset file (a bare ``data`` section).

    Args:
        path: the YAML file given to ``--data`` (or ``-c``).
        overrides: ``(dotted key, value)`` pairs; for a dataset file only ``data.*`` keys apply.

    Returns:
        The whole spec's ``Config`` when the file is a spec, else the dataset's ``DataConfig``.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or invalid.
    """
    tree, text = read_yaml_text(path)
    if isinstance(tree, dict) and "data" in tree and "format" not in tree:
        return load_config(path, dict(overrides or []))
    if not isinstance(tree, dict):
        raise ConfigError("dataset file must be a mapping (format, root, splits, classes)", where=str(path),
                          hint="see configs/datasets/ for examples")
    resolve_root(tree, path.parent.resolve(), str(path))
    for key, value in overrides or []:
        if not key.startswith("data."):
            raise ConfigError(f"override '{key}' does not apply to a dataset file", where=str(path),
                              hint="with --data alone, override data.* and checks.* keys")
        set_path(tree, key.removeprefix("data."), value)
    try:
        return DataConfig.model_validate(tree)
    except ValidationError as error:
        raise explain(error, source=str(path), section="data", text=text) from None


