"""The video batch every feature extractor takes, and the error of features that cannot be computed or compared."""

from __future__ import annotations

import numpy as np
import torch


class FeatureError(ValueError):
    """Features or statistics that cannot give a Fréchet distance (wrong shape, too few samples, mismatch)."""


def as_video_batch(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check and convert uint8 videos [N, T, H, W, 3] (numpy or torch) to a CPU torch tensor."""
    t = torch.from_numpy(np.ascontiguousarray(videos)) if isinstance(videos, np.ndarray) else videos
    if t.dtype != torch.uint8 or t.ndim != 5 or t.shape[-1] != 3:
        raise FeatureError(f"videos: expected uint8 [N, T, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t
