"""The router: a small transformer classifier p(cluster | x_t, t, pooled text).

Why a separate, small network: the router is trained independently of the experts (it only needs latents and
cluster labels, DESIGN §3) and runs once per denoising step without CFG, so it must be cheap next to an expert.
It sees the noisy latent as coarse 3-D patches (one Conv3d with stride = patch), a timestep embedding (near
t = 1 the latent carries almost no information and only the text can), and the pooled caption vector.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# Timesteps is a DDPM-style sinusoidal embedding tuned for integer steps in [0, 1000); t in [0, 1] is scaled to it.
TIMESTEP_SCALE = 1000.0


class RouterModel(ModelMixin, ConfigMixin):
    """Cluster classifier over noisy latents.

    Tokens: one conditioning token (learned CLS + timestep embedding + projected pooled text) followed by the
    patch tokens (Conv3d patchify + learned position embedding + timestep embedding). A pre-norm transformer
    encoder mixes them and the CLS output is mapped to K logits.

    Args:
        in_channels: latent channels C.
        sample_shape: latent size [T, H, W] (default [8, 32, 32]); divisible by the patch size.
        patch_size: patch size [pt, ph, pw] (default [2, 8, 8]).
        text_dim: width D of the pooled text vector.
        hidden_dim: transformer width.
        num_layers: transformer encoder layers.
        num_heads: attention heads; must divide hidden_dim.
        num_clusters: K, the number of logits.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_shape: list[int] | None = None,
        patch_size: list[int] | None = None,
        text_dim: int = 384,
        hidden_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        num_clusters: int = 3,
    ):
        super().__init__()
        sample_shape = list(sample_shape or [8, 32, 32])
        patch_size = list(patch_size or [2, 8, 8])
        if len(sample_shape) != 3 or len(patch_size) != 3:
            raise ValueError(f"RouterModel: sample_shape {sample_shape} and patch_size {patch_size} need 3 ints each")
        bad = [(s, p) for s, p in zip(sample_shape, patch_size, strict=True) if p <= 0 or s % p]
        if bad:
            raise ValueError(f"RouterModel: sample_shape {sample_shape} is not divisible by patch_size {patch_size}")
        if hidden_dim % num_heads:
            raise ValueError(f"RouterModel: hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        if num_clusters < 1:
            raise ValueError(f"RouterModel: num_clusters must be >= 1, got {num_clusters}")
        num_patches = 1
        for s, p in zip(sample_shape, patch_size, strict=True):
            num_patches *= s // p

        self.patch_embed = nn.Conv3d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, hidden_dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.time_proj = Timesteps(hidden_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(hidden_dim, hidden_dim)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, dim_feedforward=4 * hidden_dim, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_clusters)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        """Logits over clusters.

        Args:
            hidden_states: noisy latents x_t, [B, C, T, H, W].
            timestep: t in [0, 1], [B] or a scalar (broadcast over the batch).
            pooled_text: pooled caption vectors, [B, D].

        Returns:
            Logits [B, K].
        """
        cfg = self.config
        expected = (cfg.in_channels, *cfg.sample_shape)
        if hidden_states.ndim != 5 or tuple(hidden_states.shape[1:]) != expected:
            raise ValueError(f"RouterModel: hidden_states {tuple(hidden_states.shape)} is not [B, {expected}]")
        batch = hidden_states.shape[0]
        if pooled_text.shape != (batch, cfg.text_dim):
            raise ValueError(f"RouterModel: pooled_text {tuple(pooled_text.shape)} is not [{batch}, {cfg.text_dim}]")
        timestep = torch.as_tensor(timestep, device=hidden_states.device).float().reshape(-1).expand(batch)
        dtype = self.patch_embed.weight.dtype

        temb = self.time_embed(self.time_proj(timestep * TIMESTEP_SCALE).to(dtype))  # [B, hidden]
        patches = self.patch_embed(hidden_states.to(dtype)).flatten(2).transpose(1, 2)  # [B, N, hidden]
        patches = patches + self.pos_embed + temb[:, None]
        cls = self.cls_token.expand(batch, -1, -1) + (temb + self.text_proj(pooled_text.to(dtype)))[:, None]
        tokens = self.encoder(torch.cat([cls, patches], dim=1))  # [B, 1 + N, hidden]
        return self.head(self.norm_out(tokens[:, 0]))  # [B, K]
