"""Every example in a docstring of the package runs and prints what it says (``doctest`` over every module)."""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import cvtrain

PACKAGE = Path(cvtrain.__file__).parent
# Extras a module may need (pyproject's optional dependencies): without one installed, its modules are skipped,
# saying which extra is missing. Any other import error fails.
OPTIONAL = {"onnx": "export", "onnxruntime": "export", "scipy": "export", "cleanlab": "audit-bench",
            "optuna": "sweep", "faster_coco_eval": "fast-eval"}


def _walk() -> list[str]:
    def refuse(name: str) -> None:
        raise ImportError(f"pkgutil.walk_packages could not import {name}")

    return sorted(info.name for info in pkgutil.walk_packages([str(PACKAGE)], "cvtrain.", onerror=refuse))


MODULES = _walk()


def test_the_walk_reaches_every_module_file():
    """A folder without __init__.py is a namespace package that walk_packages does not enter: none may hide."""
    on_disk = sorted(("cvtrain." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                     for path in PACKAGE.rglob("*.py"))
    assert MODULES == [name for name in on_disk if name != "cvtrain"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples must not depend on the checkout or write into it
    if name == "cvtrain.__main__":  # importing it runs the CLI: read it instead
        assert ">>>" not in (PACKAGE / "__main__.py").read_text(encoding="utf-8")
        return
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing in OPTIONAL and importlib.util.find_spec(missing) is None:
            pytest.skip(f"{name} needs {missing!r}, not installed (pip install 'cvtrain[{OPTIONAL[missing]}]')")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    output: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)


def test_the_main_public_functions_have_examples():
    from cvtrain.api import check, evaluate, fit
    from cvtrain.config import load_config, parse_override, save_config
    from cvtrain.config.explain import explain
    from cvtrain.results import metric_text, per_class_lines, summary_metrics

    without = [f.__qualname__ for f in (fit, check, evaluate, load_config, save_config, parse_override, explain,
                                        metric_text, summary_metrics, per_class_lines) if ">>>" not in f.__doc__]
    assert without == []
