"""Place the K experts on a heterogeneous GPU pool so they finish together, as early and as cheaply as possible.

Timing model of one optimizer step of a model on ``g`` GPUs of one type (data parallel inside one node)::

    compute = ceil(batch / g) x FLOPs per sample [x 4/3 with activation checkpointing] / FLOP/s per GPU
    comm    = ring all-reduce of the fp32 gradients: 2 (g - 1) / g x bytes / link bandwidth
    step    = compute + max(0, comm - allreduce_overlap x backward time)       # backward = 2/3 of compute

FLOP/s per GPU is the pool's measured tokens/s for this model size (x FLOPs per token) or the datasheet peak x
the assumed MFU. An expert never spans nodes (the DDM's point: no cross-node all-reduce), so ``g`` is a power of
two up to ``gpus_per_node``. Activation checkpointing is chosen only when not even one sample fits without it.

Placement: experts are packed hardest first onto the GPUs that free up earliest (experts queue when the pool is
smaller than K). First each takes the allocation that finishes earliest: that schedule always exists and bounds the
makespan. Then for a target makespan T, from the shortest any allocation reaches upward (every such duration, then a
bisection up to the bound), each expert takes the allocation of least cost that still finishes by T; the first T that
packs is the plan. Least cost at a fixed T means the fewest / cheapest GPUs that meet it, so the experts end close
to T, together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from lib.plan.pool import GpuType, Network, Pool
from lib.plan.work import RECOMPUTE_FACTOR, TrainingWork, micro_batch_on

GIB = 2**30


class PlacementError(ValueError):
    """The pool cannot train a model at all (too little memory on every GPU type)."""


@dataclass(frozen=True)
class Allocation:
    """One way to run a model: ``gpus`` GPUs of type ``gpu``."""

    gpu: str
    gpus: int
    micro_batch: int
    activation_checkpointing: bool
    step_seconds: float
    seconds: float  # all steps, failure-free
    cost: float  # gpus x price x hours


@dataclass(frozen=True)
class Placement:
    """Where and when one expert trains, as the plan predicts it (failure-free)."""

    name: str
    gpu: str
    accelerator: str
    gpus: int
    gpu_ids: list[int]  # which GPUs of the type (0-based), so queued experts can be replayed in order
    micro_batch: int
    activation_checkpointing: bool
    start_s: float
    finish_s: float
    cost: float


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]

    @property
    def makespan_s(self) -> float:
        return max(p.finish_s for p in self.placements)

    @property
    def cost(self) -> float:
        return sum(p.cost for p in self.placements)

    def by_name(self, name: str) -> Placement:
        return next(p for p in self.placements if p.name == name)


def flops_per_second(work: TrainingWork, gpu: GpuType) -> float:
    """Training FLOP/s one GPU of this type sustains on this model: measured if the pool has it, else assumed."""
    measured = gpu.tokens_per_s.get(work.size_key)
    if measured is not None:
        return measured * work.flops_per_sample / work.tokens_per_sample
    return gpu.bf16_tflops * 1e12 * gpu.mfu


def ring_allreduce_seconds(num_bytes: float, ranks: int, gbit_s: float) -> float:
    """Bandwidth term of a ring all-reduce: each rank sends and receives 2 (n - 1) / n of the buffer."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * num_bytes / (gbit_s * 1e9 / 8)


def step_seconds(
    work: TrainingWork, gpu: GpuType, gpus: int, network: Network, checkpointing: bool, link_gbit_s: float
) -> float:
    """One optimizer step of ``work`` on ``gpus`` GPUs of ``gpu`` (the timing model in the module docstring)."""
    per_gpu = math.ceil(work.batch_size / gpus)
    compute = per_gpu * work.flops_per_sample * (RECOMPUTE_FACTOR if checkpointing else 1.0)
    compute /= flops_per_second(work, gpu)
    comm = ring_allreduce_seconds(work.gradient_bytes, gpus, link_gbit_s)
    return compute + max(0.0, comm - network.allreduce_overlap * compute * 2 / 3)


