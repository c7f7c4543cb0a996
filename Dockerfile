# cvtrain for GPU servers: `docker run --gpus all ... cvtrain:0.1.0 fit -c spec.yaml --gpus 4`.
# Build from the repository root:   docker build -t cvtrain:0.1.0 .
# docker/README.md: single GPU, several GPUs, several nodes (torchrun, SLURM, Kubernetes), mounts.
# Not built in CI (no Docker engine there); tests/test_docker.py lints this file with hadolint and
# checks it against pyproject.toml, the README and the examples in docker/.
#
# Base image: the official PyTorch runtime image, pinned by tag.
# - torch 2.14.1 (2.14.1+cu126) with its torchvision: the torch the README installs and CI tests
#   (torch==2.14.1 torchvision==0.29.1), inside pyproject's torch>=2.4,<2.15. The image uses the base's
#   CUDA builds of both; the installs below are constrained to them, so pip never replaces them.
# - CUDA 12.6: runs on NVIDIA drivers 525.60.13 and newer (CUDA 12 minor-version compatibility), on
#   GPUs up to Hopper (A100, L40S, H100, H200). For Blackwell (B200, RTX PRO 6000), with drivers 580
#   and newer, put the CUDA 13.0 variant of the same release here and in the label below:
#   pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime.
# - runtime, not devel: cvtrain compiles nothing.
# A literal tag rather than a build argument, so that hadolint sees and checks it.
FROM pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime

LABEL org.opencontainers.image.title="cvtrain" \
      org.opencontainers.image.description="Config-driven training of detectors and segmenters on PyTorch, Lightning and torchvision" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime"

# TORCH_HOME: pretrained weights (torchvision's COCO weights) are downloaded once into /cache, a folder
# any user may write (mount a volume there to keep them), as may `docker run --user "$(id -u):$(id -g)"`.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    XDG_CACHE_HOME=/cache \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/cache/matplotlib

# The user that trains: uid and gid 1000, the first user on most Linux hosts, so that a bind-mounted
# runs folder of that user is writable as it is. Whoever holds uid or gid 1000 in the base gives way
# (Ubuntu 24.04 bases have a user `ubuntu` there).
RUN if user="$(id -nu 1000 2>/dev/null)"; then userdel "$user"; fi \
 && if group="$(getent group 1000)"; then groupdel "${group%%:*}"; fi \
 && groupadd --gid 1000 cvtrain \
 && useradd --no-log-init --create-home --uid 1000 --gid cvtrain --shell /bin/bash cvtrain \
 && mkdir -p /workspace /cache \
 && chown cvtrain:cvtrain /workspace \
 && chmod 1777 /cache

WORKDIR /opt/cvtrain

# 1. cvtrain's dependencies, read from pyproject.toml alone (tomllib: Python 3.11+): this layer is
#    rebuilt only when pyproject.toml changes, not when the code does. constraints.txt pins torch and
#    torchvision to the versions the base image holds (the build stops if it lacks one): pip keeps them,
#    and fails rather than replace them should they fall outside pyproject's bounds.
#    PIP_BREAK_SYSTEM_PACKAGES: recent bases mark their Python as externally managed (PEP 668); this
#    image is that Python's only user.
COPY pyproject.toml ./
RUN python -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ('torch', 'torchvision')), sep='\n')" > constraints.txt \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir --constraint constraints.txt --requirement requirements.txt

# 2. cvtrain from the source tree, as the README installs it (`pip install -e .`), here not editable:
#    the image keeps no checkout to edit. pip checks the dependencies again and finds them installed.
COPY README.md ./
COPY cvtrain ./cvtrain
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir --constraint constraints.txt . \
 && rm -rf build cvtrain.egg-info

# The ready specs, for `cvtrain fit -c /opt/cvtrain/configs/... --data /data/my_data.yaml`.
COPY configs ./configs

USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["cvtrain"]
CMD ["--help"]
