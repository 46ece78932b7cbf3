# Task image for Flyte GPU nodes: CUDA PyTorch base + the project's dependencies + the source.
# It cannot be built on the development machines (no Docker engine); CI lints it with hadolint.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /root

# gcc: torch.compile on CUDA (expert.compile) has Triton build its kernel launchers with a C compiler, which the
# runtime base image lacks. libgl1, libglib2.0-0: scenedetect (data.source: raw) depends on opencv-python, whose cv2
# links libGL and GLib. Same list as APT_PACKAGES in tasks/image.py; the distribution's current versions are fine.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*

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
