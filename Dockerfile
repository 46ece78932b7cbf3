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

# Dependencies first (cached layer). pyproject.toml bounds the versions (the single source of dependency ranges);
# constraints.txt pins each one to the version the test suite last passed with. It pins neither torch nor sympy
# (which torch 2.6.0 pins itself), so the base image's CUDA torch satisfies pyproject's range and stays: checked with
# a pip dry run forcing torch==2.6.0 against these constraints, which keeps it (tests/test_image.py checks the pins).
COPY pyproject.toml README.md constraints.txt ./
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt .

COPY lib ./lib
COPY data_schemas ./data_schemas
COPY tasks ./tasks
COPY workflows ./workflows
COPY configs ./configs
ENV PYTHONPATH=/root
