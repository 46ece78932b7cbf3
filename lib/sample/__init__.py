"""DDM sampling: routing strategies, per-expert CFG, eps -> v conversion (see lib.sample.ddm)."""

from lib.sample.ddm import (
    ExpertHandle,
    SampleResult,
    SamplerStats,
    eps_to_velocity,
    mix_velocity,
    routing_weights,
    sample_ddm,
)

__all__ = [
    "ExpertHandle",
    "SampleResult",
    "SamplerStats",
    "eps_to_velocity",
    "mix_velocity",
    "routing_weights",
    "sample_ddm",
]
