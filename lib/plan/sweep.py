"""DDM against the monolith over the number of experts K and the inter-node bandwidth, at fixed total compute.

The monolith is fixed (its steps and batch); K experts share its compute, each with the experts' batch and
``monolith FLOPs / K`` worth of steps (``monolith_scaling: steps`` read backwards). For every (K, bandwidth) the
experts are planned on the pool and both sides are simulated with the same failure model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
from matplotlib.figure import Figure

from lib.plan.placement import plan_experts
from lib.plan.pool import Pool
from lib.plan.simulate import monolith_run, simulate_monolith, simulate_plan
from lib.plan.work import TrainingWork


@dataclass(frozen=True)
class SweepPoint:
    k: int
    inter_node_gbit_s: float
    ddm_makespan_s: float  # mean over failure trials
    ddm_cost: float
    ddm_gpus: int
    monolith_makespan_s: float
    monolith_cost: float
    monolith_gpus: int


def experts_for(monolith: TrainingWork, expert_batch: int, k: int) -> list[TrainingWork]:
    """K experts that together train the monolith's FLOPs, each at ``expert_batch`` samples per step."""
    steps = max(1, round(monolith.steps * monolith.batch_size / (k * expert_batch)))
    return [replace(monolith, name=f"expert-{i:02d}", steps=steps, batch_size=expert_batch) for i in range(k)]


def sweep(
    monolith: TrainingWork,
    expert_batch: int,
    pool: Pool,
    ks: list[int],
    bandwidths_gbit_s: list[float],
    trials: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (K, inter-node bandwidth): mean makespan and cost of both sides (``SweepPoint`` fields)."""
    rows = []
    for bandwidth in bandwidths_gbit_s:
        net_pool = pool.with_inter_node(bandwidth)
        mono = simulate_monolith(monolith_run(monolith, net_pool), net_pool, trials, seed)
        for k in ks:
            plan = plan_experts(experts_for(monolith, expert_batch, k), net_pool)
            ddm = simulate_plan(plan, net_pool, trials, seed)
            rows.append(SweepPoint(k, bandwidth, ddm.mean_makespan_s, ddm.mean_cost, ddm.gpus,
                                   mono.mean_makespan_s, mono.mean_cost, mono.gpus).__dict__)  # fmt: skip
    return pd.DataFrame(rows)


def sweep_figure(table: pd.DataFrame, title: str) -> Figure:
    """Monolith / DDM makespan against K, one line per inter-node bandwidth (above 1: the DDM finishes first)."""
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for bandwidth, rows in table.groupby("inter_node_gbit_s"):
        ratio = rows["monolith_makespan_s"] / rows["ddm_makespan_s"]
        ax.plot(rows["k"], ratio, marker="o", label=f"{bandwidth:g} Gbit/s between nodes")
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["k"].unique()), labels=[str(k) for k in sorted(table["k"].unique())])
    ax.set_xlabel("experts K (total training compute fixed)")
    ax.set_ylabel("monolith makespan / DDM makespan")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
