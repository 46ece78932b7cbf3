"""The schedules of every network the pipeline trains (experts, monolith, learned codec): learning rate and EMA decay.

Pure functions of the step, so the step is the whole scheduler state.
"""

from __future__ import annotations

import math

from lib.config import ExpertConfig

COSINE_FLOOR = 0.1  # cosine schedule ends at this fraction of cfg.lr (nanoGPT's min_lr = lr / 10)
EMA_WARMUP = 10  # EMA decay ramps as (1 + step) / (EMA_WARMUP + step) so short runs do not keep the init weights


def lr_at(step: int, cfg: ExpertConfig) -> float:
    """Learning rate of 0-based optimizer step ``step``: linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``,
    then constant, or cosine down to ``COSINE_FLOOR * cfg.lr`` at the last step."""
    if cfg.lr_schedule == "constant" and step >= cfg.warmup_steps:
        return cfg.lr
    return warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)


def warmup_cosine_lr(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine down to ``COSINE_FLOOR * lr`` at step ``steps - 1``
    (the schedule of every network the pipeline trains: experts, monolith, learned codec)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    floor = COSINE_FLOOR * lr
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay for 0-based ``step``: ``min(decay, (1 + step) / (EMA_WARMUP + step))``."""
    return min(decay, (1 + step) / (EMA_WARMUP + step))
