"""Fréchet distance between two sets of video features, accumulated in float64.

- ``FrechetVideoDistance`` accumulates features with torchmetrics' ``FrechetInceptionDistance`` and a custom
  feature module. That metric never looks at the input itself when the feature module is custom: it calls
  ``feature(batch)``, counts ``batch.shape[0]`` samples and adds the features' sum and outer-product sum to float64
  states. So uint8 video batches ``[B, T, H, W, 3]`` pass as they are; the extractor decides layout and scaling.
- ``frechet_distance`` is the closed form in float64 numpy. ``FrechetVideoDistance.compute`` applies it to the
  metric's float64 states, so a score from live features and one from stored statistics are the same computation
  (tests check it against torchmetrics' own ``compute`` and scipy). It uses two symmetric eigendecompositions
  instead of torchmetrics' general ``eigvals(Σ1 Σ2)``, which is slower and can return complex round-off.
- The linear algebra runs with a single BLAS thread: on this 2-core machine a multi-threaded OpenBLAS call made
  right after torch's OpenMP work took ~9 s instead of ~0.08 s for a 400-d eigendecomposition.

Why float64 everywhere: the covariance is recovered as ``(Σ x xᵀ − n μ μᵀ) / (n − 1)``. With feature means around
1000 the two terms are ~1e6 · n while their difference is ~n; float32 (7 digits) loses the covariance entirely.

Why real statistics are stored: the reference set is fixed for a run, so its mean/covariance are computed once,
saved (safetensors, float64) and loaded back for every method and every generated draw.

FD is biased by the sample count (DESIGN §7): only compare numbers that share N, extractor and resize rule;
``lib.evaluate.distances`` gives the N-independent FD∞ and KID with bootstrap intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from threadpoolctl import threadpool_limits
from torch import nn

from lib.features.batch import FeatureError, as_video_batch
from lib.io import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of a feature set: mean [D], covariance [D, D] (unbiased, n − 1), sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def __post_init__(self) -> None:
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise FeatureError(f"stats: mu {self.mu.shape} and sigma {self.sigma.shape} are not [D] and [D, D]")
        if self.n < 2:
            raise FeatureError(f"stats: a covariance needs at least 2 samples, got n={self.n}")


def stats_from_features(features: np.ndarray | torch.Tensor) -> FeatureStats:
    """Mean and unbiased covariance of features [N, D], computed in float64."""
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise FeatureError(f"features: expected [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise FeatureError(f"features: a covariance needs at least 2 samples, got {x.shape[0]}")
    return FeatureStats(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), n=x.shape[0])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues from round-off are clipped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) in float64.

    Tr (Σ1 Σ2)^½ is taken as Tr (Σ1^½ Σ2 Σ1^½)^½: the two matrices are similar, and the second one is symmetric
    PSD, so its eigenvalues are real and non-negative (no complex round-off as with a plain ``sqrtm(Σ1 Σ2)``).
    """
    with threadpool_limits(limits=1):
        return frechet_distance_in_caller_pool(mu1, sigma1, mu2, sigma2)


def frechet_distance_in_caller_pool(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``frechet_distance`` under the caller's thread limits: a loop of many distances enters ``threadpool_limits``
    once around all of them (entering it costs more than one distance at D = 128)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise FeatureError(
            f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def fd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def save_stats(path: str | Path, stats: FeatureStats, extractor_id: str) -> Path:
    """Write stats as float64 safetensors; the extractor id travels in the metadata so a mismatch is caught."""
    tensors = {"mu": stats.mu.astype(np.float64), "sigma": stats.sigma.astype(np.float64), "n": np.array([stats.n])}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"extractor": extractor_id}))


