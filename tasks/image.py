"""The task image as a flytekit ``ImageSpec``: what the Dockerfile builds, declared where the tasks can name it.

Why both: with an ImageSpec, ``pyflyte run --remote`` builds (or finds) the image itself on a machine with Docker or
a cluster with an image builder, so no one hand-builds and tags an image per code change; the Dockerfile stays for
those who build by hand. Both start from the same CUDA PyTorch base and install the dependency list of
``pyproject.toml``, read from that file here, so the two cannot drift. The source travels with fast registration
(the default of ``pyflyte run --remote``), or is copied into the image when fast registration is off.

``DDM_IMAGE_REGISTRY`` (e.g. ``ghcr.io/my-team``) names the registry the image is pushed to; unset, the image is
local to the Docker engine that builds it. ``DDM_TASK_IMAGE`` (a full image name, e.g. one built from the
Dockerfile) replaces the ImageSpec in every task at registration.
"""

import os
import sys
from pathlib import Path

from flytekit import ImageSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the backport pyproject.toml installs there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"  # the Dockerfile's FROM; its CUDA torch is kept
# the Dockerfile's apt-get install: Triton (torch.compile on CUDA) needs a C compiler; opencv-python (scenedetect's
# dependency) links libGL and GLib
APT_PACKAGES = ["gcc", "libgl1", "libglib2.0-0"]


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The ``[project] dependencies`` of pyproject.toml, as pip requirement strings."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


IMAGE_SPEC = ImageSpec(
    name="ddm-flyte",
    base_image=BASE_IMAGE,
    packages=project_dependencies(),
    apt_packages=APT_PACKAGES,
    registry=os.environ.get("DDM_IMAGE_REGISTRY") or None,
    env={"PYTHONPATH": "/root", "PYTHONUNBUFFERED": "1"},
    source_root=str(ROOT),
)
TASK_IMAGE: ImageSpec | str = os.environ.get("DDM_TASK_IMAGE") or IMAGE_SPEC
