"""Latent codecs: the map between pixel videos on disk and the tensors the diffusion models see.

One interface for all of them, so the trainer, router and sampler never ask which codec made their latents:

- ``encode(videos)``: uint8 ``[B, T, H, W, C]`` -> float32 latents ``[B, C', T', H', W']``
- ``decode(latents)``: latents -> uint8 ``[B, T, H, W, C]``
- ``latent_channels``, ``latent_shape(T, H, W)``, ``name``, ``info()`` (what ``codec.json`` records)

Codecs:

- ``pixel``: identity up to scale (``x / 127.5 - 1``). The tiny CPU default; exact round trip.
- ``vae`` with a diffusers ``AutoencoderKL`` folder: an image VAE applied frame by frame (T' = T). Latents are
  ``(mode - shift_factor) * scaling_factor`` with both read from the VAE's config (no magic numbers), so they
  have roughly unit variance like the noise they are mixed with.
- ``vae`` with a diffusers ``AutoencoderKLWan`` folder: a causal video VAE (T' = 1 + (T - 1) / 2^k). Latents are
  normalised per channel with the config's ``latents_mean`` / ``latents_std`` (the Wan pipeline convention).

The VAE class is read from the folder's ``config.json`` ``_class_name``. The posterior mode (not a sample) is
used, so encoding is deterministic and the cached latents do not depend on a seed.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.config import EncodeConfig

log = logging.getLogger(__name__)

_FRAME_BATCH = 64  # frames per image-VAE call, bounds activation memory whatever the video batch size


class CodecLoadError(ValueError):
    """A VAE folder that is missing or does not hold a supported diffusers autoencoder."""


def videos_to_model(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, C] -> float32 [B, C, T, H, W] in [-1, 1]."""
    videos = torch.as_tensor(videos)
    if videos.dtype != torch.uint8 or videos.ndim != 5:
        raise ValueError(f"expected uint8 videos [B, T, H, W, C], got {videos.dtype} {tuple(videos.shape)}")
    return videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def model_to_videos(x: torch.Tensor) -> torch.Tensor:
    """float [B, C, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, C] (clamped, rounded)."""
    if x.ndim != 5:
        raise ValueError(f"expected [B, C, T, H, W], got {tuple(x.shape)}")
    pixels = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous().cpu()


class LatentCodec(ABC):
    """Common interface of all codecs (see module docstring)."""

    name: str
    latent_channels: int

    @abstractmethod
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C', T', H', W') of the latents of one ``frames x height x width`` video."""

    @abstractmethod
    def encode(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [B, T, H, W, C] -> float32 [B, C', T', H', W'] on the CPU."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """float [B, C', T', H', W'] -> uint8 [B, T, H, W, C] on the CPU."""

    def info(self) -> dict[str, Any]:
        """JSON-able description written to ``codec.json`` next to cached latents."""
        return {"name": self.name, "latent_channels": self.latent_channels, "scaling": self.scaling()}

    @abstractmethod
    def scaling(self) -> dict[str, Any]:
        """The normalisation applied between the autoencoder's space and the stored latents."""


