"""A mixture of isotropic Gaussians whose experts and router are exact: the reference a routing strategy is judged on.

Why it exists: with learned experts a strategy's bias hides behind the experts' own errors. Here every expert is
the exact flow-matching velocity of its component and the router the exact posterior, so whatever a sampler does to
the component proportions is the strategy's doing (and Euler's), measurable to sampling error.

Data: x0 ~ sum_k pi_k N(mu_k, s_k^2 I). For component k and x_t = (1 - t) x0 + t eps, with a = 1 - t and
var_k = a^2 s_k^2 + t^2:
    E[x0 | x_t = x, k] = mu_k + a s_k^2 (x - a mu_k) / var_k,   E[eps | x_t = x, k] = t (x - a mu_k) / var_k,
    v_k(x, t) = E[eps - x0 | x_t = x, k],   p(k | x_t = x) ∝ pi_k N(x; a mu_k, var_k I),
and the mixture's velocity is sum_k p(k | x) v_k(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lib.sample.ddm import ExpertHandle, sample_ddm


@dataclass(frozen=True)
class GaussianMixture:
    """Means [K, D], standard deviations [K] and weights [K] (summing to 1); samples have shape ``shape`` = D."""

    mus: torch.Tensor
    stds: torch.Tensor
    pis: torch.Tensor
    shape: tuple[int, ...]  # per-sample latent shape [C, T, H, W], prod = D

    def __post_init__(self) -> None:
        k, d = self.mus.shape
        if self.stds.shape != (k,) or self.pis.shape != (k,):
            raise ValueError(f"mixture: {k} means need {k} stds and weights, got {tuple(self.stds.shape)}, "
                             f"{tuple(self.pis.shape)}")  # fmt: skip
        if math.prod(self.shape) != d:
            raise ValueError(f"mixture: shape {self.shape} holds {math.prod(self.shape)} values, means have {d}")
        if not math.isclose(float(self.pis.sum()), 1.0, abs_tol=1e-9) or bool((self.pis <= 0).any()):
            raise ValueError(f"mixture: weights must be positive and sum to 1, got {self.pis.tolist()}")

    @property
    def num_components(self) -> int:
        return self.mus.shape[0]

    def _terms(self, x: torch.Tensor, t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = t.double()[:, None]
        a = 1 - t
        var = a**2 * self.stds[k].double() ** 2 + t**2  # [B, 1]
        return t, var, x.reshape(x.shape[0], -1).double() - a * self.mus[k].double()

    def eps(self, x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        """E[eps | x_t = x, component k], shaped like ``x``."""
        t, var, r = self._terms(x, t, k)
        return (t * r / var).reshape(x.shape).to(x.dtype)

    def x0(self, x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        """E[x0 | x_t = x, component k], shaped like ``x``."""
        t, var, r = self._terms(x, t, k)
        return (self.mus[k].double() + (1 - t) * self.stds[k].double() ** 2 * r / var).reshape(x.shape).to(x.dtype)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        """The exact flow velocity of component k."""
        return self.eps(x, t, k) - self.x0(x, t, k)

    def logits(self, x: torch.Tensor, t: torch.Tensor, pooled: object = None) -> torch.Tensor:
        """log pi_k + log N(x; a mu_k, var_k I): the exact router's logits [B, K] (``pooled`` is ignored)."""
        d = math.prod(self.shape)
        cols = []
        for k in range(self.num_components):
            _, var, r = self._terms(x, t, k)
            log_norm = -0.5 * (r**2).sum(1) / var[:, 0] - 0.5 * d * torch.log(2 * math.pi * var[:, 0])
            cols.append(math.log(float(self.pis[k])) + log_norm)
        return torch.stack(cols, 1)

    def experts(self) -> dict[int, ExpertHandle]:
        """One exact flow expert per component, keyed by component id (unconditional: ``cond`` is ignored)."""
        return {k: ExpertHandle(lambda x, t, cond, k=k: self.velocity(x, t, k), "flow", k)
                for k in range(self.num_components)}  # fmt: skip

    def component_of(self, x0: torch.Tensor) -> torch.Tensor:
        """The component each clean sample most likely came from ([B] long): its posterior argmax at t = 0."""
        return self.logits(x0, torch.zeros(x0.shape[0])).argmax(1)

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` exact draws [count, *shape] and their components [count]."""
        ks = torch.multinomial(self.pis.double(), count, replacement=True, generator=generator)
        z = torch.randn(count, self.mus.shape[1], generator=generator, dtype=torch.float64)
        x = self.mus.double()[ks] + self.stds.double()[ks, None] * z
        return x.reshape(count, *self.shape).float(), ks


@dataclass(frozen=True)
class StrategyCheck:
    """What a routing strategy does to the mixture: sampled component shares against the weights, the spread of
    each component's samples against its true standard deviation, and the work per sample."""

    strategy: str
    num_steps: int
    shares: list[float]  # share of samples in each component (``component_of``)
    z_scores: list[float]  # (share - pi_k) / its binomial standard error under the weights
    spreads: list[float]  # per component: std of its samples (per coordinate) / s_k; 1 is exact
    expert_passes: float  # expert forward rows per sample (no CFG here: one row per selected expert and step)
    router_passes: float  # router forward rows per sample


def check_strategy(
    mixture: GaussianMixture, strategy: str, count: int, num_steps: int, seed: int, top_k: int = 2
) -> StrategyCheck:
    """Sample ``count`` points with the exact experts and router under ``strategy`` and compare with the mixture."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, *mixture.shape, generator=gen)
    uniforms = torch.rand(count, num_steps, generator=gen)
    result = sample_ddm(mixture.experts(), mixture.logits, noise, None, strategy=strategy, top_k=top_k,
                        num_steps=num_steps, route_uniforms=uniforms)  # fmt: skip
    ks = mixture.component_of(result.x0)
    pis = mixture.pis.double()
    shares = torch.bincount(ks, minlength=mixture.num_components).double() / count
    z = (shares - pis) / (pis * (1 - pis) / count).sqrt()
    flat = result.x0.reshape(count, -1).double()
    spreads = []
    for k in range(mixture.num_components):
        mine = flat[ks == k]
        spread = float((mine - mixture.mus[k].double()).pow(2).mean().sqrt() / mixture.stds[k]) if len(mine) else 0.0
        spreads.append(spread)
    return StrategyCheck(
        strategy, num_steps, shares.tolist(), z.tolist(), spreads, result.stats.total_rows / count,
        result.stats.router_calls,
    )  # fmt: skip
