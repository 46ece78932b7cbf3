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
  ``evaluate.clip_path`` (``lib.features.clip``). At the tiny default size (32 x 32) the score says little;
  it is meant for real resolutions.

A clip that breaks a rule is never silently dropped: ingestion writes it to the FilteredClip table with its scores
and the rule, and counts it per rule in the ingest line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

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
        self.aesthetic = None
        if cfg.aesthetic_path:  # imported here: transformers takes seconds and most ingests score no aesthetics
            from lib.features.aesthetic import AestheticScorer

            self.aesthetic = AestheticScorer(cfg.aesthetic_path, cfg.aesthetic_clip_path)

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