class PixelCodec(LatentCodec):
    """Identity codec: latents are the pixels rescaled to [-1, 1]."""

    name = "pixel"
    latent_channels = 3

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.latent_channels, frames, height, width)

    def encode(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = videos_to_model(videos)
        if x.shape[1] != self.latent_channels:
            raise ValueError(f"pixel codec: expected {self.latent_channels} colour channels, got {x.shape[1]}")
        return x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return model_to_videos(latents)

    def scaling(self) -> dict[str, Any]:
        return {"scale": 1 / 127.5, "shift": -1.0}


class ImageVAECodec(LatentCodec):
    """A diffusers ``AutoencoderKL`` applied to every frame independently."""

    name = "vae"

    def __init__(self, vae: torch.nn.Module, path: str, device: str | torch.device = "cpu"):
        self.vae = vae.to(device).eval()
        self.path = path
        self.device = torch.device(device)
        self.latent_channels = int(vae.config.latent_channels)
        self.spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.spatial_factor
        if height % f or width % f:
            raise ValueError(f"{self.path}: frame size {height}x{width} is not divisible by the VAE's factor {f}")
        return (self.latent_channels, frames, height // f, width // f)

    @torch.no_grad()
    def encode(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = videos_to_model(videos)
        b, c, t, h, w = x.shape
        self.latent_shape(t, h, w)
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        parts = []
        for i in range(0, len(frames), _FRAME_BATCH):
            mode = self.vae.encode(frames[i : i + _FRAME_BATCH].to(self.device)).latent_dist.mode()
            parts.append(((mode - self.shift_factor) * self.scaling_factor).float().cpu())
        z = torch.cat(parts)  # [B*T, C', H', W']
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / self.scaling_factor + self.shift_factor
        parts = [
            self.vae.decode(z[i : i + _FRAME_BATCH].to(self.device)).sample.float().cpu()
            for i in range(0, len(z), _FRAME_BATCH)
        ]
        x = torch.cat(parts)  # [B*T, C, H, W]
        return model_to_videos(x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4))

    def scaling(self) -> dict[str, Any]:
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "vae_class": type(self.vae).__name__, "vae_path": self.path}


class WanVideoCodec(LatentCodec):
    """A diffusers ``AutoencoderKLWan`` (causal 3D VAE): first frame alone, then groups of 2^k frames."""

    name = "vae"

    def __init__(self, vae: torch.nn.Module, path: str, device: str | torch.device = "cpu"):
        self.vae = vae.to(device).eval()
        self.path = path
        self.device = torch.device(device)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * (cfg.patch_size or 1)
        self.temporal_factor = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        mean = cfg.latents_mean if cfg.latents_mean is not None else [0.0] * self.latent_channels
        std = cfg.latents_std if cfg.latents_std is not None else [1.0] * self.latent_channels
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f, k = self.spatial_factor, self.temporal_factor
        if height % f or width % f:
            raise ValueError(f"{self.path}: frame size {height}x{width} is not divisible by the VAE's factor {f}")
        if (frames - 1) % k:
            raise ValueError(
                f"{self.path}: a causal video VAE with temporal factor {k} needs 1 + {k}*n frames, got {frames} "
                f"(e.g. set data.frames to {1 + k * max(1, (frames - 1) // k)})"
            )
        return (self.latent_channels, 1 + (frames - 1) // k, height // f, width // f)

    @torch.no_grad()
    def encode(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = videos_to_model(videos)
        self.latent_shape(*x.shape[2:])
        z = self.vae.encode(x.to(self.device)).latent_dist.mode().float().cpu()
        return (z - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() * self.latents_std + self.latents_mean
        return model_to_videos(self.vae.decode(z.to(self.device)).sample)

    def scaling(self) -> dict[str, Any]:
        return {
            "latents_mean": self.latents_mean.flatten().tolist(),
            "latents_std": self.latents_std.flatten().tolist(),
        }

    def info(self) -> dict[str, Any]:
        return {**super().info(), "vae_class": type(self.vae).__name__, "vae_path": self.path}


_VAE_CODECS: dict[str, type[LatentCodec]] = {"AutoencoderKL": ImageVAECodec, "AutoencoderKLWan": WanVideoCodec}


def load_vae_codec(path: str | Path, device: str | torch.device = "cpu") -> LatentCodec:
    """Build the codec for a diffusers VAE folder (or a pipeline folder with a ``vae/`` sub-folder)."""
    import diffusers

    path = Path(path)
    if not path.is_dir():
        raise CodecLoadError(f"{path}: VAE folder not found (expected a diffusers AutoencoderKL / AutoencoderKLWan)")
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CodecLoadError(f"{path}: no config.json (expected a diffusers save_pretrained VAE folder)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except json.JSONDecodeError as exc:
        raise CodecLoadError(f"{config_file}: not valid JSON: {exc}") from exc
    if class_name not in _VAE_CODECS:
        raise CodecLoadError(
            f"{config_file}: _class_name {class_name!r} is not a supported VAE; "
            f"expected one of {', '.join(_VAE_CODECS)}"
        )
    try:
        vae = getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CodecLoadError(f"{folder}: cannot load {class_name}: {exc}") from exc
    log.info("codec: %s from %s", class_name, folder)
    return _VAE_CODECS[class_name](vae, str(folder), device)


def codec_from_config(cfg: EncodeConfig, device: str | torch.device = "cpu") -> LatentCodec:
    """The codec ``cfg.codec`` names: ``pixel`` or the VAE in ``cfg.vae_path``."""
    if cfg.codec == "pixel":
        return PixelCodec()
    return load_vae_codec(cfg.vae_path, device)
