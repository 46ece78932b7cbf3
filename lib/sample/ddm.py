"""The DDM sampler: Euler integration of a router-weighted mixture of expert velocities.

Why this shape: a decentralized diffusion model is a mixture p(x) = sum_k pi_k p_k(x) whose experts were trained
apart. Its exact flow-matching velocity is v(x_t, t) = sum_k p(k | x_t) v_k(x_t, t): each expert's velocity weighted
by the posterior of its cluster given the noisy sample, which is what the router estimates. Strategies sparsify the
weights (top-1, top-k renormalised, the full posterior) or replace them (the true cluster, one fixed expert).

``sample`` runs one expert per step, like top-1, but draws it from the posterior instead of taking the argmax: its
velocity is an unbiased estimate of the mixture's, so it does not push samples toward the largest cluster the way
top-1 does early in sampling, where the posterior is still close to the prior. A schedule switches strategies at
given times: ``topk>top1@0.5`` mixes the top two while t > 0.5 and takes the argmax from there on (the posterior is
sharp late in sampling, so top-1 costs little there); ``sample>top1@0.6``, ``full>topk@0.8>top1@0.3`` likewise.

The sampler is written against a small protocol, not against the expert networks: an expert is any callable
``predict(x_t [B, C, T, H, W], t [B] in [0, 1], cond) -> tensor`` plus its training objective ("flow" predicts
v = eps - x0; "eps" predicts the noise and is converted here). ``cond`` / ``uncond`` are opaque "batch trees" the
caller builds for the whole batch: a tensor with the batch first, a tuple/list/dict of batch trees, or None. The
sampler only slices and concatenates them along the batch, so the real experts can take (token embeddings, mask)
while the tests pass plain tensors.

Efficiency: per step, only experts selected by at least one sample run, each once, on the sub-batch of samples
that selected it, with the conditional and unconditional halves concatenated into one forward pass. A weight that
is exactly zero (a probability that underflowed under "full") selects nothing, so the expert is skipped for that
sample: its term in the mixture is zero anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lib.config import SampleConfig
from lib.sample.batch_tree import cat_trees, take_tree
from lib.strategy import ROUTED, parse_schedule, parse_strategy, strategy_at

OBJECTIVES = ("flow", "eps")
DEFAULT_X0_CLAMP = SampleConfig.eps_x0_clamp  # |x0_hat| bound for eps experts
DEFAULT_ALPHA_FLOOR = SampleConfig.eps_alpha_floor  # smallest 1 - t divided by when recovering x0 (t = 1: 1 - t = 0)

Predict = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Router = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class ExpertHandle:
    """One expert as the sampler sees it.

    Attributes:
        predict: ``predict(x_t, t, cond) -> output`` with x_t [B, C, T, H, W], t [B] in [0, 1].
        objective: "flow" (output is v = eps - x0) or "eps" (output is the noise; converted to v).
        cluster_id: the cluster the expert was trained on (its router logit index).
    """

    predict: Predict
    objective: str
    cluster_id: int

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"expert {self.cluster_id}: objective {self.objective!r} is not one of {OBJECTIVES}")


@dataclass
class SamplerStats:
    """Work done by the sampler, for efficiency tests and benchmarks.

    Attributes:
        expert_calls: forward passes per expert id (one per step in which the expert was selected).
        expert_rows: batch rows evaluated per expert id (the CFG halves count separately).
        router_calls: router forward passes (one per step when the strategy uses the router).
    """

    expert_calls: dict[int, int] = field(default_factory=dict)
    expert_rows: dict[int, int] = field(default_factory=dict)
    router_calls: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.expert_rows.values())

    @property
    def total_calls(self) -> int:
        return sum(self.expert_calls.values())


@dataclass(frozen=True)
class SampleResult:
    """Output of ``sample_ddm``.

    Attributes:
        x0: the samples at t = 0, [B, C, T, H, W].
        weights: mixing weight of every expert at every step, [num_steps, B, K] (zero for unselected experts).
        timesteps: t at which each step evaluated the velocity, [num_steps].
        stats: work counters.
    """

    x0: torch.Tensor
    weights: torch.Tensor
    timesteps: torch.Tensor
    stats: SamplerStats


def eps_to_velocity(
    eps_hat: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clamp: float = DEFAULT_X0_CLAMP,
    alpha_floor: float = DEFAULT_ALPHA_FLOOR,
) -> torch.Tensor:
    """Flow velocity from a noise prediction (heterogeneous DDM: an eps expert among flow experts).

    With x_t = (1 - t) x0 + t eps (alpha_t = 1 - t, sigma_t = t): x0_hat = (x_t - t eps_hat) / max(1 - t, floor),
    clamped to [-clamp, clamp], and v = eps_hat - x0_hat. Without clamping this is exact: the same (x0, eps) give
    v = eps - x0. The floor and clamp keep t -> 1, where x0 is unidentifiable from eps, from blowing up.

    Args:
        eps_hat: predicted noise [B, ...].
        x_t: the noisy sample it was predicted from [B, ...].
        t: time in [0, 1], [B].
        clamp: bound on |x0_hat|.
        alpha_floor: smallest value of 1 - t to divide by.

    Returns:
        v [B, ...].
    """
    t = _per_sample(t, x_t)
    x0_hat = ((x_t - t * eps_hat) / (1 - t).clamp(min=alpha_floor)).clamp(-clamp, clamp)
    return eps_hat - x0_hat


def routing_weights(
    logits: torch.Tensor | None,
    alive: torch.Tensor,
    strategy: str,
    top_k: int = 2,
    oracle_clusters: torch.Tensor | None = None,
    batch: int | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mixing weights [B, K] of one step; each row sums to 1 and is zero on missing experts.

    Missing experts are removed before the softmax (their logits set to -inf), so the router's probabilities are
    renormalised over the survivors and a probability on a missing expert can never receive weight.

    Args:
        logits: router logits [B, K]; needed by top1, topk, full and sample.
        alive: bool [K], True where the expert exists.
        strategy: top1 | topk | full | sample | oracle | expert:<id>.
        top_k: experts kept by topk (capped at the number of survivors).
        oracle_clusters: true cluster per sample [B], for oracle.
        batch: B, needed when logits is None.
        uniforms: one number in [0, 1) per sample [B], for sample: the expert whose posterior CDF interval holds it
            is drawn (inverse-CDF sampling, so the caller's seeded numbers make the draw reproducible).

    Returns:
        weights [B, K], float32.
    """
    name, fixed = parse_strategy(strategy)
    num = alive.numel()
    if not alive.any():
        raise ValueError("no expert is available: every expert failed training")
    if name in ROUTED:
        if logits is None:
            raise ValueError(f"strategy {strategy!r} needs a router")
        if logits.ndim != 2 or logits.shape[1] != num:
            raise ValueError(f"router logits {tuple(logits.shape)} do not match {num} experts")
        probs = logits.float().masked_fill(~alive.to(logits.device), float("-inf")).softmax(dim=1)
        if name == "full":
            return probs
        if name == "sample":
            if uniforms is None or uniforms.shape != (probs.shape[0],):
                raise ValueError(f"strategy 'sample' needs one uniform number per sample ([{probs.shape[0]}])")
            cdf = probs.cumsum(dim=1)
            cdf = cdf / cdf[:, -1:]  # exactly 1 at the end, so every u < 1 falls in some expert's interval
            chosen = (cdf <= uniforms.to(cdf.device, cdf.dtype)[:, None]).sum(dim=1)  # first k with cdf_k > u
            return torch.nn.functional.one_hot(chosen, num).float()
        k = 1 if name == "top1" else min(top_k, int(alive.sum()))
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        top = probs.topk(k, dim=1)
        weights = torch.zeros_like(probs).scatter(1, top.indices, top.values)
        return weights / weights.sum(dim=1, keepdim=True)
    if name == "oracle":
        if oracle_clusters is None:
            raise ValueError("strategy 'oracle' needs oracle_clusters (the true cluster of each sample)")
        chosen = oracle_clusters.long()
    else:
        chosen = torch.full((batch if logits is None else logits.shape[0],), fixed, dtype=torch.long)
    if chosen.numel() and (chosen.min() < 0 or chosen.max() >= num):
        raise ValueError(f"strategy {strategy!r}: cluster ids {chosen.unique().tolist()} outside [0, {num})")
    missing = sorted(set(chosen.unique().tolist()) - set(alive.nonzero().flatten().tolist()))
    if missing:
        raise ValueError(f"strategy {strategy!r}: expert(s) {missing} are missing (failed training)")
    return torch.nn.functional.one_hot(chosen, num).float()


