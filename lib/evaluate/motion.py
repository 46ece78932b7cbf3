"""Motion statistics of uint8 videos, comparable between real and generated sets.

- ``mean_abs_frame_diff`` (``motion_mad``): mean |x[t+1] − x[t]| over pixels, channels and frame pairs, in [0, 1]
  units. It is 0 for a still video and grows with both the amount and the area of change; a generator that
  produces frozen or flickering clips shows up here first.
- ``normal_flow_magnitude`` (``motion_flow``): a flow-free speed estimate in pixels per frame. Brightness constancy
  gives the flow component along the image gradient as |∂I/∂t| / |∇I|; averaged over pixels whose spatial
  gradient is strong enough to carry motion (edges), it measures how fast edges move without estimating the full
  flow field. It ignores uniform regions, so unlike ``motion_mad`` it does not grow with object area.
"""

from __future__ import annotations

import numpy as np
import torch

from lib.features.batch import as_video_batch

EDGE_THRESHOLD = 0.05  # min |∇I| (per pixel, [0, 1] grey levels) for a pixel to count as an edge


def _frames_float(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    clips = as_video_batch(videos)
    if clips.shape[1] < 2:
        raise ValueError(f"motion: videos need at least 2 frames, got {clips.shape[1]}")
    return clips.float() / 255.0  # [N, T, H, W, 3]


def mean_abs_frame_diff(videos: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-video mean absolute difference of consecutive frames, in [0, 1] units; shape [N], float64."""
    x = _frames_float(videos)
    return (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 2, 3, 4)).double().numpy()


def normal_flow_magnitude(videos: np.ndarray | torch.Tensor, edge_threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """Per-video mean normal-flow speed (pixels per frame) over edge pixels; 0 for videos without edges. [N]."""
    g = _frames_float(videos).mean(dim=-1)  # [N, T, H, W] grey
    it = g[:, 1:] - g[:, :-1]  # temporal derivative between frames t and t+1
    mid = (g[:, 1:] + g[:, :-1]) / 2  # spatial derivatives of the frame pair's average
    gy = torch.zeros_like(mid)
    gx = torch.zeros_like(mid)
    gy[..., 1:-1, :] = (mid[..., 2:, :] - mid[..., :-2, :]) / 2
    gx[..., :, 1:-1] = (mid[..., :, 2:] - mid[..., :, :-2]) / 2
    grad = torch.sqrt(gx**2 + gy**2)
    edges = grad > edge_threshold
    speed = torch.where(edges, it.abs() / grad.clamp_min(edge_threshold), torch.zeros_like(grad))
    count = edges.sum(dim=(1, 2, 3)).clamp_min(1)
    return (speed.sum(dim=(1, 2, 3)) / count).double().numpy()
