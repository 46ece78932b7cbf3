"""Quality scores of decoded clips, and the thresholds that keep a clip out of the shards.

Scores are measured on the clip as it is stored (``data.frames`` at ``data.fps``, H x W), i.e. on what the model
will learn from:

- ``motion``: mean optical-flow magnitude in pixels per frame, over every pixel and consecutive frame pair, with
  OpenCV's Farneback dense flow. ``lib.evaluate.motion.normal_flow_magnitude`` is not reused: it estimates only the
  flow component along image gradients and only at edges (a cheap comparison statistic for generated sets), while
  a filter of still or shaky clips wants the full flow over the whole frame. Thresholds are therefore in pixels per
  frame at the configured size and rate: doubling ``data.height``/``width`` doubles the scores.
- ``aesthetic``: the LAION aesthetic predictor (a linear or MLP head over unit-norm CLIP ViT-L/14 image
  embeddings, roughly 1..10) on the clip's middle frame, only when ``data.aesthetic_path`` names the head's local
  weights; CLIP comes from the local folder ``data.aesthetic_clip_path`` and is loaded and preprocessed as for
  ``eval.clip_path`` (``lib.evaluate.clip_score``). At the tiny default size (32 x 32) the score says little;
  it is meant for real resolutions.

A clip that breaks a rule is never silently dropped: ingestion writes it to the FilteredClip table with its scores
and the rule, and counts it per rule in the ingest line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from lib.config import DataConfig

# Farneback parameters for small clips: a 3-level pyramid reaches ~8 px/frame motions at 32 px, and a 9 px window
# still fits inside such frames. Fixed (not config): a change of parameters changes every score's meaning.
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 9, "iterations": 3, "poly_n": 5, "poly_sigma": 1.1, "flags": 0}


def motion_score(frames: np.ndarray) -> float:
    """Mean Farneback flow magnitude (pixels per frame) of uint8 [T, H, W, 3]; 0 for a single frame."""
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    if len(grey) < 2:
        return 0.0
    mags = [
        float(np.linalg.norm(cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK), axis=-1).mean())
        for a, b in zip(grey[:-1], grey[1:], strict=True)
    ]
    return float(np.mean(mags))


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
        raise AestheticError(f"{path}: no such file; data.aesthetic_path must be a local weights file")
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

    def __init__(self, head_path: str | Path, clip_path: str | Path) -> None:
        # here, not at the top: transformers takes seconds to import and most ingests score no aesthetics
        from lib.evaluate.clip_score import ClipSimilarity

        self.head = load_aesthetic_head(head_path)
        self.clip = ClipSimilarity(clip_path)
        dim = int(self.clip.model.config.projection_dim)
        if self.head[0].in_features != dim:
            raise AestheticError(f"{head_path}: the head takes {self.head[0].in_features}-d embeddings but the CLIP "
                                 f"at {clip_path} gives {dim}-d (LAION heads need ViT-L/14: 768)")  # fmt: skip

    @torch.no_grad()
    def score(self, frames: np.ndarray) -> float:
        middle = torch.from_numpy(np.ascontiguousarray(frames[len(frames) // 2 : len(frames) // 2 + 1]))
        return float(self.head(self.clip.image_embeddings(middle)).squeeze())


@dataclass(frozen=True)
class ClipScores:
    motion: float
    aesthetic: float  # NaN when no aesthetic head is configured


class QualityFilter:
    """Scores every decoded clip and names the first rule it breaks (``data.min_motion``, ``max_motion``,
    ``min_aesthetic``; a threshold of 0 is off)."""

    def __init__(self, cfg: DataConfig) -> None:
        self.min_motion = cfg.min_motion
        self.max_motion = cfg.max_motion
        self.min_aesthetic = cfg.min_aesthetic
        self.aesthetic = AestheticScorer(cfg.aesthetic_path, cfg.aesthetic_clip_path) if cfg.aesthetic_path else None

    def score(self, frames: np.ndarray) -> ClipScores:
        """Scores of one uint8 [T, H, W, 3] clip."""
        aesthetic = self.aesthetic.score(frames) if self.aesthetic is not None else math.nan
        return ClipScores(motion_score(frames), aesthetic)

    def verdict(self, scores: ClipScores) -> tuple[str, str] | None:
        """(rule, detail) of the first rule ``scores`` breaks, or None when the clip is kept."""
        if self.min_motion > 0 and scores.motion < self.min_motion:
            return "min_motion", f"motion {scores.motion:.3f} < data.min_motion {self.min_motion:g}"
        if self.max_motion > 0 and scores.motion > self.max_motion:
            return "max_motion", f"motion {scores.motion:.3f} > data.max_motion {self.max_motion:g}"
        if self.min_aesthetic > 0 and scores.aesthetic < self.min_aesthetic:
            return "min_aesthetic", f"aesthetic {scores.aesthetic:.3f} < data.min_aesthetic {self.min_aesthetic:g}"
        return None