def mix_velocity(
    experts: Mapping[int, ExpertHandle | None],
    weights: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Any,
    uncond: Any,
    guidance_scale: float,
    stats: SamplerStats | None = None,
    clamp: float = DEFAULT_X0_CLAMP,
    alpha_floor: float = DEFAULT_ALPHA_FLOOR,
) -> torch.Tensor:
    """sum_k weights[:, k] * v_k with per-expert CFG, running each selected expert once on its sub-batch.

    CFG is applied in the expert's own output space, v_uncond + w (v_cond - v_uncond) (for eps experts before the
    conversion to v, which is affine in eps_hat, so this equals guiding the converted velocities unless the x0
    clamp engages). With ``guidance_scale == 1`` or ``uncond is None`` the unconditional half is not computed.

    Args:
        experts: expert per cluster id (None: failed training).
        weights: [B, K] from ``routing_weights``.
        x_t: current samples [B, C, T, H, W].
        t: current time [B].
        cond: conditional batch tree for the whole batch.
        uncond: unconditional batch tree (or None: no CFG).
        guidance_scale: CFG scale w.
        stats: counters to update.
        clamp: x0 clamp of the eps -> v conversion.
        alpha_floor: alpha floor of the eps -> v conversion.

    Returns:
        v [B, C, T, H, W], float32.
    """
    use_cfg = uncond is not None and guidance_scale != 1.0
    v = torch.zeros(x_t.shape, dtype=torch.float32, device=x_t.device)
    for k in range(weights.shape[1]):
        rows = (weights[:, k] > 0).nonzero().flatten()
        if rows.numel() == 0:
            continue
        expert = experts.get(k)
        if expert is None:
            raise ValueError(f"weights select expert {k}, which is missing")
        x_k, t_k, c_k = x_t[rows], t[rows], take_tree(cond, rows)
        if use_cfg:
            out = expert.predict(
                torch.cat([x_k, x_k]), torch.cat([t_k, t_k]), cat_trees([c_k, take_tree(uncond, rows)])
            )
            out_c, out_u = out.float().chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = expert.predict(x_k, t_k, c_k).float()
        if expert.objective == "eps":
            out = eps_to_velocity(out, x_k.float(), t_k, clamp=clamp, alpha_floor=alpha_floor)
        v[rows] += _per_sample(weights[rows, k], out) * out
        if stats is not None:
            stats.expert_calls[k] = stats.expert_calls.get(k, 0) + 1
            stats.expert_rows[k] = stats.expert_rows.get(k, 0) + rows.numel() * (2 if use_cfg else 1)
    return v


