"""A few built-in clips as training data and a tiny expert, shared by the trainer tests and the torchrun worker."""

import torch

from lib.config import ExpertConfig
from lib.data.procedural import iter_builtin_clips
from lib.train.trainer import TrainData

# 2 layers of width 32 on 4x16x16 clips: seconds per run; each test file replaces what it varies
TINY_EXPERT = ExpertConfig(
    num_layers=2,
    num_heads=2,
    head_dim=16,
    ffn_dim=64,
    patch_size=[2, 4, 4],
    steps=12,
    batch_size=8,
    lr=2e-3,
    warmup_steps=2,
    checkpoint_every=3,
    log_every=4,
)


def tiny_train_data(num_clips: int) -> TrainData:
    """``num_clips`` built-in clips (4x16x16, pixel codec) with seeded random caption tokens (5 real of 8)."""
    clips = list(iter_builtin_clips(seed=0, num_clips=num_clips, frames=4, height=16, width=16))
    latents = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in clips])
    tokens = torch.randn(len(clips), 8, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(len(clips), 8, dtype=torch.bool)
    mask[:, 5:] = False
    return TrainData([c.clip_id for c in clips], latents, tokens, mask)
