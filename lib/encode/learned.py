"""A latent codec the pipeline trains for itself: a small diffusers ``AutoencoderKL`` applied frame by frame.

Why: every real video diffusion system trains its transformer in a learned latent space, not on pixels. The
autoencoder draws the sharp edges and flat fills; the transformer only has to place a few latent cells per object.
Where no pretrained VAE fits the data (the built-in dataset's 32x32 frames, or footage unlike a public VAE's), the
pipeline trains one on the train clips (never on held-out ones), with the recipe kept small enough for a CPU:
L1 reconstruction plus a small KL term, latents taken from a posterior sample while training (so the decoder
tolerates the small errors a diffusion model leaves) and from the posterior mode when encoding.

After training, the latents of the train frames set ``shift_factor`` (mean) and ``scaling_factor`` (1 / std) in the
VAE's config, so the stored latents have zero mean and unit variance, like the noise they are mixed with. The result
is an ordinary diffusers folder: ``lib.encode.codec.ImageVAECodec`` loads it as it loads any ``AutoencoderKL``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from lib.config import CodecConfig
from lib.encode.codec import ImageVAECodec, videos_to_model
from lib.models.schedule import warmup_cosine_lr
from lib.progress import progress
from lib.seeding import derive_seed, torch_generator

log = logging.getLogger(__name__)

REPORT_FILE = "codec_report.json"
VAE_DIR = "vae"  # a learned codec's VAE folder, wherever it lives: codec, encoded and DDM folders
_STAT_FRAMES = 4096  # train frames whose latents set the shift and scale
INITIAL_LOGVAR = -6.0


@dataclass(frozen=True)
class CodecReport:
    """What ``train_codec`` measured; written next to the VAE as ``codec_report.json``."""

    psnr_heldout: float  # dB, uint8 round trip (encode mode -> decode -> round) on held-out clips
    psnr_train: float  # dB, the same on as many train clips
    seconds: float  # training wall time (charged to every model trained on the latents)
    steps: int
    parameters: int
    frames_seen: int
    shift_factor: float
    scaling_factor: float
    final_l1: float

    def summary(self) -> str:
        return (
            f"learned codec: held-out PSNR {self.psnr_heldout:.2f} dB (train {self.psnr_train:.2f}), "
            f"{self.parameters / 1e6:.2f}M parameters, {self.steps} steps in {self.seconds:.0f} s"
        )


def build_vae(cfg: CodecConfig, sample_size: int) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=False,  # at 8x8 a 3x3 conv already sees most of the frame; attention doubled the cost
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, in dB over all their pixels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _frames(videos: np.ndarray) -> torch.Tensor:
    """uint8 [N, T, H, W, C] -> float [N*T, C, H, W] in [-1, 1]."""
    x = videos_to_model(videos)  # [N, C, T, H, W]
    return x.permute(0, 2, 1, 3, 4).reshape(-1, *x.shape[1:2], *x.shape[3:])


def _round_trip_psnr(vae: AutoencoderKL, videos: np.ndarray) -> float:
    codec = ImageVAECodec(vae, "in-training")
    return psnr(videos, codec.decode(codec.encode(videos)).numpy())


def train_codec(
    train_videos: np.ndarray, heldout_videos: np.ndarray, cfg: CodecConfig, seed: int, out_dir: str | Path
) -> tuple[Path, CodecReport]:
    """Train the codec on ``train_videos``; returns (VAE folder, report). A finished folder is reused as is.

    Args:
        train_videos: uint8 [N, T, H, W, 3] train-role clips (all of them, or a seeded subset the caller picks).
        heldout_videos: uint8 [M, T, H, W, 3] clips no model trains on (validation role), for the reported PSNR.
        cfg: architecture and optimisation (``codec.*``).
        seed: initial weights, frame order and posterior samples all derive from it.
        out_dir: the codec's folder: ``vae/`` (diffusers ``save_pretrained``) and ``codec_report.json``; written
            to a temporary folder and renamed into place, so a crash never leaves a half-written codec.
    """
    out_dir = Path(out_dir)
    if (out_dir / REPORT_FILE).is_file() and (out_dir / VAE_DIR / "config.json").is_file():
        return out_dir / VAE_DIR, CodecReport(**json.loads((out_dir / REPORT_FILE).read_text()))
    if train_videos.ndim != 5 or train_videos.dtype != np.uint8 or len(train_videos) == 0:
        raise ValueError(f"train_codec: expected uint8 [N>0, T, H, W, C] videos, got {train_videos.dtype} "
                         f"{train_videos.shape}")  # fmt: skip
    height, width = train_videos.shape[2:4]
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(f"codec.block_out_channels downsample by {factor}; frames {height}x{width} do not divide")
    frames = _frames(train_videos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "codec-init"))
        vae = build_vae(cfg, max(height, width))
        with torch.no_grad():  # start near-deterministic (posterior std ~0.05), or the decoder first sees only noise
            vae.quant_conv.bias[cfg.latent_channels :].fill_(INITIAL_LOGVAR)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    order = torch_generator(seed, "codec-batches")
    noise = torch_generator(seed, "codec-posterior")
    t0, l1_window = time.perf_counter(), []
    vae.train()
    for step in progress(range(cfg.steps), desc="codec", unit="step"):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        x = frames[torch.randint(len(frames), (cfg.batch_size,), generator=order)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=noise)).sample
        l1 = (recon - x).abs().mean()
        kl = posterior.kl().mean() / math.prod(posterior.mean.shape[1:])
        loss = l1 + cfg.kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_codec: non-finite loss at step {step}; lower codec.lr (now {cfg.lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        l1_window = (l1_window + [l1.item()])[-50:]
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log.info("codec step %d/%d L1 %.4f KL %.3f (%.0f s)", step + 1, cfg.steps, np.mean(l1_window), kl.item(),
                     time.perf_counter() - t0)  # fmt: skip
    seconds = time.perf_counter() - t0
    vae.eval()
    with torch.no_grad():
        pick = torch.randperm(len(frames), generator=torch_generator(seed, "codec-stats"))[:_STAT_FRAMES]
        z = torch.cat([vae.encode(frames[pick[i : i + 256]]).latent_dist.mode() for i in range(0, len(pick), 256)])
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    report = CodecReport(
        psnr_heldout=_round_trip_psnr(vae, heldout_videos),
        psnr_train=_round_trip_psnr(vae, train_videos[: len(heldout_videos)]),
        seconds=seconds,
        steps=cfg.steps,
        parameters=sum(p.numel() for p in vae.parameters()),
        frames_seen=cfg.steps * cfg.batch_size,
        shift_factor=shift,
        scaling_factor=scale,
        final_l1=float(np.mean(l1_window)),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    vae.save_pretrained(tmp / VAE_DIR)
    (tmp / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info(report.summary())
    return out_dir / VAE_DIR, report
