# Task image for Flyte GPU nodes: CUDA PyTorch base + the project's dependencies + the source.
# It cannot be built on the development machines (no Docker engine); CI lints it with hadolint.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /root

# Dependencies first (cached layer); the base image's CUDA torch satisfies the pyproject range.
COPY pyproject.toml README.md ./
# Versions are bounded in pyproject.toml (the single source of dependency ranges).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir .

COPY lib ./lib
COPY data_schemas ./data_schemas
COPY tasks ./tasks
COPY workflows ./workflows
COPY configs ./configs
ENV PYTHONPATH=/root
