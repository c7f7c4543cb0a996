"""``cvtrain fit|sweep|check|audit|evaluate|test|predict|convert|export``: a thin shell over ``cvtrain.api``.

User mistakes print one line (what, where, how to fix) and exit 2 without a
traceback; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import re
import sys
from pathlib import Path

from cvtrain.errors import CvtrainError, RunInterrupted
from cvtrain.quiet import quiet_libraries


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


def _severities(text: str) -> list[int]:
    """``1-5``, ``3`` or ``1,3,5``."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            values = list(range(low, high + 1))
        else:
            values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a severity list (e.g. 1-5, 3 or 1,3,5)") from None
    if not values or any(v not in (1, 2, 3, 4, 5) for v in values):
        raise argparse.ArgumentTypeError(f"severities are 1 to 5, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``cvtrain`` argument parser: one subcommand per verb of the API."""
    parser = argparse.ArgumentParser(
        prog="cvtrain", description="Config-driven training for detection and segmentation.", allow_abbrev=False
    )
    # No abbreviations: argparse would read '--max-epoch 3' as '--max-epochs 3' and start training
    verb_parser = functools.partial(argparse.ArgumentParser, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=verb_parser)

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
        help="continue from the run directory's newest valid checkpoint (last, periodic or best), or --resume=PATH",
    )
    fit.add_argument("--resume-from", metavar="PATH", help="continue from this checkpoint (the same as --resume=PATH)")
    fit.add_argument("--overwrite", action="store_true", help="reuse an existing --run-dir, replacing its run")
    fit.add_argument("--skip-checks", action="store_true", help="train without checking the dataset first")

    sweep = commands.add_parser("sweep", help="search hyperparameters with Optuna, each trial a fit (docs/sweep.md)")
    _common(sweep, spec_required=True)
    sweep.add_argument("--trials", type=int, required=True,
                       help="trials with an outcome the study should hold; rerun the command to continue it")
    sweep.add_argument("--parallel", type=int, default=1, help="worker processes on this machine (default 1)")
    sweep.add_argument("--gpus-per-trial", type=int, help="GPUs per trial (default 1 on a CUDA machine; >1: DDP)")
    sweep.add_argument("--storage", help="Optuna storage shared by workers: postgresql://..., journal:/shared/x.log "
                                         "(default sqlite in the sweep folder)")
    sweep.add_argument("--study", help="study name in the storage (default: the sweep folder's name)")
    sweep.add_argument("--sweep-dir", help="sweep folder (default runs/<spec name>-sweep)")
    sweep.add_argument("--skip-checks", action="store_true", help="do not check the dataset first")
    sweep.add_argument("--amp", nargs="?", const="auto", choices=["auto", "fp16", "bf16", "off"],
                       help="mixed precision for every trial, as for fit")
    sweep.add_argument("--accelerator", help="auto, cpu, gpu, cuda, mps")
    sweep.add_argument("--devices", type=_devices, help="devices per trial (e.g. --accelerator cpu --devices 2)")
    sweep.add_argument("--seed", type=int)
    sweep.add_argument("--max-epochs", type=int)
    sweep.add_argument("--max-steps", type=int)
    sweep.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --parallel in its workers

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
    _model_source(evaluate, required=False)  # or --compare CKPT_A CKPT_B
    evaluate.add_argument("--split", help="split to score (default: data.val_split)")
    evaluate.add_argument("--out", help="folder for metrics.json (default <run>/evaluate-<split>)")
    evaluate.add_argument("--corruptions", nargs="*", metavar="NAME",
                          help="also score under common corruptions: names or noise, blur, weather, digital "
                               "(alone: all 15); writes robustness.json/.html")
    evaluate.add_argument("--severities", type=_severities, help="corruption severities: 1-5 (default), 3, 1,3,5")
    evaluate.add_argument("--compare", nargs=2, metavar=("CKPT_A", "CKPT_B"),
                          help="score two checkpoints on the same images: the paired difference B - A and its "
                               "95 %% bootstrap interval")
    evaluate.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals "
                                                                      "(0: none)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the resamples and of the corruption noise")

    test = commands.add_parser("test", help="run the spec's model tests (flip, brightness, background, removal, "
                                            "corruption, slices); exit 1 when one fails")
    _common(test, spec_required=False)
    test.add_argument("--checkpoint", required=True)
    test.add_argument("--split", help="split to test on (default: data.val_split)")
    test.add_argument("--out", help="folder for tests.json, junit.xml, tests.html (default <run>/test-<split>)")
    test.add_argument("--accelerator", help="cpu or gpu")

    audit = commands.add_parser("audit", help="find label errors with fold models: swapped, badly located, missing, "
                                              "spurious annotations")
    _common(audit, spec_required=False)
    _runtime(audit)
    audit.add_argument("--checkpoint", help="score with this model instead of training folds (in-sample scores "
                                            "where it trained on the images)")
    audit.add_argument("--folds", type=int, help="K fold models (audit.folds, default 4)")
    audit.add_argument("--max-epochs", type=int, help="epochs of each fold model (audit.max_epochs)")
    audit.add_argument("--seed", type=int)
    audit.add_argument("--out", help="folder for audit.json, audit.csv, audit.html (default runs/audit-<name>[-N])")
    audit.add_argument("--suggest", metavar="COCO_JSON", help="also write a corrected COCO copy there, for review")
    audit.add_argument("--resume", action="store_true", help="write into a used --out, reusing finished fold models")
    audit.add_argument("--overwrite", action="store_true", help="write into a used --out, training every fold again")
    audit.add_argument("--skip-checks", action="store_true", help="audit without checking the dataset first")

    predict = commands.add_parser("predict", help="predict on an image or a folder")
    _common(predict, spec_required=False)
    _model_source(predict)
    predict.add_argument("--source", required=True, help="image file or folder")
    predict.add_argument("--out", help="output folder (default runs/predict[-N])")
    predict.add_argument("--score-threshold", type=float, help="lowest score drawn on images")
    predict.add_argument("--accelerator", help="cpu or gpu")
    predict.add_argument("--overwrite", action="store_true", help="replace what a non-empty --out holds")

    convert = commands.add_parser("convert", help="write a dataset as COCO, VOC, YOLO or KITTI")
    convert.add_argument("--data", required=True, help="dataset description YAML (or a spec) of the input")
    convert.add_argument("--to", required=True, choices=["coco", "voc", "yolo", "kitti"], help="format to write")
    convert.add_argument("--out", required=True, help="new or empty output folder")
    convert.add_argument("--images", choices=["copy", "link", "symlink", "none"], default="copy",
                         help="how image files get there: copy (default), link (hard links where possible), "
                              "symlink, none")
    convert.add_argument("--segments", action="store_true", help="YOLO: write polygons as segmentation lines")
    convert.add_argument("overrides", nargs="*", metavar="key=value", help="data.* overrides of the input description")
    convert.add_argument("--debug", action="store_true", help="show tracebacks")
    export = commands.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch by onnxruntime")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--out", help="file to write (default <run>/export/<checkpoint name>.onnx)")
    export.add_argument("--opset", type=int, help="ONNX opset, 11 to 20 (default 17)")
    size = export.add_mutually_exclusive_group()
    size.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), help="fix the input's height and width")
    size.add_argument("--dynamic-size", action="store_true", help="dynamic height and width (the default)")
    export.add_argument(
        "--batch", type=int, help="fix the batch (detection and instance: 1 unless given; semantic: dynamic)"
    )
    export.add_argument("--images", help="image file or folder for the parity check (default: the validation images)")
    export.add_argument("--verify", metavar="ONNX", help="check an existing export against the checkpoint instead")
    export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    export.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _model_source(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", help="a .ckpt written by cvtrain fit")
    source.add_argument("--model", help="an .onnx file written by cvtrain export, run by onnxruntime")


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
    runtime = ("amp", "gpus", "accelerator", "devices", "num_nodes")
    if args.command == "fit":
        from cvtrain.config import load_config

        # The spec is read and validated before torch and Lightning are imported: a mistake in it answers at once.
        config = load_config(args.config, args.overrides, data=args.data, **_runtime_arguments(
            args, runtime + ("run_dir", "seed", "max_epochs", "max_steps", "fast_dev_run")))
    import cvtrain.api as api
    from cvtrain.engine.rundir import is_rank_zero

    if args.command == "fit":
        result = api.fit(config, resume=args.resume, overwrite=args.overwrite, skip_checks=args.skip_checks)
        if is_rank_zero():
            from cvtrain.evaluation.report import baseline_lines

            _print_metrics(f"done in {result.seconds:.0f} s; best validation:", result.metrics, result.per_class)
            print("\n".join(baseline_lines(result.metrics)))
            if result.run_dir is None:
                print("fast dev run: nothing kept (give --run-dir to keep its files)")
            else:
                best = result.best_checkpoint or ("none (a fast dev run writes no checkpoints)"
                                                  if config.trainer.fast_dev_run else "none (no validation completed)")
                print(f"best checkpoint: {best}\nrun directory:   {result.run_dir}")
        return 0
    if args.command == "sweep":
        from cvtrain.sweep.runner import sweep

        result = sweep(args.config, args.overrides, trials=args.trials, data=args.data, parallel=args.parallel,
                           gpus_per_trial=args.gpus_per_trial, storage=args.storage, study=args.study,
                           sweep_dir=args.sweep_dir, skip_checks=args.skip_checks, worker=args.worker_index,
                           **_runtime_arguments(args, ("amp", "accelerator", "devices", "seed", "max_epochs",
                                                       "max_steps")))
        if args.worker_index is not None:
            return 0
        print(f"\n{result.table()}\n")
        if result.best is None:
            print(f"no trial completed; the table and report: {result.report}", file=sys.stderr)
            return 1
        _print_metrics(f"best: trial {result.best.number}, validation:", result.best.metrics, {})
        if result.comparison:
            print(result.comparison)
        print(f"best spec: {result.best_spec}   (cvtrain fit -c {result.best_spec})\n"
              f"report:    {result.report}\ntrials:    {result.summary}")
        return 0
    if args.command == "evaluate":
        from cvtrain.evaluation.report import evaluation_lines

        if sum(map(bool, (args.checkpoint, args.model, args.compare))) != 1:
            raise CvtrainError("give --checkpoint CKPT, --model MODEL.onnx, or --compare CKPT_A CKPT_B",
                               hint="cvtrain evaluate --checkpoint runs/x/checkpoints/best.ckpt")
        first, second = args.compare if args.compare else (args.checkpoint or "", None)
        result = api.evaluate(args.config, first, args.overrides, data=args.data, split=args.split, out=args.out,
                              corruptions=args.corruptions, severities=args.severities, compare=second,
                              resamples=args.resamples, seed=args.seed, model=args.model,
                              **_runtime_arguments(args, runtime))
        if is_rank_zero():
            _print_metrics(f"{result.num_images} images:", result.metrics, result.per_class)
            print("\n".join(evaluation_lines(result)))
            print(f"({result.runtime}, {result.images_per_second:.1f} images/s)")
        return 0
    if args.command == "test":
        result = api.test(args.config, args.checkpoint, args.overrides, data=args.data, split=args.split,
                          out=args.out, **_runtime_arguments(args, ("accelerator",)))
        print(result.summary_table())
        print(f"report: {result.out_dir / 'tests.json'}, {result.out_dir / 'junit.xml'}")
        return result.exit_code
    if args.command == "audit":
        result = api.audit(args.config, args.overrides, data=args.data, checkpoint=args.checkpoint, out=args.out,
                           suggest=args.suggest, folds=args.folds, max_epochs=args.max_epochs, resume=args.resume,
                           overwrite=args.overwrite, skip_checks=args.skip_checks,
                           **_runtime_arguments(args, runtime + ("seed",)))
        if result is None:  # another rank of a distributed run: rank 0 reports
            return 0
        counts = ", ".join(f"{kind} {c['flagged']}" for kind, c in result.by_kind.items() if c["records"])
        print(f"audit of {result.num_images} images, {result.num_annotations} annotations in {result.seconds:.0f} s: "
              f"{result.flagged} flagged ({counts})")
        if result.warning:
            print(f"note: {result.warning}")
        if result.weak_classes:
            from cvtrain.audit.report import weak_class_note

            print(f"note: {weak_class_note(result.weak_classes, result.set_aside)}")
        for row in result.top[:5]:
            given = (row["given"] or {}).get("category") or "-"
            print(f"  {row['score']:.3f} {row['kind']:<13} {row['file_name']} annotation {row['annotation_id']}: "
                  f"{given} -> {row['suggested']['action']} {row['suggested'].get('category') or ''}".rstrip())
        print(f"report: {result.html_file}\nrecords: {result.audit_file}, flagged for relabelling: {result.csv_file}")
        return 0
    if args.command == "predict":
        result = api.predict(args.config, args.checkpoint or "", args.source, args.out, args.overrides,
                             overwrite=args.overwrite, score_threshold=args.score_threshold, model=args.model,
                             **_runtime_arguments(args, ("accelerator",)))
        if result.task == "semantic_segmentation":
            print(f"{result.num_images} images: index masks in {result.out_dir / 'masks'}, colour masks in "
                  f"{result.out_dir / 'colour'}, overlays in {result.out_dir / 'images'}; {result.predictions_file}")
        else:
            print(f"{result.num_detections} detections on {result.num_images} images: {result.predictions_file}")
            if result.num_drawn:
                print(f"{result.num_drawn} at score >= {result.score_threshold:g} drawn in {result.out_dir / 'images'}")
            else:
                print(f"none at score >= {result.score_threshold:g}: the images in {result.out_dir / 'images'} show "
                      "no box (lower --score-threshold to see weaker ones)")
        if result.skipped:
            print(f"skipped {len(result.skipped)} unreadable image(s), listed with their errors in "
                  f"{result.out_dir / 'skipped.json'}", file=sys.stderr)
        print(f"{result.runtime}: {result.images_per_second:.1f} images/s")
        return 0
    if args.command == "convert":
        result = api.convert(args.data, args.to, args.out, args.overrides, images=args.images, segments=args.segments)
        print(f"wrote {result.images} images and {result.annotations} annotations as {result.format} to {result.out}; "
              f"read it with: cvtrain check --data {result.dataset_file}")
        print("not carried over:" + "".join(f"\n  {line}" for line in result.lost) if result.lost
              else "not carried over: nothing")
        return 0
    if args.command == "export":
        return _export(args, api)
    raise AssertionError(args.command)


def _export(args: argparse.Namespace, api) -> int:
    """Export (or ``--verify``), print the parity table and verdict; a failed parity check exits 1."""
    from cvtrain.export.workflow import ParityError

    try:
        result = api.export(args.checkpoint, args.out, format=args.format, opset=args.opset, image_size=args.image_size,
                            dynamic_size=args.dynamic_size, batch=args.batch, images=args.images, verify=args.verify,
                            overwrite=args.overwrite)
    except ParityError as error:
        print(error.result.parity.table())
        print(error.result.parity.summary())
        raise
    print(result.parity.table())
    print(result.parity.summary())
    made = f"exported in {result.seconds:.1f} s, opset {result.opset}, " if result.opset else ""
    print(f"{result.path}: {made}input {result.input.describe()}, {result.size_bytes / 2**20:.1f} MB; "
          f"parity report {result.parity_file}")
    return 0


def _user_line(error: CvtrainError) -> str:
    """The error's one line. A DataLoader worker re-raises it with the worker's traceback as its message,
    whose last line is ``cvtrain.errors.DataError: <where>: <what> (<hint>)``."""
    text = error.one_line()
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.partition(": ")[2] or last
    return text


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*=")  # a key=value override


def _refuse_words(parser: argparse.ArgumentParser, command: str, words: list[str]) -> None:
    """One line for the first word argparse did not take: an unknown flag (with the closest one) or a stray word."""
    verb = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[command]
    flags = [flag for action in verb._actions for flag in action.option_strings if flag.startswith("--")]
    word = words[0]
    if word.startswith("-"):
        close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"'cvtrain {command} --help' lists the flags"
        line = f"error: cvtrain {command}: unknown flag {word!r} ({hint})"
    else:
        line = (f"error: cvtrain {command}: {word!r} is neither a flag nor a key=value override "
                "(overrides are written key=value, e.g. train.max_epochs=3)")
    print(line, file=sys.stderr)
    raise SystemExit(2)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere after the verb, also after a flag
    (``--run-dir runs/x train.max_epochs=3``), and ``--resume`` never takes an override for a checkpoint path.

    Raises:
        SystemExit: argparse's usage error (exit 2), e.g. for a word that is neither a flag nor ``key=value``.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [word for word in extra if not OVERRIDE.match(word)]
    if unknown or (extra and not hasattr(args, "overrides")):
        _refuse_words(parser, args.command, unknown or extra)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and OVERRIDE.match(resume) and not Path(resume).exists():
        args.overrides.append(resume)  # "--resume train.max_epochs=3": the override is not a checkpoint
        args.resume = "auto"
    if getattr(args, "resume_from", None):
        if resume not in (None, args.resume_from):
            parser.error("give --resume or --resume-from PATH, not both")
        args.resume = args.resume_from
    return args


def main(argv: list[str] | None = None) -> int:
    """The ``cvtrain`` command: parse ``argv``, run, print one line on a user error; returns the exit code."""
    args = parse_arguments(argv)
    quiet_libraries()
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
