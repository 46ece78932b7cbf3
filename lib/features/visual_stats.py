"""Hand-made video statistics (``visual_stats``): what clustering groups clips by when no model weights are at hand
(``lib.cluster.embedders``), and the offline Fréchet features of data without attributes (``lib.evaluate.report``).

Five groups, each standardised over the dataset (z-score per feature) and weighted by 1/sqrt(group size) so a
64-bin histogram does not outvote a 2-number texture cue:

- colour (6): mean and std of R, G, B over the clip — the palette of background and objects;
- histogram (64): joint 4x4x4 RGB histogram over the clip, square-rooted (Hellinger) so rare colours count;
- layout (48): 4x4 grid of mean colours of the time-averaged frame — where things are (gradients, stripes);
- texture (2): mean absolute luminance gradient along x and along y — plain vs striped vs checkered and the
  stripe orientation;
- motion (4): mean absolute frame difference (how much moves), the mean step of the centroid of the frame-
  difference energy along x and y (direction of travel, no optical flow needed), and the mean step of that
  energy's spread (growing vs shrinking objects).
"""

from __future__ import annotations

import math

import numpy as np

_HIST_LEVELS = 4  # per-channel levels of the joint colour histogram (4^3 = 64 bins)
_GRID = 4  # layout grid is _GRID x _GRID cells
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_EPS = 1e-6

VISUAL_GROUPS = {"colour": 6, "histogram": _HIST_LEVELS**3, "layout": 3 * _GRID * _GRID, "texture": 2, "motion": 4}


class EmbedderError(ValueError):
    """An embedder that cannot run: unknown name, missing model folder, or inputs that do not line up."""


def _grid_means(frames: np.ndarray) -> np.ndarray:
    """Mean of [n, H, W, C] over a _GRID x _GRID grid of cells -> [n, _GRID * _GRID * C]."""
    n, h, w, c = frames.shape
    if h < _GRID or w < _GRID:
        raise EmbedderError(f"visual_stats needs frames of at least {_GRID}x{_GRID}, got {h}x{w}")
    rows = np.arange(_GRID) * h // _GRID
    cols = np.arange(_GRID) * w // _GRID
    sums = np.add.reduceat(np.add.reduceat(frames, rows, axis=1), cols, axis=2)  # [n, G, G, C]
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))[None, :, :, None]
    return (sums / counts).reshape(n, -1)


def _energy_moments(energy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (x, y) and spread of non-negative maps [n, S, H, W], in frame units; centre/0 where empty."""
    _, _, h, w = energy.shape
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    total = energy.sum(axis=(2, 3))
    safe = np.maximum(total, _EPS)
    cx = np.where(total > _EPS, (energy.sum(axis=2) * xs).sum(axis=2) / safe, 0.5)
    cy = np.where(total > _EPS, (energy.sum(axis=3) * ys).sum(axis=2) / safe, 0.5)
    d2 = (xs[None, None, None, :] - cx[..., None, None]) ** 2 + (ys[None, None, :, None] - cy[..., None, None]) ** 2
    spread = np.where(total > _EPS, np.sqrt((energy * d2).sum(axis=(2, 3)) / safe), 0.0)
    return cx, cy, spread


def visual_stats_features(frames: np.ndarray) -> np.ndarray:
    """Raw visual statistics of each clip (see module docstring), groups in ``VISUAL_GROUPS`` order.

    Args:
        frames: uint8 [n, T, H, W, 3].

    Returns:
        float32 [n, 124].
    """
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise EmbedderError(f"visual_stats expects uint8 [n, T, H, W, 3], got {frames.dtype} {frames.shape}")
    n, t = frames.shape[:2]
    x = frames.astype(np.float32) / 255.0
    colour = np.concatenate([x.mean(axis=(1, 2, 3), dtype=np.float64), x.std(axis=(1, 2, 3), dtype=np.float64)], 1)

    levels = (frames // (256 // _HIST_LEVELS)).astype(np.int64)
    codes = (levels[..., 0] * _HIST_LEVELS + levels[..., 1]) * _HIST_LEVELS + levels[..., 2]
    codes = codes.reshape(n, -1) + np.arange(n)[:, None] * _HIST_LEVELS**3
    hist = np.bincount(codes.ravel(), minlength=n * _HIST_LEVELS**3).reshape(n, -1) / codes.shape[1]

    layout = _grid_means(x.mean(axis=1))

    luma = x @ _LUMA  # [n, T, H, W]
    texture = np.stack(
        [np.abs(np.diff(luma, axis=3)).mean(axis=(1, 2, 3)), np.abs(np.diff(luma, axis=2)).mean(axis=(1, 2, 3))], 1
    )

    if t >= 2:
        energy = np.abs(np.diff(luma, axis=1))  # [n, T-1, H, W]
        cx, cy, spread = _energy_moments(energy)
        steps = [np.diff(v, axis=1).mean(axis=1) if t >= 3 else np.zeros(n, np.float32) for v in (cx, cy, spread)]
        motion = np.stack([energy.mean(axis=(1, 2, 3)), *steps], axis=1)
    else:
        motion = np.zeros((n, VISUAL_GROUPS["motion"]), np.float32)
    return np.concatenate([colour, np.sqrt(hist), layout, texture, motion], axis=1).astype(np.float32)


def standardise_groups(
    features: np.ndarray, standard: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """z-score every column, then weight each group by 1/sqrt(its size) (equal group weight).

    The z-score uses ``standard`` (``visual_stats_mean``/``visual_stats_std``) when given, else the statistics of
    ``features`` themselves, which it returns: clips added to a clustering later (a grown DDM) must be standardised
    with the statistics its centroids were fitted in, or their distances to those centroids mean nothing.
    """
    if standard is None:
        standard = {"visual_stats_mean": features.mean(axis=0), "visual_stats_std": features.std(axis=0)}
    mean, std = standard["visual_stats_mean"], standard["visual_stats_std"]
    if mean.shape != features.shape[1:] or std.shape != features.shape[1:]:
        raise EmbedderError(f"visual_stats standard has shape {mean.shape}, features {features.shape[1:]}")
    z = (features - mean) / np.maximum(std, _EPS)
    weights = np.concatenate([np.full(size, 1.0 / math.sqrt(size)) for size in VISUAL_GROUPS.values()])
    fitted = {k: np.asarray(v, dtype=np.float32) for k, v in standard.items()}
    return (z * weights).astype(np.float32), fitted
