# cvtrain on a GPU server:
#   docker build -t cvtrain .
#   docker run --gpus all --ipc=host -v "$PWD":/workspace cvtrain fit -c /opt/cvtrain/configs/detection/quickstart.yaml --gpus 1
# PyPI's torch wheels carry their CUDA libraries, so a slim Python base is enough.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cvtrain
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY cvtrain ./cvtrain
RUN pip install .
COPY configs ./configs
WORKDIR /workspace
ENTRYPOINT ["cvtrain"]
CMD ["--help"]
