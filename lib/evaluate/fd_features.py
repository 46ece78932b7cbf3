"""Which network a Fréchet distance sees videos through, and the features of a set of videos through it.

Why apart from the report: the choice is a rule about provenance (I3D only from the user's file, so only then is the
metric called FVD; else the run's AttrNet; else, with no attributes to train one on, standardised visual
statistics), and the benchmarks score through the same extractors without building a report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lib.config import EvalConfig
from lib.evaluate.attrnet import AttrNet, AttrNetFeatures, attrnet_id
from lib.evaluate.i3d import I3DFeatures
from lib.features.batch import FeatureError, as_video_batch
from lib.features.visual_stats import standardise_groups, visual_stats_features
from lib.progress import progress


@dataclass
class FeatureSpec:
    """A Fréchet feature extractor with the metric name and id it reports under."""

    module: nn.Module
    metric: str
    extractor_id: str

    def provenance(self, n_real: int, n_generated: int, frames: int, height: int, width: int) -> dict[str, object]:
        """What decides whether two scores may be compared; I3D adds its file hash and frame rule."""
        if isinstance(self.module, I3DFeatures):
            return self.module.provenance(n_real, n_generated, frames, height, width)
        return {
            "extractor": self.extractor_id,
            "metric": self.metric,
            "source_frames": frames,
            "source_resolution": f"{height}x{width}",
            "n_real": n_real,
            "n_generated": n_generated,
        }


class VisualStatsFeatures(nn.Module):
    """Offline Fréchet features for data without generating attributes (real videos, no I3D file), where no AttrNet
    can be trained: the clustering's hand-made video statistics (``lib.features.visual_stats``: colour, histogram,
    layout, texture, motion energy), z-scored with the reference set's statistics so that no group's scale decides
    the distance. Weak — it sees palettes, layout and how much moves, not objects — and named for what it is
    (``fd_vstats``), never FVD."""

    extractor_id = "visual-stats-v1"
    # A feature the reference never varies (a colour bin no real clip uses) would divide a generated clip's value by
    # ~0; the features live in [0, 1], so their spread is floored at 0.01 of that range.
    MIN_STD = 0.01

    def __init__(self, reference: torch.Tensor) -> None:
        super().__init__()
        _, standard = standardise_groups(visual_stats_features(reference.numpy()))
        self.standard = {**standard, "visual_stats_std": np.maximum(standard["visual_stats_std"], self.MIN_STD)}

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        z, _ = standardise_groups(visual_stats_features(videos.numpy()), self.standard)
        return torch.from_numpy(z)


def fd_feature_spec(cfg: EvalConfig, featnet: AttrNet | None, reference: torch.Tensor | None = None) -> FeatureSpec:
    """I3D when ``evaluate.i3d_path`` is set (FVD proper), else the run's AttrNet (``fd_attrnet``), else (no attributes
    to train one on) the reference-standardised visual statistics (``fd_vstats``)."""
    if cfg.i3d_path:
        i3d = I3DFeatures(cfg.i3d_path)
        return FeatureSpec(i3d, "fvd_i3d", i3d.extractor_id)
    if featnet is not None:
        return FeatureSpec(AttrNetFeatures(featnet), "fd_attrnet", attrnet_id(featnet))
    if reference is None:
        raise FeatureError(
            "evaluate: no I3D file (evaluate.i3d_path), no AttrNet and no reference videos to fit features on"
        )
    features = VisualStatsFeatures(reference)
    return FeatureSpec(features, "fd_vstats", features.extractor_id)


def video_features(module: nn.Module, videos: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Float64 features [N, D] of uint8 videos, in batches (the extractor decides layout and scaling)."""
    clips = as_video_batch(videos)
    with torch.no_grad():
        starts = progress(range(0, len(clips), batch_size), desc="features", unit="batch")
        parts = [module(clips[i : i + batch_size]).double().cpu().numpy() for i in starts]
    return np.concatenate(parts)
