"""Wall-clock and cost of a DDM plan against a synchronous data-parallel monolith on the same pool, with failures.

The monolith is one job across GPUs of the pool: every rank takes an equal share of the batch, so the slowest GPU
type it uses sets the pace, and every step all-reduces the gradients around a ring that crosses nodes (the
inter-node link is the bottleneck once it spans more than one node). It may leave slow types out: the subset of
types (fastest first) with the smallest makespan is used, which is the best case for the baseline.

Failures: each GPU fails as a Poisson process (``mtbf_hours_per_gpu``). A failure stops the job that holds the GPU,
which restarts (``restart_minutes``) from its last checkpoint (every ``checkpoint_minutes`` of progress), so it
loses the time since. A DDM failure stops one expert; a monolith failure stops everything. Experts queued on the
same GPUs start when their predecessors have really finished. Trials are seeded: the same call gives the same
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lib.plan.placement import Plan, flops_per_second, ring_allreduce_seconds
from lib.plan.pool import Failures, Pool
from lib.plan.work import TrainingWork, micro_batch_on

GIB = 2**30


@dataclass(frozen=True)
class Outcome:
    """Makespan (seconds) and cost of one way to train, failure-free and over seeded failure trials."""

    gpus: int
    makespan_s: float  # failure-free
    cost: float  # failure-free
    mean_makespan_s: float
    p90_makespan_s: float
    mean_cost: float


@dataclass(frozen=True)
class MonolithRun:
    gpus: dict[str, int]  # GPU type -> count used
    step_seconds: float
    seconds: float
    cost: float


def with_failures(seconds: float, gpus: int, failures: Failures, rng: np.random.Generator) -> float:
    """Wall-clock of a job needing ``seconds`` of progress on ``gpus`` GPUs, failures drawn from ``rng``."""
    rate = gpus / (failures.mtbf_hours_per_gpu * 3600)
    interval = failures.checkpoint_minutes * 60
    progress = wall = 0.0
    while True:
        gap = rng.exponential(1 / rate)
        if progress + gap >= seconds:
            return wall + seconds - progress
        wall += gap + failures.restart_minutes * 60
        progress = math.floor((progress + gap) / interval) * interval  # back to the last checkpoint


def monolith_run(work: TrainingWork, pool: Pool) -> MonolithRun:
    """The fastest synchronous data-parallel run of ``work`` over a fastest-first subset of the pool's types."""
    ranked = sorted(pool.gpus, key=lambda g: -flops_per_second(work, g))
    best = None
    for n_types in range(1, len(ranked) + 1):
        used = [g for g in ranked[:n_types] if work.weight_state_bytes < 0.85 * g.memory_gib * GIB]
        if len(used) < n_types:
            break  # a type that cannot even hold the weights: slower subsets would need it too
        ranks = sum(g.count for g in used)
        per_gpu = math.ceil(work.batch_size / ranks)
        compute = 0.0
        for g in used:  # ranks that cannot fit their share accumulate gradients over micro-batches: same FLOPs
            fits = micro_batch_on(work, g.memory_gib * GIB, per_gpu, checkpointing=False) > 0
            factor = 1.0 if fits else 4 / 3
            compute = max(compute, per_gpu * work.flops_per_sample * factor / flops_per_second(work, g))
        multi_node = len(used) > 1 or used[0].count > used[0].gpus_per_node
        link = pool.network.inter_node_gbit_s if multi_node else used[0].intra_node_gbit_s
        comm = ring_allreduce_seconds(work.gradient_bytes, ranks, link)
        step = compute + max(0.0, comm - pool.network.allreduce_overlap * compute * 2 / 3)
        seconds = step * work.steps
        cost = sum(g.count * g.price_per_hour for g in used) * seconds / 3600
        if best is None or seconds < best.seconds:
            best = MonolithRun({g.name: g.count for g in used}, step, seconds, cost)
    if best is None:
        raise ValueError(f"{work.name}: the weight state fits on no GPU type of the pool")
    return best


def _summary(gpus: int, makespan: float, cost: float, trials: list[tuple[float, float]]) -> Outcome:
    spans = np.array([t[0] for t in trials])
    costs = np.array([t[1] for t in trials])
    return Outcome(gpus, makespan, cost, float(spans.mean()), float(np.quantile(spans, 0.9)), float(costs.mean()))


def simulate_plan(plan: Plan, pool: Pool, trials: int = 200, seed: int = 0) -> Outcome:
    """The DDM plan replayed with failures: each expert starts when its GPUs are really free, in planned order."""
    rng = np.random.default_rng(seed)
    order = sorted(plan.placements, key=lambda p: (p.start_s, p.name))
    results = []
    for _ in range(trials):
        free: dict[tuple[str, int], float] = {}
        span = cost = 0.0
        for p in order:
            start = max([free.get((p.gpu, i), 0.0) for i in p.gpu_ids])
            wall = with_failures(p.finish_s - p.start_s, p.gpus, pool.failures, rng)
            for i in p.gpu_ids:
                free[(p.gpu, i)] = start + wall
            span = max(span, start + wall)
            cost += p.gpus * pool.gpu(p.gpu).price_per_hour * wall / 3600
        results.append((span, cost))
    gpus = len({(p.gpu, i) for p in plan.placements for i in p.gpu_ids})
    return _summary(gpus, plan.makespan_s, plan.cost, results)


def simulate_monolith(run: MonolithRun, pool: Pool, trials: int = 200, seed: int = 0) -> Outcome:
    rng = np.random.default_rng(seed)
    gpus = sum(run.gpus.values())
    price = sum(n * pool.gpu(name).price_per_hour for name, n in run.gpus.items())
    results = []
    for _ in range(trials):
        wall = with_failures(run.seconds, gpus, pool.failures, rng)
        results.append((wall, price * wall / 3600))
    return _summary(gpus, run.seconds, run.cost, results)
