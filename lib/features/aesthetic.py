"""The LAION aesthetic predictor: a head on CLIP ViT-L/14 image embeddings, as a data filter and as a metric.

Weights are local files only (``data.aesthetic_path`` for filtering, ``evaluate.aesthetic_path`` for scoring generated
videos), with CLIP from a local folder loaded and preprocessed as ``evaluate.clip_path`` (``lib.features.clip``).
The score is named with the CLIP and head it came from, as ``clip_sim`` is: a tiny stand-in CLIP gives another number.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from lib.features.clip import ClipSimilarity


class AestheticError(ValueError):
    """Aesthetic-predictor weights that cannot score this CLIP's embeddings."""


def load_aesthetic_head(path: str | Path) -> nn.Sequential:
    """The LAION aesthetic predictor as a chain of Linear layers, from a state dict (.pth/.pt or .safetensors).

    Both published heads fit: the linear one (``weight``/``bias``: 768 -> 1) and the MLP of
    improved-aesthetic-predictor (``layers.{0,2,4,6,7}``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between and no
    activation at all, so at inference it is exactly a chain of linear maps). Layers are chained in the numeric
    order of their key prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise AestheticError(f"{path}: no such file; the aesthetic head must be a local weights file")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    prefixes = sorted(
        (k.removesuffix("weight") for k, v in state.items() if k.endswith("weight") and v.ndim == 2),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p)],
    )
    if not prefixes:
        raise AestheticError(f"{path}: no Linear weights (2-D '*weight' tensors) in {sorted(state)}")
    layers = []
    for prefix in prefixes:
        weight, bias = state[f"{prefix}weight"], state.get(f"{prefix}bias")
        if layers and layers[-1].out_features != weight.shape[1]:
            raise AestheticError(f"{path}: {prefix}weight takes {weight.shape[1]} inputs after a layer giving "
                                 f"{layers[-1].out_features}")  # fmt: skip
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.load_state_dict({"weight": weight, **({"bias": bias} if bias is not None else {})})
        layers.append(layer)
    if layers[-1].out_features != 1:
        raise AestheticError(f"{path}: the last layer gives {layers[-1].out_features} outputs, a score needs 1")
    return nn.Sequential(*layers).eval()


class AestheticScorer:
    """LAION aesthetic score of a clip's middle frame (unit-norm CLIP image embedding -> head)."""

    def __init__(self, head_path: str | Path, clip: ClipSimilarity | str | Path) -> None:
        """``clip``: a CLIP folder, or an already loaded scorer (the evaluation's, so ViT-L/14 is loaded once)."""
        self.head = load_aesthetic_head(head_path)
        self.head_name = Path(head_path).name
        self.clip = clip if isinstance(clip, ClipSimilarity) else ClipSimilarity(clip)
        dim = int(self.clip.model.config.projection_dim)
        if self.head[0].in_features != dim:
            raise AestheticError(f"{head_path}: the head takes {self.head[0].in_features}-d embeddings but the CLIP "
                                 f"at {self.clip.path} gives {dim}-d (LAION heads need ViT-L/14: 768)")  # fmt: skip

    @torch.no_grad()
    def score(self, frames: np.ndarray) -> float:
        middle = torch.from_numpy(np.ascontiguousarray(frames[len(frames) // 2 : len(frames) // 2 + 1]))
        return float(self.head(self.clip.image_embeddings(middle)).squeeze())

    @property
    def extractor_id(self) -> str:
        return f"{self.clip.extractor_id}+{self.head_name}"
