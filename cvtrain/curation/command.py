"""``cvtrain check``: check a spec's dataset (or a dataset file), print the summary, write the report."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from cvtrain.curation.config import ChecksConfig, explain_validation
from cvtrain.curation.runner import check_dataset, load_data_description
from cvtrain.errors import ConfigError, CvtrainError

DEFAULT_IMAGE_SIZE = 512  # train.image_size's default, used when only a dataset file is given


def run_check_command(args: argparse.Namespace) -> int:
    """Run ``cvtrain check`` and return its exit code.

    Args:
        args: ``config`` (spec path or None), ``data`` (dataset YAML or None),
            ``overrides`` (``key=value`` strings; ``checks.*`` keys tune the checks,
            with only a dataset file other keys set dataset fields) and ``out``
            (output folder, default ``runs/check-<name>``).

    Returns:
        0 without errors, 1 with errors, 2 when the input is unusable.
    """
    try:
        report, name = check_spec(args.config, args.overrides, args.data)
    except CvtrainError as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    out = Path(getattr(args, "out", None) or f"runs/check-{name}")
    report.write(out)
    print(report.summary_table())
    print_errors(report)
    return report.exit_code


def print_errors(report, limit: int = 10) -> None:
    """The first errors as one line each (where, what, how to fix) on stderr; the rest are in the report."""
    errors = report.errors
    for finding in errors[:limit]:
        where = finding.location()
        print(f"error: {where + ': ' if where else ''}{finding.message} ({finding.hint})", file=sys.stderr)
    if len(errors) > limit:
        print(f"... and {len(errors) - limit} more errors in {report.path / 'report.json'}", file=sys.stderr)


def check_spec(spec: Any, overrides: Any = None, data: str | os.PathLike | None = None):
    """Check the dataset of a spec (path, dict or ``Config``) or of a dataset file alone.

    Returns:
        ``(report, name)``; ``name`` names the default output folder.
    """
    from cvtrain.config import load_config, parse_override

    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = [parse_override(text) for text in overrides or []]
    checks = {key.removeprefix("checks."): value for key, value in pairs if key.startswith("checks.")}
    others = [(key, value) for key, value in pairs if not key.startswith("checks.")]
    if spec is not None:
        config = load_config(spec, dict(others), data=data)
        stem = Path(spec).stem if isinstance(spec, (str, os.PathLike)) else "spec"
        base, name, image_size, data = config.checks, config.name or stem, config.train.image_size, config.data
    elif data is not None:
        name = Path(data).stem
        data = load_data_description(Path(data), others)
        base, image_size = None, DEFAULT_IMAGE_SIZE
        if not hasattr(data, "format"):  # --data named a whole spec
            config, data = data, data.data
            base, image_size = config.checks, config.train.image_size
    else:
        raise ConfigError("nothing to check", hint="give a spec with -c/--config or a dataset file with --data")
    return check_dataset(data, _checks_config(base, checks), image_size), name


def _checks_config(base: ChecksConfig | None, overrides: dict[str, Any]) -> ChecksConfig:
    tree = (base or ChecksConfig()).model_dump()
    tree.update(overrides)
    try:
        return ChecksConfig.model_validate(tree)
    except ValidationError as error:
        raise explain_validation(error, "checks", hint=f"keys: {', '.join(ChecksConfig.model_fields)}") from None
