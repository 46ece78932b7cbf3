"""Held-out flow-matching loss of a model as the sampler uses it: the DDM's router-mixed velocity, or one model's.

Why: FD∞ and attribute accuracy need a sampler, a feature network and a thousand videos per model; the regime map
needs many cells, so its cheap measure is the flow-matching loss on clips no model trained on. It must be the loss
of what samples, not of each expert on its own cluster: the mixture is scored with the DDM's own router and strategy
at every t, so a router that is wrong at high noise costs loss exactly where it costs samples (the t = 1 end, which
an old probe never scored). Per t, because the two sides can trade: a monolith may win at layout (high t) while
experts win at detail (low t).

Noise is fixed per (clip, t) from the seed, so two models scored with the same seed see the same x_t and their
per-t difference is paired. No CFG: the loss is that of the conditional velocity the model was trained to predict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from lib.encode.store import EncodedData
from lib.sample.ddm import mix_velocity, routing_weights
from lib.sample.pipeline import DDMPipeline
from lib.seeding import derive_seed
from lib.strategy import ROUTED, parse_schedule, parse_strategy, strategy_at
from lib.train.trainer import flow_matching_batch

# dense where the router decides (t -> 1, where only the caption tells the cluster) and where detail is drawn
T_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def clip_noise(clip_ids: Sequence[str], shape: Sequence[int], t_index: int, seed: int) -> torch.Tensor:
    """eps [N, *shape] for the t_index-th grid point, one generator per clip: a clip's noise does not depend on which
    clips share its batch or its set."""
    seeds = [derive_seed(seed, "heldout-loss", c, t_index) for c in clip_ids]
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def heldout_loss(
    pipe: DDMPipeline,
    name: str,
    data: EncodedData,
    strategies: Sequence[str],
    seed: int,
    clusters: Sequence[int] | None = None,
    t_grid: Sequence[float] = T_GRID,
    top_k: int = 2,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Mean flow-matching MSE per (strategy, t) of ``pipe`` on the clips of ``data``.

    Args:
        pipe: a DDM folder or a single model (K = 1, scored as ``expert:0`` whatever ``strategies`` says).
        name: the method's name in the rows: ``<name>:<strategy>`` for a DDM (``ddm:topk``), ``<name>`` alone for a
            single model (``monolith``), as the EvalReport names methods.
        data: encoded held-out clips (latents, caption tokens and mask, pooled caption for the router).
        strategies: routing strategies to score (topk, top1, full, oracle, expert:<id>, or a schedule of them; not
            ``sample``, whose random draws would make the loss a noisy estimate of the mixture's).
        seed: noise seed (same seed -> same x_t for every model: paired comparisons).
        clusters: true cluster per clip, needed by ``oracle`` and kept for the per-cluster rows.
        t_grid: times in (0, 1] to score at.
        top_k: experts kept by ``topk``.
        batch_size: clips per forward pass (does not change any number).

    Returns:
        ``HeldoutLoss`` rows (method, t, cluster, loss, clips): one per strategy, t and cluster (-1: all clips).
    """
    n = len(data.clip_ids)
    if n == 0:
        raise ValueError("heldout_loss: no clips to score")
    if any(not 0.0 < t <= 1.0 for t in t_grid):
        raise ValueError(f"heldout_loss: every t must lie in (0, 1], got {list(t_grid)}")
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"heldout_loss: {len(clusters)} cluster ids for {n} clips")
    single = pipe.num_experts == 1 and pipe.router is None
    names = ["expert:0"] if single else list(dict.fromkeys(strategies))
    schedules = {s: parse_schedule(s) for s in names}
    for s, schedule in schedules.items():
        used = {parse_strategy(step)[0] for _, step in schedule}
        if "sample" in used:
            raise ValueError(f"heldout_loss: strategy {s!r} draws experts at random; score topk, top1, full or oracle")
        if "oracle" in used and clusters is None:
            raise ValueError("heldout_loss: strategy 'oracle' needs the true cluster of every clip")
        if used & set(ROUTED) and pipe.router is None:
            raise ValueError(f"heldout_loss: strategy {s!r} needs a router; {pipe.name} has none")
    device = pipe.device
    handles = {k: (pipe.handle(k) if m is not None else None) for k, m in pipe.experts.items()}
    alive = torch.tensor([handles[k] is not None for k in sorted(handles)], dtype=torch.bool)
    true = None if clusters is None else torch.as_tensor(list(clusters), dtype=torch.long)
    per_clip = {s: np.zeros((len(t_grid), n)) for s in names}
    for ti, t_value in enumerate(t_grid):
        eps = clip_noise(data.clip_ids, data.latents.shape[1:], ti, seed)
        for lo in range(0, n, batch_size):
            sl = slice(lo, lo + batch_size)
            x0 = data.latents[sl].to(device)
            t = torch.full((len(x0),), float(t_value), device=device)
            x_t, target = flow_matching_batch(x0, t, eps[sl].to(device))
            cond = (data.tokens[sl].to(device), data.mask[sl].to(device))
            logits = None if pipe.router is None else pipe.router(x_t, t, data.pooled[sl].to(device))
            for s in names:
                step = strategy_at(schedules[s], float(t_value))  # a schedule routes as the sampler does at this t
                oracle = None if true is None else true[sl]
                w = routing_weights(logits if parse_strategy(step)[0] in ROUTED else None, alive, step, top_k,
                                    oracle, len(x0)).to(device)  # fmt: skip
                v = mix_velocity(handles, w, x_t, t, cond, None, 1.0)
                per_clip[s][ti, sl] = (v - target).pow(2).flatten(1).mean(1).cpu().numpy()
    groups = [(-1, np.arange(n))]
    if clusters is not None:
        labels = np.asarray(clusters)
        groups += [(int(c), np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))]
    rows = [
        {"method": name if single else f"{name}:{s}", "t": float(t_value), "cluster": c,
         "loss": float(per_clip[s][ti, idx].mean()), "clips": len(idx)}
        for s in names
        for ti, t_value in enumerate(t_grid)
        for c, idx in groups
    ]  # fmt: skip
    return pd.DataFrame(rows)


def loss_by_t(table: pd.DataFrame, method: str) -> dict[float, float]:
    """{t: loss over all clips} of one method, for tables and JSON lines."""
    rows = table[(table["method"] == method) & (table["cluster"] == -1)]
    if rows.empty:
        raise ValueError(f"no held-out loss rows for method {method!r}; have {sorted(set(table['method']))}")
    return {float(t): float(v) for t, v in zip(rows["t"], rows["loss"], strict=True)}


def loss_line(table: pd.DataFrame, first: str, second: str = "monolith") -> str:
    """One line a person reads: each t's loss of two methods and the mean over t (lower is better)."""
    a, b = loss_by_t(table, first), loss_by_t(table, second)
    pairs = "  ".join(f"t={t:g} {a[t]:.4f}/{b[t]:.4f}" for t in sorted(a))
    means = f"{np.mean(list(a.values())):.4f} / {np.mean(list(b.values())):.4f}"
    return f"held-out flow-matching loss {first} / {second} (prompt clips, same noise): mean {means};  {pairs}"
