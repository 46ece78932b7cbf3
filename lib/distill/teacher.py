"""The DDM as a teacher: its routed mixture velocity v(x_t, t | caption) as the target of one dense student.

The target is exactly what the DDM integrates when it samples (``lib.sample.ddm``): the router's posterior at
(x_t, t, pooled caption), reduced by the routing strategy, weights each selected expert's velocity, with CFG per
expert at ``guidance_scale``. Rows whose caption the trainer dropped get the mixture of the experts' unconditional
velocities under the same weights, which is what the DDM's CFG subtracts; so a student trained on these targets can
be sampled with CFG like any expert. Deterministic strategies only (top1, topk, full): a resumed run must see the
same targets.
"""

from __future__ import annotations

import torch

from lib.sample.ddm import SamplerStats, mix_velocity, routing_weights
from lib.sample.pipeline import DDMPipeline
from lib.strategy import ROUTED


class MixtureTeacher:
    """``teacher(x_t, t, clip indices, caption kept) -> v`` for ``lib.train.trainer.train``.

    Args:
        pipe: the DDM (``DDMPipeline.from_pretrained``), on the student's device.
        tokens: caption token embeddings of the training clips [N, L, D] (the trainer's ``TrainData.tokens``).
        mask: their masks [N, L].
        pooled: their pooled caption vectors [N, P], what the router reads.
        strategy: top1 | topk | full.
        top_k: experts kept by topk.
        guidance_scale: CFG scale of the teacher on captioned rows.
    """

    def __init__(
        self,
        pipe: DDMPipeline,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        strategy: str = "topk",
        top_k: int = 2,
        guidance_scale: float = 1.0,
    ):
        if strategy not in ("top1", "topk", "full"):
            raise ValueError(f"teacher strategy must be top1, topk or full (deterministic), got {strategy!r}")
        if pipe.router is None and strategy in ROUTED:
            raise ValueError(f"{pipe.name}: the DDM has no router; a teacher needs one")
        if not (len(tokens) == len(mask) == len(pooled)):
            raise ValueError(f"teacher: {len(tokens)} token rows, {len(mask)} masks, {len(pooled)} pooled vectors")
        self.pipe, self.strategy, self.top_k, self.guidance_scale = pipe, strategy, top_k, guidance_scale
        self.tokens, self.mask, self.pooled = tokens, mask, pooled
        self.handles = {k: (pipe.handle(k) if m is not None else None) for k, m in pipe.experts.items()}
        self.alive = torch.tensor([m is not None for m in pipe.experts.values()], dtype=torch.bool)
        self.stats = SamplerStats()  # expert passes spent on targets: the distillation's extra compute

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        device = self.pipe.device
        x_t, t = x_t.to(device).float(), t.to(device).float()
        tokens, mask = self.tokens[idx].to(device), self.mask[idx].to(device) & keep.to(device)[:, None]
        logits = self.pipe.router(x_t, t, self.pooled[idx].to(device))
        weights = routing_weights(logits, self.alive, self.strategy, self.top_k).to(device)
        self.stats.router_calls += 1
        uncond = (torch.zeros_like(tokens), torch.zeros_like(mask))
        return mix_velocity(self.handles, weights, x_t, t, (tokens, mask), uncond, self.guidance_scale, self.stats)