def allocations(work: TrainingWork, pool: Pool) -> list[Allocation]:
    """Every way the pool can run ``work`` on one node: GPU type x power-of-two GPU count."""
    out = []
    for gpu in pool.gpus:
        g = 1
        while g <= min(gpu.count, gpu.gpus_per_node, work.batch_size):
            per_gpu = math.ceil(work.batch_size / g)
            memory = gpu.memory_gib * GIB
            checkpointing = micro_batch_on(work, memory, per_gpu, checkpointing=False) == 0
            micro = micro_batch_on(work, memory, per_gpu, checkpointing)
            if micro > 0:
                step = step_seconds(work, gpu, g, pool.network, checkpointing, gpu.intra_node_gbit_s)
                seconds = step * work.steps
                out.append(Allocation(gpu.name, g, micro, checkpointing, step, seconds,
                                      g * gpu.price_per_hour * seconds / 3600))  # fmt: skip
            g *= 2
    return out


def _pack(
    works: list[TrainingWork], options: dict[str, list[Allocation]], pool: Pool, limit: float | None
) -> Plan | None:
    """Greedy packing, hardest expert first. ``limit`` None: each takes its earliest finish; else the least cost that
    finishes by ``limit`` seconds (None when some expert cannot make it)."""
    free = {gpu.name: [0.0] * gpu.count for gpu in pool.gpus}
    hardest_first = sorted(works, key=lambda w: -min(a.seconds for a in options[w.name]))
    placements = []
    for work in hardest_first:
        best, best_key = None, None
        for a in options[work.name]:
            ids = sorted(range(len(free[a.gpu])), key=lambda i: (free[a.gpu][i], i))[: a.gpus]
            start = max(free[a.gpu][i] for i in ids)
            finish = start + a.seconds
            if limit is not None and finish > limit * (1 + 1e-9):
                continue
            key = (finish, a.cost, a.gpus) if limit is None else (a.cost, a.gpus, finish)  # fewest GPUs: room
            if best_key is None or key < best_key:
                best, best_key = (a, sorted(ids), start, finish), key
        if best is None:
            return None
        a, ids, start, finish = best
        for i in ids:
            free[a.gpu][i] = finish
        gpu = pool.gpu(a.gpu)
        placements.append(Placement(work.name, a.gpu, gpu.accelerator, a.gpus, ids, a.micro_batch,
                                    a.activation_checkpointing, start, finish, a.cost))  # fmt: skip
    order = {w.name: i for i, w in enumerate(works)}
    return Plan(tuple(sorted(placements, key=lambda p: order[p.name])))


def plan_experts(works: list[TrainingWork], pool: Pool, bisections: int = 30) -> Plan:
    """The placement of the smallest makespan the packing reaches, least cost among those (see module docstring)."""
    options = {w.name: allocations(w, pool) for w in works}
    for work in works:
        if not options[work.name]:
            largest = max(g.memory_gib for g in pool.gpus)
            raise PlacementError(
                f"{work.name} fits on no GPU type of the pool: {work.weight_state_bytes / GIB:.1f} GiB of weight "
                f"state plus activations, largest GPU {largest:g} GiB"
            )
    earliest = _pack(works, options, pool, None)
    bound = earliest.makespan_s
    failed = 0.0
    for limit in sorted({a.seconds for opts in options.values() for a in opts if a.seconds <= bound}):
        plan = _pack(works, options, pool, limit)
        if plan is not None:
            return plan
        failed = limit
    best, low, high = earliest, failed, bound  # queued experts: the makespan is a sum of durations, bisect for it
    for _ in range(bisections):
        mid = (low + high) / 2
        plan = _pack(works, options, pool, mid)
        if plan is None:
            low = mid
        else:
            best, high = plan, mid
    return best


def plan_table(plan: Plan) -> pd.DataFrame:
    """The plan as a table for logs, Decks and reports: hours instead of seconds, GPU ids as text."""
    rows = []
    for p in plan.placements:
        row = asdict(p)
        row["gpu_ids"] = ",".join(map(str, p.gpu_ids))
        row["start_h"], row["finish_h"] = row.pop("start_s") / 3600, row.pop("finish_s") / 3600
        rows.append(row)
    return pd.DataFrame(rows)
