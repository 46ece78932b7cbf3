"""FVD proper: the I3D (Kinetics-400) TorchScript network as a video feature extractor.

Protocol (StyleGAN-V's FVD, DESIGN §7), fixed here so every score is comparable:
- the file is the user's ``i3d_torchscript.pt`` (never downloaded here), loaded with ``torch.jit.load`` on CPU;
- it is called as ``model(x, rescale=True, resize=True, return_features=True)`` with ``x`` float
  ``[B, 3, T, H, W]`` holding pixel values in [0, 255]: ``rescale=True`` lets the network map them to [−1, 1]
  itself and ``resize=True`` lets it resize frames to its 224×224 input, as StyleGAN-V does (it feeds
  ``videos * 255`` with these flags); the output is the 400-d pre-softmax feature vector;
- clips are 16 frames: longer clips keep their first 16 frames (StyleGAN-V reads 16 consecutive frames), shorter
  clips are padded by repeating their last frame (``FRAME_RULE``). Padding keeps the real motion untouched and
  adds a still tail; it is applied identically to real and generated clips, and the rule is recorded with every
  score because FVDs of padded short clips are not comparable to published 16-frame FVDs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lib.features.batch import FeatureError, as_video_batch
from lib.io import file_sha256

log = logging.getLogger(__name__)

I3D_FRAMES = 16
I3D_NUM_FEATURES = 400
FRAME_RULE = "first 16 frames; shorter clips padded by repeating the last frame"
CALL = "model(x_float_BCTHW_0_255, rescale=True, resize=True, return_features=True)"


def fit_frames(videos: torch.Tensor, frames: int = I3D_FRAMES) -> torch.Tensor:
    """Bring videos [B, T, ...] to exactly ``frames`` frames by the rule in ``FRAME_RULE``."""
    t = videos.shape[1]
    if t >= frames:
        return videos[:, :frames]
    pad = videos[:, -1:].expand(-1, frames - t, *videos.shape[2:])
    return torch.cat([videos, pad], dim=1)


class I3DFeatures(nn.Module):
    """uint8 videos [B, T, H, W, 3] -> I3D features [B, 400] (float in the network's weight dtype).

    Args:
        path: local TorchScript file of the StyleGAN-V I3D (Kinetics-400).
    """

    num_features = I3D_NUM_FEATURES

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FeatureError(f"{path}: I3D TorchScript file not found (evaluate.i3d_path must name a local file)")
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise FeatureError(f"{path}: not a loadable TorchScript file: {exc}") from exc
        self.path = path
        self.sha256 = file_sha256(path)
        weights = [*self.model.parameters(), *self.model.buffers()]
        self.dtype = next((w.dtype for w in weights if w.is_floating_point()), torch.float32)
        log.info("loaded I3D %s (sha256 %s, dtype %s)", path, self.sha256[:12], self.dtype)

    @property
    def extractor_id(self) -> str:
        return f"i3d-{self.sha256[:12]}"

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        x = fit_frames(as_video_batch(videos))  # [B, 16, H, W, 3] uint8
        device = next((w.device for w in self.model.parameters()), torch.device("cpu"))
        x = x.permute(0, 4, 1, 2, 3).to(device=device, dtype=self.dtype)  # [B, 3, 16, H, W] in [0, 255]
        feats = self.model(x, rescale=True, resize=True, return_features=True)
        if feats.shape != (x.shape[0], I3D_NUM_FEATURES):
            raise FeatureError(
                f"{self.path}: I3D returned {tuple(feats.shape)}, expected ({x.shape[0]}, {I3D_NUM_FEATURES})"
            )
        return feats

    def provenance(self, n_real: int, n_generated: int, frames: int, height: int, width: int) -> dict[str, object]:
        """What a reader needs to decide whether two FVDs may be compared (DESIGN §7)."""
        return {
            "extractor": self.extractor_id,
            "i3d_file": str(self.path),
            "i3d_sha256": self.sha256,
            "call": CALL,
            "clip_frames": I3D_FRAMES,
            "frame_rule": FRAME_RULE,
            "source_frames": frames,
            "source_resolution": f"{height}x{width}",
            "n_real": n_real,
            "n_generated": n_generated,
        }
