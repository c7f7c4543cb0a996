"""The command line answers before torch loads: ``--help``, argument mistakes and spec mistakes import no torch,
torchvision or Lightning; ``key=value`` overrides stand anywhere after the verb; ``--resume`` takes no override."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvtrain.cli import parse_arguments

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "detection" / "quickstart.yaml"
HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning_fabric", "albumentations", "pycocotools")


def run_in_fresh_interpreter(code: str) -> tuple[list[str], str]:
    """Run ``code`` in a fresh interpreter; returns the heavy modules it imported and what it wrote to stderr."""
    probe = f"{code}\nimport sys\nprint('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    *before, line = done.stderr.rstrip("\n").split("\n")
    assert line.startswith("HEAVY:"), done.stderr[-2000:]
    return [name for name in line[len("HEAVY:"):].split(",") if name], "\n".join(before)


def heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter and return which heavy modules it imported."""
    return run_in_fresh_interpreter(code)[0]


def test_import_and_config_validation_load_no_torch():
    assert heavy_modules_after("import cvtrain") == []
    code = ("from cvtrain.config import load_config\n"
            f"config = load_config({str(QUICKSTART)!r}, ['train.max_epochs=3', 'model.name=fcos_resnet50_fpn'])\n"
            "assert config.model.name == 'fcos_resnet50_fpn'")
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["fit", "-c", str(QUICKSTART), "train.max_epoch=3"]])
def test_help_and_spec_mistakes_answer_without_torch(argv):
    code = ("import sys\nfrom cvtrain.cli import main\n"
            f"try:\n    code = main({argv!r})\nexcept SystemExit as stop:\n    code = stop.code\n"
            "print(code, file=sys.stderr)")
    heavy, stderr = run_in_fresh_interpreter(code)
    assert heavy == []
    code_line = stderr.strip().splitlines()[-1]
    if argv[-1] == "--help":
        assert code_line == "0"
    else:
        assert code_line == "2"
        assert "unknown key 'train.max_epoch' (did you mean 'train.max_epochs'?)" in stderr


def test_overrides_stand_anywhere_after_the_verb():
    args = parse_arguments(["fit", "-c", "s.yaml", "a.b=1", "--run-dir", "runs/x", "train.max_epochs=3", "--amp"])
    assert args.overrides == ["a.b=1", "train.max_epochs=3"] and args.run_dir == "runs/x" and args.amp == "auto"


def test_resume_never_takes_an_override_for_a_checkpoint():
    args = parse_arguments(["fit", "-c", "s.yaml", "--resume", "train.max_epochs=3"])
    assert args.resume == "auto"
    assert args.overrides == ["train.max_epochs=3"]
    assert parse_arguments(["fit", "-c", "s.yaml", "--resume"]).resume == "auto"
    given = parse_arguments(["fit", "-c", "s.yaml", "--resume=runs/x/checkpoints/best.ckpt"])
    assert given.resume == "runs/x/checkpoints/best.ckpt" and given.overrides == []
    assert parse_arguments(["fit", "-c", "s.yaml", "--resume-from", "a.ckpt", "b=2"]).resume == "a.ckpt"


@pytest.mark.parametrize(("argv", "line"), [
    (["fit", "-c", "s.yaml", "a=1", "--run-dir", "r", "bogus"],
     "error: cvtrain fit: 'bogus' is neither a flag nor a key=value override (overrides are written key=value, "
     "e.g. train.max_epochs=3)"),
    # argparse would take '--max-epoch' for '--max-epochs' and start training: abbreviations are refused
    (["fit", "-c", "s.yaml", "--max-epoch", "3"], "error: cvtrain fit: unknown flag '--max-epoch' (did you mean "
                                                  "'--max-epochs'?)"),
    (["check", "--data", "d.yaml", "--outt", "x"],
     "error: cvtrain check: unknown flag '--outt' (did you mean '--out'?)"),
])
def test_a_word_that_is_neither_flag_nor_override_is_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_arguments(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize(("flags", "expected"), [
    (["--accelerator", "gpu"], "--accelerator gpu: this machine has no CUDA GPU that torch can use"),
    (["--gpus", "2"], "--gpus 2 asked for 2 GPU(s) but this machine has 0"),
    (["model.weights=missing/weights.pth"], "missing/weights.pth: weights file not found"),
])
def test_cheap_mistakes_answer_before_the_dataset_is_read_and_write_nothing(flags, expected, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: these mistakes are not mistakes here")
    spec = tmp_path / "spec.yaml"
    spec.write_text(QUICKSTART.read_text().replace("../../data/shapes", str(tmp_path / "shapes")))
    done = subprocess.run([sys.executable, "-m", "cvtrain", "fit", "-c", str(spec), *flags], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spec.yaml"]  # no run directory, no generated data


def test_verbs_that_share_a_name_with_a_package_stay_callable():
    """``cvtrain.audit`` and ``cvtrain.sweep`` are functions of the API and packages of the code: importing the
    package first (as a script or a sweep worker does) must not turn ``cvtrain.audit(...)`` into a TypeError."""
    code = ("import cvtrain.audit.scores, cvtrain.sweep.text, cvtrain\n"
            "assert callable(cvtrain.audit) and callable(cvtrain.sweep)\n"
            "for verb, extra in ((cvtrain.audit, {}), (cvtrain.sweep, {'trials': 1})):\n"
            "    try:\n        verb('no-such-spec.yaml', **extra)\n"
            "    except cvtrain.CvtrainError as error:\n        assert 'no-such-spec.yaml' in str(error), error\n"
            "    else:\n        raise AssertionError(f'{verb} ran on a spec that does not exist')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