def load_stats(path: str | Path, extractor_id: str | None = None) -> FeatureStats:
    """Read stats written by ``save_stats``; refuses stats of another extractor when ``extractor_id`` is given."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: feature statistics file not found")
    with safe_open(str(path), framework="np") as f:
        stored_id = (f.metadata() or {}).get("extractor", "")
    if extractor_id is not None and stored_id != extractor_id:
        raise FeatureError(f"{path}: statistics were computed with extractor {stored_id!r}, not {extractor_id!r}")
    t = load_file(str(path))
    return FeatureStats(mu=t["mu"], sigma=t["sigma"], n=int(t["n"][0]))


class _Float64Features(nn.Module):
    """Runs the extractor and returns float64 features.

    torchmetrics casts its result back to the dtype of the last features it saw; handing it float64 keeps the
    returned distance in float64 as well as the accumulation.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(extractor, "num_features", None), int):
            raise FeatureError(f"{type(extractor).__name__}: a feature extractor needs an int `num_features`")
        self.extractor = extractor
        self.num_features = extractor.num_features

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        feats = self.extractor(videos)
        if feats.ndim != 2 or feats.shape != (videos.shape[0], self.num_features):
            raise FeatureError(
                f"{type(self.extractor).__name__}: returned features {tuple(feats.shape)}, "
                f"expected ({videos.shape[0]}, {self.num_features})"
            )
        return feats.double()


class FrechetVideoDistance:
    """FD between a fixed real set and generated sets, over any video feature module with ``num_features``.

    Real features persist across ``reset_generated`` so one reference serves every method and draw.

    Args:
        extractor: nn.Module taking uint8 videos [B, T, H, W, 3] and returning features [B, num_features].
        name: metric name (carries the extractor, e.g. ``fd_attrnet`` or ``fvd_i3d``).
        batch_size: videos per extractor call.
    """

    def __init__(self, extractor: nn.Module, name: str, batch_size: int = 64) -> None:
        if batch_size <= 0:
            raise FeatureError(f"{name}: batch_size must be > 0, got {batch_size}")
        self.name = name
        self.batch_size = batch_size
        # imported here, not at module level: torchmetrics (and the scipy it loads) costs seconds at every pipeline
        # start, cached reruns included, and only a run that scores videos needs it
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.metric = FrechetInceptionDistance(feature=_Float64Features(extractor.eval()), reset_real_features=False)

    @torch.no_grad()
    def update(self, videos: np.ndarray | torch.Tensor, real: bool) -> None:
        batch = as_video_batch(videos)
        for start in range(0, batch.shape[0], self.batch_size):
            self.metric.update(batch[start : start + self.batch_size], real=real)

    def compute(self) -> float:
        """FD between the accumulated real and generated sets (float64)."""
        return fd_from_stats(self.real_stats(), self.generated_stats())

    def _stats(self, prefix: str, what: str) -> FeatureStats:
        """Mean/covariance from the metric's float64 sums, with the formula of torchmetrics' compute."""
        n = int(getattr(self.metric, f"{prefix}_features_num_samples"))
        if n < 2:
            raise FeatureError(f"{self.name}: needs >= 2 {what} videos, got {n}")
        mu = getattr(self.metric, f"{prefix}_features_sum").double() / n
        sigma = (getattr(self.metric, f"{prefix}_features_cov_sum").double() - n * torch.outer(mu, mu)) / (n - 1)
        return FeatureStats(mu=mu.numpy(), sigma=sigma.numpy(), n=n)

    def real_stats(self) -> FeatureStats:
        return self._stats("real", "real")

    def generated_stats(self) -> FeatureStats:
        return self._stats("fake", "generated")

    def load_real_stats(self, stats: FeatureStats) -> None:
        """Put stored real statistics back into the metric's accumulators (inverse of ``real_stats``)."""
        d = self.metric.real_features_sum.shape[0]
        if stats.mu.shape != (d,):
            raise FeatureError(f"{self.name}: stored stats have D={stats.mu.shape[0]}, the extractor gives {d}")
        mu = torch.from_numpy(stats.mu.astype(np.float64))
        sigma = torch.from_numpy(stats.sigma.astype(np.float64))
        self.metric.real_features_sum = mu * stats.n
        self.metric.real_features_cov_sum = sigma * (stats.n - 1) + stats.n * torch.outer(mu, mu)
        self.metric.real_features_num_samples = torch.tensor(stats.n, dtype=torch.long)

    def reset_generated(self) -> None:
        self.metric.reset()  # reset_real_features=False keeps the real accumulators
