"""Flow-matching loss on held-out clips, measured the same way for every model.

The training loss is a running mean over random t and noise, so two runs (or two points of one run) cannot be
compared by it. Here t runs over a fixed grid and the noise comes from the seed, so the number moves only when the
model does. It is comparable between models over the same latents (same codec); across codecs the spaces differ.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin

from lib.models.factory import expert_forward
from lib.seeding import torch_generator
from lib.train.trainer import flow_matching_batch

T_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def heldout_loss(
    model: ModelMixin,
    latents: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    objective: str,
    seed: int,
    batch_size: int = 64,
) -> float:
    """Mean squared error of the model's prediction over clips x ``T_GRID`` (captions kept, no dropout).

    Args:
        model: a trained expert or monolith (eval mode is set here).
        latents: float32 [N, C, T, H, W] held-out latents.
        tokens: float32 [N, L, D] caption tokens; mask: bool [N, L].
        objective: the model's objective (``flow`` or ``eps``), which fixes the regression target.
        seed: noise seed; the same seed gives the same noise for every model.
    """
    if len(latents) == 0:
        raise ValueError("heldout_loss: no held-out clips")
    model.eval()
    generator = torch_generator(seed, "heldout-noise")
    total, count = 0.0, 0
    for t_value in T_GRID:
        for s in range(0, len(latents), batch_size):
            x0 = latents[s : s + batch_size]
            eps = torch.randn(x0.shape, generator=generator)
            t = torch.full((len(x0),), t_value)
            x_t, target = flow_matching_batch(x0, t, eps, objective)
            pred = expert_forward(model, x_t, t, tokens[s : s + batch_size], mask[s : s + batch_size])
            total += float(((pred.float() - target) ** 2).mean(dim=(1, 2, 3, 4)).sum())
            count += len(x0)
    return total / count
