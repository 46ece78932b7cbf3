"""Compute accounting: analytic FLOPs per optimizer step (for compute matching) and micro-batch sizing from memory.

Compute matching (DESIGN §1): each of K experts gets 1/K of the monolith's training compute. With the same
network and batch for both, FLOPs per step are equal and matching reduces to steps; ``flops_per_step`` makes
that checkable (and lets networks of different sizes be matched) without running anything.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from lib.config import ExpertConfig, RouterConfig
from lib.models.factory import tokens_per_sample

log = logging.getLogger(__name__)

TIME_FREQ_DIM = 256  # Wan's sinusoidal timestep width (diffusers default freq_dim)
MEMORY_HEADROOM = 0.85  # fraction of free device memory a micro-batch may fill (allocator fragmentation, spikes)


def matmul_parameters(cfg: ExpertConfig, in_channels: int, text_dim: int) -> tuple[int, int, int]:
    """Weights of the Wan expert's matrix multiplies, split by what they are applied to.

    Returns:
        (per video token, per text token, per sample): a video token passes the patch embedding,
        every block's self-attention q/k/v/o, cross-attention q/o and feed-forward, and the output projection;
        a text token passes the caption projection and every block's cross-attention k/v; the timestep
        embedding runs once per sample. Biases and norms are left out (they are not matmuls).
    """
    d = cfg.num_heads * cfg.head_dim
    patch = math.prod(cfg.patch_size)
    per_video = in_channels * patch * d + cfg.num_layers * (4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim)
    per_video += d * in_channels * patch
    per_text = text_dim * d + d * d + cfg.num_layers * 2 * d * d
    per_sample = TIME_FREQ_DIM * d + d * d + d * 6 * d
    return per_video, per_text, per_sample


def flops_per_step(
    cfg: ExpertConfig, in_channels: int, sample_shape: tuple[int, int, int], text_len: int, text_dim: int
) -> float:
    """Training FLOPs of one optimizer step (forward + backward over ``cfg.batch_size`` samples).

    Formula, with S = video tokens per sample (prod(sample_shape / patch)), L = text tokens, d = heads x head_dim,
    n = layers and N_v, N_t, N_s the matmul weights applied per video token, per text token and per sample
    (``matmul_parameters``)::

        forward  = 2 (N_v S + N_t L + N_s) + 4 n d (S^2 + S L)     # weights, then self- and cross-attention
        training = 3 x forward                                      # backward costs about twice the forward
        step     = batch_size x training

    i.e. the usual 6 x params x tokens plus the attention score/value products; elementwise work (norms,
    activations, the optimizer) is ignored, as in the Kaplan/Chinchilla accounting.
    """
    per_video, per_text, per_sample = matmul_parameters(cfg, in_channels, text_dim)
    s = tokens_per_sample(cfg, sample_shape)
    d = cfg.num_heads * cfg.head_dim
    forward = 2 * (per_video * s + per_text * text_len + per_sample) + 4 * cfg.num_layers * d * (s * s + s * text_len)
    return float(3 * forward * cfg.batch_size)


def router_flops_per_step(
    cfg: RouterConfig, in_channels: int, sample_shape: tuple[int, int, int], text_dim: int, num_clusters: int
) -> float:
    """Training FLOPs of one router optimizer step (forward + backward over ``cfg.batch_size`` samples).

    The router is trained for the DDM only, so its compute is charged to the DDM's side of the matched-compute
    table (as in McAllister et al. 2025). Same accounting as ``flops_per_step``, for ``lib.models.router``: with
    N = patches (prod(sample_shape / patch)), S = N + 1 tokens (the CLS/conditioning token), d = hidden width,
    n = layers, C = channels, p = prod(patch), D = text width, K = clusters::

        forward  = 2 (C p d N + 12 d^2 n S + 2 d^2 + D d + d K) + 4 n d S^2   # patchify, q/k/v/o + 4d FFN per
                                                                               # token and layer, timestep MLP, text
                                                                               # projection, head; attention scores
        step     = 3 x forward x batch_size
    """
    d, n = cfg.hidden_dim, cfg.num_layers
    patch = math.prod(cfg.patch_size)
    patches = math.prod(s // q for s, q in zip(sample_shape, cfg.patch_size, strict=True))
    tokens = patches + 1
    weights = in_channels * patch * d * patches + 12 * d * d * n * tokens + 2 * d * d + text_dim * d + d * num_clusters
    forward = 2 * weights + 4 * n * d * tokens * tokens
    return float(3 * forward * cfg.batch_size)


def micro_batch_for_memory(
    free_bytes: int, fixed_bytes: int, per_sample_bytes: int, batch_size: int, headroom: float = MEMORY_HEADROOM
) -> int:
    """Largest micro-batch whose activations fit: (headroom x free - fixed) / per-sample, clamped to [1, batch]."""
    if per_sample_bytes <= 0:
        return batch_size
    fits = int((headroom * free_bytes - fixed_bytes) // per_sample_bytes)
    return max(1, min(batch_size, fits))


def probe_micro_batch(
    run_micro: Callable[[int], None], batch_size: int, device: torch.device, reserve_bytes: int = 0
) -> int:
    """Pick the micro-batch for ``device`` from a measured per-sample memory footprint.

    CPU: the whole batch (host memory is not the limit at the sizes we run, and one pass is fastest).
    CUDA: ``run_micro(n)`` (a forward + backward on n samples) is run for 1 and 2 samples; the difference of the
    two peaks is the per-sample footprint, the rest is fixed (weights' gradients, workspaces). Together with
    ``torch.cuda.mem_get_info`` and ``reserve_bytes`` (e.g. the optimizer state still to be allocated) this gives
    the largest micro-batch that fits, so the same task reaches the configured batch on any GPU.
    """
    if device.type != "cuda" or batch_size == 1:
        return batch_size
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run_micro(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_sample = max(1, peaks[1] - peaks[0])
    fixed = max(0, peaks[0] - per_sample) + reserve_bytes
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    micro = micro_batch_for_memory(free, fixed, per_sample, batch_size)
    log.info("micro-batch %d (per sample %.1f MiB, free %.1f GiB)", micro, per_sample / 2**20, free / 2**30)
    return micro
