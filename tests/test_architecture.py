"""The rules of the house (docs/architecture.md): no import cycles, arrows point down, one torch.load, one path
guard, the CLI only parses and prints, and the code is clean under the project's ruff configuration."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cvtrain"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def imported_modules(path: Path) -> set[str]:
    """Every ``cvtrain`` module a file imports, at the top or inside functions (lazy imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own[: len(own) - node.level + is_package]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found |= {prefix} | {f"{prefix}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES}


def edges() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        name = module_name(path)
        # importing a package's submodule runs the package's __init__: not an edge back to the package
        graph[name] = {t for t in imported_modules(path) if t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycle_anywhere():
    graph = edges()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    """All modules import in a fresh interpreter in either order: nothing works only because of import order."""
    names = MODULES if order == "sorted" else MODULES[::-1]
    script = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


LAYERS = {  # a package may import its own layer and those below it, never one above
    "cvtrain.errors": 0, "cvtrain.atomic": 0, "cvtrain.yamltext": 0, "cvtrain.config": 1, "cvtrain.data": 2,
    "cvtrain.models": 2,
    "cvtrain.evaluation": 2, "cvtrain.curation": 3, "cvtrain.tasks": 3, "cvtrain.engine": 4, "cvtrain.results": 4,
    "cvtrain.prediction": 5, "cvtrain.api": 6, "cvtrain.sweep": 6.5, "cvtrain.cli": 7,
    "cvtrain.audit": 5,  # fold training gets fit handed in by the API
    # evaluation that runs models (through the tasks) sits beside prediction; the metrics themselves stay low
    "cvtrain.evaluation.inference": 5, "cvtrain.evaluation.analysis": 5, "cvtrain.evaluation.robustness": 5,
    "cvtrain.evaluation.model_tests": 5,
}


def layer(module: str) -> float | None:
    for prefix, level in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


# The schema's validators look names up in these tables (formats, models, check codes, corruptions).
REGISTRIES = ("cvtrain.data.formats", "cvtrain.models", "cvtrain.curation.codes", "cvtrain.evaluation.corruptions")


def test_arrows_point_down():
    """Data, models, tasks and curation never import the engine, the API or the CLI; the engine never imports the
    API or the CLI. (The schema's validators look names up in the registries: a read of a table, allowed as the
    one exception, and lazy.)"""
    upward = []
    for source, targets in edges().items():
        for target in targets:
            if source.startswith("cvtrain.config.") and target in REGISTRIES:
                continue
            low, high = layer(source), layer(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{source} -> {target}")
    assert upward == []


def test_one_torch_load_site_and_one_path_guard():
    loads, guards = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    loads.append(f"{path.relative_to(REPO)}:{node.lineno}")
                if node.func.attr == "is_relative_to":
                    guards.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert len(loads) == 1 and loads[0].startswith("cvtrain/engine/checkpoints.py"), loads
    assert {g.split(":")[0] for g in guards} == {"cvtrain/data/files.py"}, guards


def test_the_cli_only_parses_and_prints():
    """``cli.py`` imports no torch, Lightning or pydantic at module level, and below the API nothing imports
    argparse."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not top & {"torch", "torchvision", "pytorch_lightning", "lightning", "pydantic"}
    entries = {"cli.py", "trial.py"}  # the command, and the child-process entry of a multi-device sweep trial
    users = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
             if p.name not in entries and "argparse" in p.read_text(encoding="utf-8")]
    assert users == []


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    done = subprocess.run([ruff, "check", "cvtrain", "tests", "scripts"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:]
