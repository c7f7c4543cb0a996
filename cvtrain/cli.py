"""``cvtrain fit|check|evaluate|predict``: a thin shell over ``cvtrain.api``.

User mistakes print one line (what, where, how to fix) and exit 2 without a
traceback; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from cvtrain.errors import CvtrainError, RunInterrupted


def _common(parser: argparse.ArgumentParser, *, spec_required: bool) -> None:
    parser.add_argument(
        "-c", "--config", required=spec_required, help="YAML spec (configs/{detection,instance,segmentation}/*.yaml)"
    )
    parser.add_argument("--data", help="dataset description YAML that replaces the spec's data section")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.max_epochs=3")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amp", nargs="?", const="auto", choices=["auto", "fp16", "bf16", "off"],
                        help="mixed precision: fp16 + loss scaling on CUDA (bf16 on CPU); 'fp16' or 'bf16' to choose")
    parser.add_argument("--gpus", type=int, help="number of GPUs; DDP when more than one")
    parser.add_argument("--accelerator", help="auto, cpu, gpu, cuda, mps")
    parser.add_argument(
        "--devices", type=_devices, help="devices per node (e.g. --accelerator cpu --devices 2 for DDP on gloo)"
    )
    parser.add_argument("--num-nodes", type=int, help="nodes (with torchrun or SLURM)")


def _devices(text: str):
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvtrain", description="Config-driven training for detection and segmentation."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train from a spec")
    _common(fit, spec_required=True)
    _runtime(fit)
    fit.add_argument("--run-dir", help="run directory (default runs/<spec name>[-N])")
    fit.add_argument("--seed", type=int)
    fit.add_argument("--max-epochs", type=int)
    fit.add_argument("--max-steps", type=int)
    fit.add_argument("--fast-dev-run", action="store_true", default=None, help="one training and one validation batch")
    fit.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from the run directory's newest valid checkpoint (last, periodic or best), or a given one",
    )
    fit.add_argument("--overwrite", action="store_true", help="reuse an existing --run-dir, replacing its run")
    fit.add_argument("--skip-checks", action="store_true", help="train without checking the dataset first")

    check = commands.add_parser("check", help="check a dataset: label sanity, class balance, leakage, files")
    check.add_argument("-c", "--config", help="YAML spec whose dataset and checks section to use")
    check.add_argument("--data", help="dataset description YAML (alone, or replacing the spec's data section)")
    check.add_argument("overrides", nargs="*", metavar="key=value",
                       help="checks.* keys tune the checks (checks.decode_images=false); others change the spec")
    check.add_argument("--out", help="folder for report.json and report.html (default runs/check-<name>[-N])")
    check.add_argument("--overwrite", action="store_true", help="replace what a non-empty --out holds")
    check.add_argument("--debug", action="store_true", help="show tracebacks")

    evaluate = commands.add_parser("evaluate", help="score a checkpoint: COCO stats by pycocotools, or mIoU")
    _common(evaluate, spec_required=False)
    _runtime(evaluate)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--split", help="split to score (default: data.val_split)")
    evaluate.add_argument("--out", help="folder for metrics.json (default <run>/evaluate-<split>)")

    predict = commands.add_parser("predict", help="predict on an image or a folder")
    _common(predict, spec_required=False)
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--source", required=True, help="image file or folder")
    predict.add_argument("--out", help="output folder (default runs/predict[-N])")
    predict.add_argument("--score-threshold", type=float, help="lowest score drawn on images")
    predict.add_argument("--accelerator", help="cpu or gpu")
    predict.add_argument("--overwrite", action="store_true", help="replace what a non-empty --out holds")
    return parser


def _runtime_arguments(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _print_metrics(title: str, metrics: dict, per_class: dict) -> None:
    from cvtrain.results import metric_text, per_class_lines, summary_metrics

    # pycocotools' -1: no ground truth in that size range (the quick start has no large objects): n/a
    print(title + "  " + "  ".join(f"{k} {metric_text(v)}" for k, v in summary_metrics(metrics).items()))
    for line in per_class_lines(per_class):
        print("  " + line)


def _check(args: argparse.Namespace) -> int:
    """``cvtrain check``: the API's check, its summary on stdout, the first errors on stderr, the report written."""
    import cvtrain.api as api

    report = api.check(args.config, args.overrides, data=args.data, out=args.out or "auto", overwrite=args.overwrite)
    print(report.summary_table())
    for line in report.error_lines():
        print(line, file=sys.stderr)
    return report.exit_code


def run(args: argparse.Namespace) -> int:
    """Run the parsed command through ``cvtrain.api`` and print its result; returns the exit code."""
    if args.command == "check":
        return _check(args)
    import cvtrain.api as api
    from cvtrain.engine.rundir import is_rank_zero

    runtime = ("amp", "gpus", "accelerator", "devices", "num_nodes")
    if args.command == "fit":
        result = api.fit(
            args.config,
            args.overrides,
            data=args.data,
            resume=args.resume,
            overwrite=args.overwrite,
            skip_checks=args.skip_checks,
            **_runtime_arguments(args, runtime + ("run_dir", "seed", "max_epochs", "max_steps", "fast_dev_run")),
        )
        if is_rank_zero():
            _print_metrics(f"done in {result.seconds:.0f} s; best validation:", result.metrics, result.per_class)
            print(f"best checkpoint: {result.best_checkpoint}\nrun directory:   {result.run_dir}")
        return 0
    if args.command == "evaluate":
        result = api.evaluate(
            args.config,
            args.checkpoint,
            args.overrides,
            data=args.data,
            split=args.split,
            out=args.out,
            **_runtime_arguments(args, runtime),
        )
        if is_rank_zero():
            _print_metrics(f"{result.num_images} images:", result.metrics, result.per_class)
            print(f"metrics: {result.out_dir / 'metrics.json'}")
        return 0
    if args.command == "predict":
        result = api.predict(
            args.config,
            args.checkpoint,
            args.source,
            args.out,
            args.overrides,
            overwrite=args.overwrite,
            score_threshold=args.score_threshold,
            **_runtime_arguments(args, ("accelerator",)),
        )
        if result.task == "semantic_segmentation":
            print(f"{result.num_images} images: index masks in {result.out_dir / 'masks'}, colour masks in "
                  f"{result.out_dir / 'colour'}, overlays in {result.out_dir / 'images'}; {result.predictions_file}")
        else:
            print(f"{result.num_detections} detections on {result.num_images} images: {result.predictions_file}, "
                  f"drawn images in {result.out_dir / 'images'}")
        return 0
    raise AssertionError(args.command)


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="albumentations")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _user_line(error: CvtrainError) -> str:
    """The error's one line. A DataLoader worker re-raises it with the worker's traceback as its message,
    whose last line is ``cvtrain.errors.DataError: <where>: <what> (<hint>)``."""
    text = error.one_line()
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.partition(": ")[2] or last
    return text


def main(argv: list[str] | None = None) -> int:
    """The ``cvtrain`` command: parse ``argv``, run, print one line on a user error; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return run(args)
    except RunInterrupted as stop:  # a signal stopped fit: one line (rank 0), exit 128 + the signal's number
        if not stop.quiet:
            print(stop.line, file=sys.stderr)
        return stop.exit_code
    except CvtrainError as error:
        if args.debug:
            raise
        print(f"error: {_user_line(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
