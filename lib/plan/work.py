"""What one model's training asks of the hardware: FLOPs, weight-state and activation memory, gradient bytes.

FLOPs come from the compute-matching formula (``lib.train.compute.flops_per_step``), so the planner and the
DDM-vs-monolith accounting can never disagree. Memory is analytic, per GPU:

- weight state: fp32 weights + fp32 gradients + AdamW's two moments + the fp32 EMA copy = 20 bytes per parameter;
- activations per sample under bf16 autocast with a fused (flash) attention kernel: about 34 bytes per token and
  channel per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  without the attention-matrix term a flash kernel never stores); with activation checkpointing only each block's
  input (2 bytes per token and channel per layer) is kept, plus one block's full set during its recomputation,
  which costs one more forward pass (training = 4 forwards instead of 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lib.config import ExpertConfig
from lib.models.factory import tokens_per_sample
from lib.train.compute import MEMORY_HEADROOM, flops_per_step, matmul_parameters

WEIGHT_STATE_BYTES = 20  # per parameter: weights, gradients, Adam m and v, EMA (all fp32)
GRAD_BYTES = 4  # DDP all-reduces fp32 gradients
ACTIVATION_BYTES = 34  # per token x channel x layer, bf16, flash attention
CHECKPOINTED_BYTES = 2  # per token x channel x layer: the block input kept under activation checkpointing
RECOMPUTE_FACTOR = 4 / 3  # forward + backward (3 forwards) plus one recomputed forward


@dataclass(frozen=True)
class TrainingWork:
    """One model to train: ``steps`` optimizer steps of ``batch_size`` samples."""

    name: str
    steps: int
    batch_size: int
    flops_per_sample: float  # forward + backward of one sample
    tokens_per_sample: int  # video tokens the transformer sees per sample
    parameters: int
    activation_bytes_per_sample: float  # without activation checkpointing
    checkpointed_bytes_per_sample: float  # with it (block inputs + one block)

    @property
    def total_flops(self) -> float:
        return self.flops_per_sample * self.batch_size * self.steps

    @property
    def size_key(self) -> str:
        """How a pool's measured ``tokens_per_s`` names this model: parameters in millions, rounded."""
        return str(round(self.parameters / 1e6))

    @property
    def weight_state_bytes(self) -> float:
        return WEIGHT_STATE_BYTES * self.parameters

    @property
    def gradient_bytes(self) -> float:
        return GRAD_BYTES * self.parameters


def training_work(
    name: str, cfg: ExpertConfig, in_channels: int, sample_shape: tuple[int, int, int], text_len: int, text_dim: int
) -> TrainingWork:
    """The work of training one network of ``cfg`` (an expert or the monolith) on latents of this shape."""
    per_video, per_text, per_sample = matmul_parameters(cfg, in_channels, text_dim)
    d = cfg.num_heads * cfg.head_dim
    norms = cfg.num_layers * 6 * d  # biases and norm scales: small, counted for the memory estimate
    s = tokens_per_sample(cfg, sample_shape)
    layer_activations = s * d * cfg.num_layers
    return TrainingWork(
        name=name,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        flops_per_sample=flops_per_step(cfg, in_channels, sample_shape, text_len, text_dim) / cfg.batch_size,
        tokens_per_sample=s,
        parameters=per_video + per_text + per_sample + norms,
        activation_bytes_per_sample=ACTIVATION_BYTES * layer_activations,
        checkpointed_bytes_per_sample=CHECKPOINTED_BYTES * layer_activations + ACTIVATION_BYTES * s * d,
    )


def micro_batch_on(work: TrainingWork, memory_bytes: float, per_gpu_batch: int, checkpointing: bool) -> int:
    """Largest micro-batch that fits next to the weight state (0: not even one sample fits), with the trainer's
    headroom (``lib.train.compute.MEMORY_HEADROOM``)."""
    per_sample = work.checkpointed_bytes_per_sample if checkpointing else work.activation_bytes_per_sample
    free = MEMORY_HEADROOM * memory_bytes - work.weight_state_bytes
    return max(0, min(per_gpu_batch, math.floor(free / per_sample))) if free > 0 else 0