@torch.no_grad()
def sample_ddm(
    experts: Mapping[int, ExpertHandle | None],
    router: Router | None,
    noise: torch.Tensor,
    cond: Any,
    uncond: Any = None,
    pooled: Any = None,
    strategy: str = "topk",
    top_k: int = 2,
    num_steps: int = 20,
    guidance_scale: float = 1.0,
    oracle_clusters: torch.Tensor | None = None,
    clamp: float = DEFAULT_X0_CLAMP,
    alpha_floor: float = DEFAULT_ALPHA_FLOOR,
    route_uniforms: torch.Tensor | None = None,
    shift: float = 1.0,
) -> SampleResult:
    """Integrate dx/dt = v(x, t) from t = 1 (``noise``) to t = 0 with Euler steps.

    Time stepping uses diffusers' ``FlowMatchEulerDiscreteScheduler`` with explicit sigmas 1, 1 - 1/N, ..., 1/N,
    which it maps through its ``shift`` (s t / (1 + (s - 1) t); shift 1 keeps the uniform grid): its sigmas are
    our t, and its step is x <- x + (t_next - t) v. (Its default grid ends at 1/num_train_timesteps instead of 0,
    hence the explicit sigmas.) The router sees (x_t, t, pooled) once per step,
    without CFG. Deterministic: no randomness beyond ``noise`` and ``route_uniforms``. Runs without autograd (a
    ``RouterModel`` or an expert network can be passed as is).

    Args:
        experts: expert per cluster id 0..K-1; None marks an expert that failed training.
        router: ``router(x_t, t, pooled) -> logits [B, K]``; needed by top1, topk and full.
        noise: starting samples at t = 1, [B, C, T, H, W].
        cond: conditional batch tree (e.g. (token embeddings [B, L, D], mask [B, L])).
        uncond: unconditional batch tree for CFG, or None.
        pooled: pooled text the router receives (any value the router accepts).
        strategy: top1 | topk | full | sample | oracle | expert:<id>, or a schedule of them (``lib.strategy``).
        top_k: experts kept by topk.
        num_steps: Euler steps.
        guidance_scale: CFG scale w, applied per expert.
        oracle_clusters: true cluster per sample [B], for oracle.
        clamp: x0 clamp of the eps -> v conversion.
        alpha_floor: alpha floor of the eps -> v conversion.
        route_uniforms: [B, num_steps] numbers in [0, 1), for the steps a schedule runs ``sample``: sample i's
            expert at step j is drawn with ``route_uniforms[i, j]``.
        shift: time-grid shift (> 1 puts more of the steps at high noise, where layout and motion are decided).

    Returns:
        SampleResult with x0, the per-step weights, the step times and the work counters.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    ids = sorted(experts)
    if ids != list(range(len(ids))):
        raise ValueError(f"experts must be keyed by cluster ids 0..K-1, got {ids}")
    for k, e in experts.items():
        if e is not None and e.cluster_id != k:
            raise ValueError(f"expert under key {k} says cluster_id {e.cluster_id}")
    if uncond is None and guidance_scale != 1.0:
        raise ValueError(f"guidance_scale {guidance_scale} needs an unconditional input (uncond is None)")
    schedule = parse_schedule(strategy)
    names = {parse_strategy(s)[0] for _, s in schedule}
    if names & set(ROUTED) and router is None:
        raise ValueError(f"strategy {strategy!r} needs a router")
    batch = noise.shape[0]
    if "sample" in names and (route_uniforms is None or route_uniforms.shape != (batch, num_steps)):
        raise ValueError(f"strategy {strategy!r} draws experts: route_uniforms must be [{batch}, {num_steps}]")
    alive = torch.tensor([experts[k] is not None for k in ids], dtype=torch.bool)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist(), device=noise.device)
    scheduler.set_begin_index(0)
    stats = SamplerStats()
    x = noise.float()
    all_weights, times = [], []
    for i, step_t in enumerate(scheduler.timesteps):
        t = scheduler.sigmas[i].expand(batch).to(noise.device)
        step_strategy = strategy_at(schedule, float(scheduler.sigmas[i]))
        logits = None
        if parse_strategy(step_strategy)[0] in ROUTED:
            logits = router(x, t, pooled)
            stats.router_calls += 1
        uniforms = None if route_uniforms is None else route_uniforms[:, i]
        w = routing_weights(logits, alive, step_strategy, top_k, oracle_clusters, batch, uniforms).to(noise.device)
        v = mix_velocity(experts, w, x, t, cond, uncond, guidance_scale, stats, clamp, alpha_floor)
        x = scheduler.step(v, step_t, x).prev_sample
        all_weights.append(w.cpu())
        times.append(float(scheduler.sigmas[i]))
    return SampleResult(x0=x, weights=torch.stack(all_weights), timesteps=torch.tensor(times), stats=stats)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape [B] to [B, 1, ..., 1] so it broadcasts against ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
