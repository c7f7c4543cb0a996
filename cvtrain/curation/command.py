"""``cvtrain check``: check a spec's dataset (or a dataset file), print the summary, write the report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
        report, name = _check(args)
    except CvtrainError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    out = Path(getattr(args, "out", None) or f"runs/check-{name}")
    report.write(out)
    print(report.summary_table())
    return report.exit_code


def _check(args: argparse.Namespace):
    from cvtrain.config import load_config, parse_override

    pairs = [parse_override(text) for text in getattr(args, "overrides", None) or []]
    checks = {key.removeprefix("checks."): value for key, value in pairs if key.startswith("checks.")}
    others = [(key, value) for key, value in pairs if not key.startswith("checks.")]
    if args.config:
        config = load_config(args.config, dict(others), data=args.data)
        base = getattr(config, "checks", None)
        name, image_size, data = config.name or Path(args.config).stem, config.train.image_size, config.data
    elif args.data:
        data = load_data_description(Path(args.data), others)
        base, name, image_size = None, Path(args.data).stem, DEFAULT_IMAGE_SIZE
        if not hasattr(data, "format"):  # --data named a whole spec
            config, data = data, data.data
            base, image_size = getattr(config, "checks", None), config.train.image_size
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
